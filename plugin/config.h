// The plugin's configuration keys and their parsing.
#pragma once

#include <cstdint>
#include <string>

#include "create.h"
#include "image.h"

namespace qed_plugin {

struct Config {
  std::string file;                    // file=, required
  uint64_t cache_bytes = 64ull << 20;  // cache-size=
  bool create = false;                 // create=true
  bool overwrite = false;              // overwrite=true (with create)
  uint64_t size = 0;                   // size=: new image size, or grow to it
  qed::CreateOptions create_options;   // cluster-size=, table-size=, backing=, backing-format=
  bool allow_backing = true;           // allow-backing=false
  qed::CheckPolicy check = qed::CheckPolicy::kAuto;  // check=
};

// The one configuration of this nbdkit process (nbdkit loads a plugin once).
Config &config();

int config_key(const char *key, const char *value);
int config_complete();

extern const char *const kConfigHelp;

}  // namespace qed_plugin
