// Values that keys of both front ends take, parsed the same way: nbdkit's
// parsers, with our errors (naming the key) on top.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace qed_nbdkit {

// A size (nbdkit_parse_size: "64M", "1G"...) of zero or more bytes. Returns
// 0, or -1 after nbdkit_error naming `key`.
int parse_size(const char *key, const char *value, uint64_t &out);

// A boolean (nbdkit_parse_bool: true, on, 1...). Returns 0, or -1 after
// nbdkit_parse_bool's error.
int parse_bool(const char *value, bool &out);

// One value of a key that takes a name from a list (check=auto|repair|...).
template <typename T>
struct Choice {
  const char *name;
  T value;
};

// nbdkit_error "KEY: 'VALUE' is not A, B or C[ NOTE]" for the names of
// `choices`; returns -1.
int bad_choice(const char *key, const char *value, const char *const *names, size_t n,
               const char *note);

// The value of `choices` named `value`; otherwise bad_choice's error.
template <typename T, size_t N>
int parse_choice(const char *key, const char *value, const Choice<T> (&choices)[N], T &out,
                 const char *note = nullptr) {
  const char *names[N];
  for (size_t i = 0; i < N; i++) {
    if (std::strcmp(value, choices[i].name) == 0) {
      out = choices[i].value;
      return 0;
    }
    names[i] = choices[i].name;
  }
  return bad_choice(key, value, names, N, note);
}

}  // namespace qed_nbdkit
