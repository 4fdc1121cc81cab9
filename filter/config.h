// The filter's own keys, all prefixed "qed-" (nbdkit passes every key to every
// filter first; those that are not ours go on to the plugin). One table
// (config.cpp) drives .config and .config_help.
#pragma once

#include <cstdint>
#include <optional>

#include "lib/image.h"

struct nbdkit_backend;

namespace qed_filter {

struct Config {
  uint64_t cache_bytes = 64ull << 20;                // qed-cache-size=
  qed::CheckPolicy check = qed::CheckPolicy::kOff;  // qed-check=off|report
  // qed-backing= (absolute) and qed-backing-format=: the base of an image
  // that has a backing file; none means such images are refused.
  std::optional<qed::BackingOverride> backing;
  bool allow_local_exports = false;  // qed-allow-local-exports=true
};

// The one configuration of this nbdkit process.
Config &config();

// .config: parses a key of ours, or returns 0 with *ours false for the caller
// to pass the key on. .config_complete: checks the combination.
int config_key(const char *key, const char *value, bool *ours);
int config_complete();

// .config_help: one aligned line per key.
const char *config_help();

}  // namespace qed_filter
