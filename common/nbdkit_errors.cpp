// nbdkit_error and nbdkit_set_error come from nbdkit-common.h, which only the
// plugin or the filter header may include; they are the same functions in both.
#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "common/nbdkit_errors.h"
#include "common/printable.h"

#include <string_view>

namespace qed_nbdkit {

namespace {

// Messages quote names from images and servers: printed through printable(),
// which allocates. Without memory for that, a fixed line still says that
// something failed (and the errno still goes to the client).
void log_error(const char *prefix, std::string_view message) noexcept {
  try {
    nbdkit_error("%s%s", prefix, printable(message).c_str());
  } catch (...) {
    nbdkit_error("%s(no memory to print the message)", prefix);
  }
}

}  // namespace

int report(const qed::Status &status) {
  if (status.is_ok())
    return 0;
  log_error("", status.message());
  nbdkit_set_error(status.errno_value());
  return -1;
}

int report(const qed::Status &status, int *err) {
  if (status.is_ok())
    return 0;
  log_error("", status.message());
  *err = status.errno_value();
  return -1;
}

int report_exception(const char *what, int err, int *out) noexcept {
  log_error("qed: internal error: ", what);
  if (out)
    *out = err;
  else
    nbdkit_set_error(err);
  return -1;
}

}  // namespace qed_nbdkit
