// Where the engine opens the backing files that images name: LevelDB's Env,
// for backing files only. The engine reads a name from an image header,
// decides what kind of name it is and hands it to a store; the store turns it
// into a read-only File. Local names go to the local store (POSIX unless the
// caller supplies another); URIs go to the network store, which the program
// using the engine supplies (the plugin gives one built on libnbd) or leaves
// out, and then every URI is refused.
//
// The rule that tells a URI from a local name is QEMU's (path_has_protocol):
// a name is a URI when it contains a ':' and no '/' comes before the first
// ':'. So "nbd+unix:///?socket=/run/b.sock", "nbd://host/x" and "http:x" are
// URIs, and "base.raw", "/images/a:b.raw", "dir/nbd:x" and "./nbd:x" are
// local names. A URI is never looked up in the file system, whatever its
// scheme (an unknown scheme is the network store's to refuse), and a local
// name is never given to the network store.
#pragma once

#include <memory>
#include <string>
#include <utility>

#include "lib/file.h"
#include "lib/file_lock.h"
#include "lib/status.h"

namespace qed {

// What the engine knows of where in a chain a backing file is opened.
struct BackingPlace {
  // The name comes from an image that is itself on the network (or below
  // one): a remote party's words, not the user's. A store should refuse
  // names that reach local resources then (NbdStore: exports on this host).
  bool below_network = false;
};

// Thread safety: implementations are called from the threads that open
// images, possibly several at once; the Files they return follow file.h.
class BackingStore {
public:
  virtual ~BackingStore() = default;
  BackingStore() = default;
  BackingStore(const BackingStore &) = delete;
  BackingStore &operator=(const BackingStore &) = delete;

  // What `name` reaches, so that the engine can refuse loops before opening
  // anything: two names with the same identity must reach the same data.
  // Cheap: it must not connect anywhere.
  virtual Result<std::string> identity(const std::string &name) = 0;
  // Opens `name` for reading. Write-side calls on the File may fail (a
  // backing file is never written). Fails with a message naming `name`.
  virtual Result<std::unique_ptr<File>> open(const std::string &name,
                                             const BackingPlace &place) = 0;
};

// Local files with open_posix_file; the identity is the device and inode, so
// two paths to one file (a symlink, "a/../b") are the same file. Each file is
// held with QEMU's reader locks (file_lock.h) while open, so that nobody
// writes a base under a live overlay.
class PosixBackingStore final : public BackingStore {
public:
  explicit PosixBackingStore(LockSettings locking = {}) : locking_(std::move(locking)) {}
  Result<std::string> identity(const std::string &path) override;
  Result<std::unique_ptr<File>> open(const std::string &path, const BackingPlace &place) override;

private:
  const LockSettings locking_;
};

// Refuses every name, with `reason` (the caller's words: the plugin says
// which key would allow the name).
class RefusingBackingStore final : public BackingStore {
public:
  explicit RefusingBackingStore(std::string reason) : reason_(std::move(reason)) {}
  Result<std::string> identity(const std::string &name) override;
  Result<std::unique_ptr<File>> open(const std::string &name, const BackingPlace &place) override;

private:
  const std::string reason_;
};

// The two stores the engine opens backing files through.
struct BackingStores {
  std::shared_ptr<BackingStore> local = std::make_shared<PosixBackingStore>();
  // Null: URIs are refused ("network backing files are not enabled").
  std::shared_ptr<BackingStore> network;
};

// Whether a backing file name is a URI, by the rule above.
bool is_uri(const std::string &name);

// The identity PosixBackingStore gives `path`.
Result<std::string> posix_identity(const std::string &path);

}  // namespace qed
