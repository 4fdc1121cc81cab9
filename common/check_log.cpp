#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "common/check_log.h"
#include "common/printable.h"

#include <cstdarg>
#include <cstdio>

namespace qed_nbdkit {

void log_info(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::fprintf(stderr, "nbdkit: qed: ");
  std::vfprintf(stderr, fmt, ap);
  std::fprintf(stderr, "\n");
  va_end(ap);
}

void log_check(const qed::Image &image) {
  const auto &report = image.check_report();
  if (!report)
    return;
  const std::string path = printable(image.path());
  for (const std::string &line : report->problems)
    nbdkit_debug("%s: check: %s", path.c_str(), printable(line).c_str());
  if (report->problems.empty())
    nbdkit_debug("%s: check: clean: %s", path.c_str(), report->summary().c_str());
  else if (report->consistent())
    log_info("%s: check: %s", path.c_str(), report->summary().c_str());
  else
    nbdkit_error("%s: check found problems: %s", path.c_str(), report->summary().c_str());
}

}  // namespace qed_nbdkit
