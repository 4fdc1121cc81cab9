// The plugin's configuration keys: one table (config.cpp) drives .config,
// --help and the key list that --dump-plugin prints, so they cannot disagree.
#pragma once

#include <cstdint>
#include <string>

#include "lib/create.h"
#include "lib/file_lock.h"
#include "lib/image.h"

namespace qed_plugin {

struct Config {
  std::string file;                    // file=, required; absolute after config_complete
  uint64_t cache_bytes = 64ull << 20;  // cache-size=
  bool create = false;                 // create=true
  bool overwrite = false;              // overwrite=true (with create)
  uint64_t size = 0;                   // size=: new image size, or grow to it
  qed::CreateOptions create_options;   // cluster-size=, table-size=, backing=, backing-format=
  bool allow_backing = true;           // allow-backing=false
  bool allow_network_backing = false;  // allow-backing=network
  unsigned backing_connections = 8;    // backing-connections=
  bool allow_local_exports = false;    // allow-local-exports=true
  qed::CheckPolicy check = qed::CheckPolicy::kAuto;  // check=
  qed::Locking locking = qed::Locking::kAuto;        // locking=
  bool copy_on_read = false;           // copy-on-read=true
  bool stream = false;                 // stream=true
  uint64_t stream_rate = 0;            // stream-rate=: bytes per second, 0 unlimited
  // nbdkit runs with -r (nbdkit_args.h): the image is locked as a reader;
  // otherwise as a writer from start-up, before any client asks to write.
  bool read_only = false;
};

// The one configuration of this nbdkit process (nbdkit loads a plugin once).
Config &config();

// .config: parses one key=value. .config_complete: checks the combination and
// makes file= absolute (only these two may call nbdkit_realpath).
int config_key(const char *key, const char *value);
int config_complete();

// How the engine locks the image and its local backing files: locking=, the
// key named in refusals, and log lines where auto finds no lock support.
qed::LockSettings lock_settings();

// .config_help: one aligned line per key.
const char *config_help();
// Every key .config accepts, comma-separated (printed by --dump-plugin).
std::string config_key_list();

}  // namespace qed_plugin
