// The --help text of a front end's key table: one aligned line per key,
// "key=VALUE  what it does". Both front ends keep their keys in a table of
// structs with `name`, `value` (how the value is shown) and `help`.
#pragma once

#include <algorithm>
#include <cstring>
#include <string>

namespace qed_nbdkit {

template <typename Key, size_t N>
std::string aligned_key_help(const Key (&keys)[N]) {
  size_t width = 0;
  for (const Key &k : keys)
    width = std::max(width, std::strlen(k.name) + 1 + std::strlen(k.value));
  std::string out;
  for (const Key &k : keys) {
    std::string left = std::string(k.name).append("=").append(k.value);
    left.resize(width + 2, ' ');
    if (!out.empty())
      out += '\n';
    out.append(left).append(k.help);
  }
  return out;
}

}  // namespace qed_nbdkit
