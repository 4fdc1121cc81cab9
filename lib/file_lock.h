// Image locking with QEMU's protocol, so that QEMU's tools (qemu-img, qemu-io,
// qemu-nbd, a VM) and the engine see each other on the same file and never
// both write it.
//
// QEMU's file driver (block/file-posix.c) gives each block permission a bit:
// consistent read 0x1, write 0x2, write-unchanged 0x4, resize 0x8. An opener
// holding permission bit i takes a shared lock on byte 100+i of the image; an
// opener that does not let others hold bit i takes a shared lock on byte
// 200+i. Every lock is a shared (read) open file description lock, so taking
// one never fails on another's; conflicts are found by testing: an opener
// that wants bit i checks that nobody else locks byte 200+i, and one that
// refuses bit i to others checks that nobody else locks byte 100+i. QEMU
// takes its bytes first and tests afterwards, and so do we: of two openers
// racing, at least one sees the other.
//
// What we take (QEMU's QED driver takes the same on its image file):
//   reader  holds consistent read; refuses write and resize to others. Readers
//           share; a writer is refused while a reader holds the file, and a
//           reader while a writer does.
//   writer  holds consistent read, write and resize; refuses write and resize.
// `qemu-img info -U` (force-share) holds consistent read and refuses nothing,
// so it works beside either. Backing files are held as readers, which QEMU
// does not do: a write into a base under a live overlay changes what the
// overlay shows.
//
// Open file description locks belong to the open file, not the process: two
// opens of one file in this process conflict like two processes, and the
// locks go away when the file is closed, whatever way the process ends.
#pragma once

#include <functional>
#include <string>

#include "lib/status.h"

namespace qed {

// locking=: QEMU's file driver option of the same name.
enum class Locking {
  kOff,   // take no locks, test none
  kAuto,  // lock where the file system supports OFD locks; elsewhere go on
          // without, telling on_unlocked why
  kOn,    // lock, or fail to open where the file system cannot
};

enum class LockAccess { kRead, kWrite };

struct LockSettings {
  Locking policy = Locking::kAuto;
  // How the user turns locking off, named in every refusal ("locking=off");
  // empty: not named.
  std::string off_switch;
  // With kAuto, where the file system does not support OFD locks: called with
  // a sentence naming the file and the reason, and the file is used unlocked.
  // The engine never logs; the front end says it. May be empty.
  std::function<void(const std::string &)> on_unlocked;
};

// The lock bytes one open file description holds; released on destruction.
// The descriptor must stay open for as long as the FileLock holds anything
// (PosixFile declares its lock after its descriptor). Move-only; not shared
// between threads (it only changes at construction and destruction).
class FileLock {
public:
  FileLock() = default;
  FileLock(FileLock &&other) noexcept;
  FileLock &operator=(FileLock &&other) noexcept;
  FileLock(const FileLock &) = delete;
  FileLock &operator=(const FileLock &) = delete;
  ~FileLock() { release(); }

  // Takes the bytes `access` needs on `fd` (the open file `path`) and tests
  // for openers that conflict, as the header comment says. Fails with EBUSY
  // when another opener conflicts, with a message that names the file, the
  // lock, how to find the other process and settings.off_switch.
  static Result<FileLock> take(int fd, const std::string &path, LockAccess access,
                               const LockSettings &settings);

  // Whether any byte is held (false with kOff, and with kAuto unsupported).
  bool held() const { return fd_ >= 0; }
  void release();

private:
  explicit FileLock(int fd) : fd_(fd) {}

  int fd_ = -1;  // not owned
};

}  // namespace qed
