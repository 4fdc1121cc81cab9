// A front end's configuration keys as one table of Key<Config> (plugin/config.cpp,
// filter/config.cpp): .config looks keys up in it, .config_help prints it, and
// the plugin's --dump-plugin lists its names, so none of them can disagree.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <string>

namespace qed_nbdkit {

template <typename Config>
struct Key {
  const char *name;
  const char *value;  // how --help shows the value
  const char *help;
  // Parses `value` into the configuration; nbdkit_error and -1 if it is bad.
  int (*parse)(Config &c, const char *key, const char *value);
};

// The entry of `keys` called `name`, or nullptr.
template <typename Config, size_t N>
const Key<Config> *find_key(const Key<Config> (&keys)[N], const char *name) {
  for (const Key<Config> &k : keys)
    if (std::strcmp(name, k.name) == 0)
      return &k;
  return nullptr;
}

// The --help text: one aligned line per key, "key=VALUE  what it does".
template <typename Config, size_t N>
std::string aligned_key_help(const Key<Config> (&keys)[N]) {
  size_t width = 0;
  for (const Key<Config> &k : keys)
    width = std::max(width, std::strlen(k.name) + 1 + std::strlen(k.value));
  std::string out;
  for (const Key<Config> &k : keys) {
    std::string left = std::string(k.name).append("=").append(k.value);
    left.resize(width + 2, ' ');
    if (!out.empty())
      out += '\n';
    out.append(left).append(k.help);
  }
  return out;
}

// Every key's name, comma-separated.
template <typename Config, size_t N>
std::string key_list(const Key<Config> (&keys)[N]) {
  std::string out;
  for (const Key<Config> &k : keys) {
    if (!out.empty())
      out += ',';
    out += k.name;
  }
  return out;
}

}  // namespace qed_nbdkit
