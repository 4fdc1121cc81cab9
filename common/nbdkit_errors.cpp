// nbdkit_error and nbdkit_set_error come from nbdkit-common.h, which only the
// plugin or the filter header may include; they are the same functions in both.
#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "nbdkit_errors.h"

namespace qed_nbdkit {

int report(const qed::Status &status) {
  if (status.is_ok())
    return 0;
  nbdkit_error("%s", status.message().c_str());
  nbdkit_set_error(status.errno_value());
  return -1;
}

int report(const qed::Status &status, int *err) {
  if (status.is_ok())
    return 0;
  nbdkit_error("%s", status.message().c_str());
  *err = status.errno_value();
  return -1;
}

int report_exception(const char *what, int err, int *out) noexcept {
  nbdkit_error("qed: internal error: %s", what);
  if (out)
    *out = err;
  else
    nbdkit_set_error(err);
  return -1;
}

}  // namespace qed_nbdkit
