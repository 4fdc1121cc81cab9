#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "errors.h"

namespace qed_plugin {

int report(const qed::Status &status) {
  if (status.is_ok())
    return 0;
  nbdkit_error("%s", status.message().c_str());
  nbdkit_set_error(status.errno_value());
  return -1;
}

int report_exception(const char *what, int err) noexcept {
  nbdkit_error("qed: internal error: %s", what);
  nbdkit_set_error(err);
  return -1;
}

}  // namespace qed_plugin
