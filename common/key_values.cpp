#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "common/key_values.h"

#include <string>

namespace qed_nbdkit {

int parse_size(const char *key, const char *value, uint64_t &out) {
  const int64_t r = nbdkit_parse_size(value);
  if (r == -1)
    return -1;  // nbdkit_parse_size reported the error
  if (r < 0) {
    nbdkit_error("%s: size must not be negative", key);
    return -1;
  }
  out = uint64_t(r);
  return 0;
}

int parse_bool(const char *value, bool &out) {
  const int r = nbdkit_parse_bool(value);
  if (r == -1)
    return -1;  // nbdkit_parse_bool reported the error
  out = r;
  return 0;
}

int bad_choice(const char *key, const char *value, const char *const *names, size_t n,
               const char *note) {
  std::string list;
  for (size_t i = 0; i < n; i++) {
    if (i > 0)
      list += i + 1 == n ? " or " : ", ";
    list += names[i];
  }
  nbdkit_error("%s: '%s' is not %s%s%s", key, value, list.c_str(), note ? " " : "",
               note ? note : "");
  return -1;
}

}  // namespace qed_nbdkit
