#include "lib/file_lock.h"

#include <fcntl.h>

#include <cerrno>
#include <initializer_list>
#include <string>
#include <utility>

namespace qed {

namespace {

// QEMU's lock byte offsets and permission bits (block/file-posix.c,
// include/block/block-common.h). Byte 104/204 belonged to a permission QEMU
// 6.1 and older still lock; nobody tests it, and neither do we.
constexpr off_t kPermBase = 100;
constexpr off_t kSharedBase = 200;
constexpr unsigned kPermConsistentRead = 0x1;
constexpr unsigned kPermWrite = 0x2;
constexpr unsigned kPermResize = 0x8;
constexpr unsigned kPermBits = 4;
// QEMU's names for the bits, as its messages print them.
constexpr const char *kPermNames[kPermBits] = {"consistent read", "write", "write unchanged",
                                               "resize"};

// What each access holds and what it refuses to others (see file_lock.h).
unsigned held_perms(LockAccess access) {
  return access == LockAccess::kWrite ? kPermConsistentRead | kPermWrite | kPermResize
                                      : kPermConsistentRead;
}
constexpr unsigned kUnshared = kPermWrite | kPermResize;

// Errors that say the file (or the kernel) has no OFD locks, not that
// someone holds one: EINVAL before Linux 3.15, ENOLCK on NFS without a lock
// manager, the others from file systems that refuse locks.
bool is_unsupported(int err) {
  return err == EINVAL || err == ENOLCK || err == EOPNOTSUPP || err == ENOSYS;
}

// fcntl(CMD) on one byte with a lock of TYPE, retried on EINTR; 0 or errno.
int ofd_byte(int fd, int cmd, short type, off_t offset, struct flock &fl) {
  fl = {};
  fl.l_type = type;
  fl.l_whence = SEEK_SET;
  fl.l_start = offset;
  fl.l_len = 1;
  int r;
  do {
    r = ::fcntl(fd, cmd, &fl);
  } while (r < 0 && errno == EINTR);
  return r < 0 ? errno : 0;
}

// A shared lock on one byte; fails only when someone holds it exclusively
// (not QEMU, which never does) or the file system cannot lock.
int lock_byte(int fd, off_t offset) {
  struct flock fl;
  return ofd_byte(fd, F_OFD_SETLK, F_RDLCK, offset, fl);
}

// Whether another open file description locks the byte: QEMU's test, an
// exclusive lock that would conflict with any other holder.
int test_byte(int fd, off_t offset, bool &locked) {
  struct flock fl;
  if (int err = ofd_byte(fd, F_OFD_GETLK, F_WRLCK, offset, fl))
    return err;
  locked = fl.l_type != F_UNLCK;
  return 0;
}

std::string off_hint(const LockSettings &s, const char *what) {
  return s.off_switch.empty() ? std::string() : "; " + s.off_switch + " " + what;
}

// `failed` says what we could not get, in QEMU's words ("failed to get
// \"write\" lock"), so that its many answers on the web apply.
Status in_use(const std::string &path, const std::string &failed, const LockSettings &s) {
  return Status::io_error(
      path + ": " + failed +
          ": another process is using the image (qemu-img, qemu-io, qemu-nbd, a virtual "
          "machine or another nbdkit); \"fuser -v " + path + "\" shows which" +
          off_hint(s, "opens it anyway, at the risk of two writers corrupting it"),
      EBUSY);
}

}  // namespace

FileLock::FileLock(FileLock &&other) noexcept : fd_(std::exchange(other.fd_, -1)) {}

FileLock &FileLock::operator=(FileLock &&other) noexcept {
  if (this != &other) {
    release();
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

void FileLock::release() {
  if (fd_ < 0)
    return;
  // One range over both sets of bytes: unlocking a byte not held is a no-op.
  struct flock fl = {};
  fl.l_type = F_UNLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = kPermBase;
  fl.l_len = kSharedBase + kPermBits - kPermBase;
  // Failure leaves the bytes until the descriptor closes, which follows.
  (void)::fcntl(fd_, F_OFD_SETLK, &fl);
  fd_ = -1;
}

Result<FileLock> FileLock::take(int fd, const std::string &path, LockAccess access,
                                const LockSettings &s) {
  if (s.policy == Locking::kOff)
    return FileLock();
  const unsigned perms = held_perms(access);
  // Whatever is taken goes again when `lock` goes out of scope on failure.
  FileLock lock(fd);
  auto fcntl_failed = [&](int err, const char *call) -> Result<FileLock> {
    if (!is_unsupported(err))
      return Status::io_error(path + ": " + call + ": " + errno_text(err), err);
    const std::string why = path + ": the file system does not support OFD locks (" + call +
                            ": " + errno_text(err) + ")";
    if (s.policy == Locking::kOn)
      return Status::not_supported(why + ", so the image cannot be locked" +
                                   off_hint(s, "opens it without locks"));
    if (s.on_unlocked)
      s.on_unlocked(why + ": using it without locks; nothing keeps other programs from "
                          "writing it at the same time");
    return FileLock();
  };
  for (off_t base : {kPermBase, kSharedBase}) {
    const unsigned bits = base == kPermBase ? perms : kUnshared;
    for (unsigned i = 0; i < kPermBits; i++) {
      if (!(bits & (1u << i)))
        continue;
      const int err = lock_byte(fd, base + off_t(i));
      if (err == EAGAIN || err == EACCES)
        return in_use(path, "failed to lock byte " + std::to_string(base + off_t(i)), s);
      if (err)
        return fcntl_failed(err, "locking");
    }
  }
  for (unsigned i = 0; i < kPermBits; i++) {
    const unsigned bit = 1u << i;
    bool locked = false;
    // We need the permission: nobody may refuse it.
    if (perms & bit) {
      if (int err = test_byte(fd, kSharedBase + off_t(i), locked))
        return fcntl_failed(err, "testing a lock");
      if (locked)
        return in_use(path, std::string("failed to get \"") + kPermNames[i] + "\" lock", s);
    }
    // We refuse the permission: nobody may hold it.
    if (kUnshared & bit) {
      if (int err = test_byte(fd, kPermBase + off_t(i), locked))
        return fcntl_failed(err, "testing a lock");
      if (locked)
        return in_use(path, std::string("failed to get shared \"") + kPermNames[i] + "\" lock",
                      s);
    }
  }
  return lock;
}

}  // namespace qed
