// Creating a new, empty QED image, laid out as `qemu-img create -f qed` lays
// it out: one header cluster, the backing file name right after the header,
// the L1 table in the next cluster.
#pragma once

#include <string>

#include "lib/backing_store.h"
#include "lib/file_lock.h"
#include "lib/status.h"

namespace qed {

struct CreateOptions {
  uint64_t size = 0;  // bytes; rounded up to a multiple of 512
  uint32_t cluster_size = 65536;
  uint32_t table_size = 4;
  std::string backing_file;    // as stored in the header; empty for none
  std::string backing_format;  // "raw", "qed", or empty to probe the file
  bool overwrite = false;      // replace an existing file
  BackingStores backing_stores;  // opens backing_file to learn its format and size
  // QEMU's image locks (file_lock.h): the new file is locked as a writer from
  // its creation, and a file to overwrite must be free before it is removed.
  LockSettings locking;
};

// Fails, leaving nothing behind, if the options are invalid, the file exists
// and overwrite is false, the file to overwrite is in use (locked), or the
// backing file cannot be opened.
Status create_image(const std::string &path, const CreateOptions &options);

}  // namespace qed
