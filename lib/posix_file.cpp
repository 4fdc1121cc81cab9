#include "lib/posix_file.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstring>

namespace qed {

namespace {

bool is_unsupported(int err) { return err == EOPNOTSUPP || err == ENOSYS || err == ENOTTY; }

// A block device's size comes from lseek, a file's from fstat.
Result<uint64_t> size_of(const std::string &path, int fd) {
  struct stat st;
  if (::fstat(fd, &st) < 0)
    return Status::io_error(path + ": fstat: " + errno_text(errno), errno);
  if (S_ISBLK(st.st_mode)) {
    off_t end = ::lseek(fd, 0, SEEK_END);
    if (end < 0)
      return Status::io_error(path + ": lseek: " + errno_text(errno), errno);
    return uint64_t(end);
  }
  return uint64_t(st.st_size);
}

}  // namespace

Status PosixFile::error(const std::string &what, uint64_t offset, int err) const {
  return Status::io_error(path_ + ": " + what + " at offset " + std::to_string(offset) +
                              ": " + errno_text(err),
                          err);
}

Status PosixFile::pread(void *buf, size_t count, uint64_t offset) {
  auto *p = static_cast<uint8_t *>(buf);
  while (count > 0) {
    ssize_t r = ::pread(fd_.get(), p, count, off_t(offset));
    if (r < 0) {
      if (errno == EINTR)
        continue;
      return error("read", offset, errno);
    }
    if (r == 0) {  // end of file: the rest reads as zeroes
      std::memset(p, 0, count);
      return Status::ok();
    }
    p += r;
    count -= size_t(r);
    offset += uint64_t(r);
  }
  return Status::ok();
}

Status PosixFile::write_all(const uint8_t *p, size_t count, uint64_t offset) {
  while (count > 0) {
    ssize_t r = ::pwrite(fd_.get(), p, count, off_t(offset));
    if (r < 0) {
      if (errno == EINTR)
        continue;
      return error("write", offset, errno);
    }
    p += r;
    count -= size_t(r);
    offset += uint64_t(r);
  }
  return Status::ok();
}

void PosixFile::raise_known_size(uint64_t size) {
  uint64_t known = known_size_.load();
  while (known < size && !known_size_.compare_exchange_weak(known, size)) {
  }
}

Status PosixFile::pwrite(const void *buf, size_t count, uint64_t offset) {
  const auto *p = static_cast<const uint8_t *>(buf);
  const uint64_t end = offset + count;
  if (end <= known_size_.load())
    return write_all(p, count, offset);
  ReaderLock lock(size_mu_);
  Status s = write_all(p, count, offset);
  if (s.is_ok())
    raise_known_size(end);
  return s;
}

Status PosixFile::sync() {
  if (::fdatasync(fd_.get()) < 0)
    return Status::io_error(path_ + ": fdatasync: " + errno_text(errno), errno);
  return Status::ok();
}

void PosixFile::start_writeback(uint64_t offset, uint64_t count) {
  // Only starts the writeback of dirty pages (no wait, no metadata): what
  // fails is reported to the fdatasync() of the next sync().
  (void)::sync_file_range(fd_.get(), off_t(offset), off_t(count), SYNC_FILE_RANGE_WRITE);
}

Result<uint64_t> PosixFile::size() { return size_of(path_, fd_.get()); }

Status PosixFile::truncate(uint64_t size) {
  WriterLock lock(size_mu_);
  // Lowered before the cut, so that it never claims bytes being cut off, not
  // even while the call runs (extend_to() reads it without the lock). If the
  // call fails, it stays a lower bound.
  if (size < known_size_.load())
    known_size_.store(size);
  if (::ftruncate(fd_.get(), off_t(size)) < 0)
    return error("truncate", size, errno);
  known_size_.store(size);
  return Status::ok();
}

Status PosixFile::extend_to(uint64_t size, uint64_t preferred) {
  if (size <= known_size_.load())
    return Status::ok();  // a completed write or extension already got there
  const uint64_t target = std::max(size, preferred);
  // fallocate() of the last byte grows the file and never changes data, so it
  // is safe while other threads write near the end. The shared lock keeps
  // truncate() out from the call to the raise: a cut in between would leave
  // known_size_ claiming bytes the file no longer has.
  if (!no_fallocate_.load()) {
    ReaderLock lock(size_mu_);
    if (::fallocate(fd_.get(), 0, off_t(target - 1), 1) == 0) {
      raise_known_size(target);
      return Status::ok();
    }
    if (!is_unsupported(errno))
      return error("fallocate", target - 1, errno);
    no_fallocate_.store(true);
  }
  // ftruncate() can also shrink: no write that may grow the file runs while
  // we look at the size and set it (see size_mu_).
  WriterLock lock(size_mu_);
  struct stat st;
  if (::fstat(fd_.get(), &st) < 0)
    return error("fstat", 0, errno);
  if (uint64_t(st.st_size) < target && ::ftruncate(fd_.get(), off_t(target)) < 0)
    return error("truncate", target, errno);
  raise_known_size(std::max<uint64_t>(target, uint64_t(st.st_size)));
  return Status::ok();
}

Status PosixFile::punch_hole(uint64_t offset, uint64_t count) {
  if (::fallocate(fd_.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off_t(offset),
                  off_t(count)) == 0)
    return Status::ok();
  if (is_unsupported(errno))
    return Status::not_supported(path_ + ": punching holes is not supported");
  return error("punch hole", offset, errno);
}

Status PosixFile::zero_range(uint64_t offset, uint64_t count) {
  if (::fallocate(fd_.get(), FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, off_t(offset),
                  off_t(count)) == 0)
    return Status::ok();
  if (is_unsupported(errno))
    return Status::not_supported(path_ + ": zeroing ranges is not supported");
  return error("zero range", offset, errno);
}

Result<File::Region> PosixFile::probe_run(uint64_t offset, uint64_t limit) {
  off_t data = ::lseek(fd_.get(), off_t(offset), SEEK_DATA);
  if (data < 0) {
    if (errno == ENXIO)  // no data after offset: the rest is a hole
      return Region{true, limit};
    if (is_unsupported(errno) || errno == EINVAL)
      return Region{false, limit};
    return error("seek data", offset, errno);
  }
  if (uint64_t(data) > offset)
    return Region{true, std::min(limit, uint64_t(data) - offset)};
  off_t hole = ::lseek(fd_.get(), off_t(offset), SEEK_HOLE);
  if (hole < 0)
    return error("seek hole", offset, errno);
  return Region{false, std::min(limit, uint64_t(hole) - offset)};
}

Result<std::unique_ptr<File>> open_posix_file(const std::string &path, OpenMode mode) {
  return open_posix_file(path, mode, LockAccess::kRead, LockSettings{Locking::kOff, {}, {}});
}

Result<std::unique_ptr<File>> open_posix_file(const std::string &path, OpenMode mode,
                                              LockAccess access, const LockSettings &locking) {
  int flags = O_CLOEXEC | O_NOCTTY | O_NONBLOCK;
  switch (mode) {
  case OpenMode::kReadOnly: flags |= O_RDONLY; break;
  case OpenMode::kReadWrite: flags |= O_RDWR; break;
  case OpenMode::kCreate: flags |= O_RDWR | O_CREAT | O_EXCL; break;
  }
  // O_NONBLOCK keeps open() of a FIFO from hanging; we refuse FIFOs below.
  UniqueFd fd(::open(path.c_str(), flags, 0644));
  if (fd.get() < 0)
    return Status::io_error(path + ": " + errno_text(errno), errno);
  struct stat st;
  if (::fstat(fd.get(), &st) < 0)
    return Status::io_error(path + ": fstat: " + errno_text(errno), errno);
  if (S_ISDIR(st.st_mode))
    return Status::invalid_argument(path + ": is a directory, not an image file");
  if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
    return Status::invalid_argument(path + ": is not a regular file or block device");
  int fl = ::fcntl(fd.get(), F_GETFL);
  if (fl < 0 || ::fcntl(fd.get(), F_SETFL, fl & ~O_NONBLOCK) < 0)
    return Status::io_error(path + ": fcntl: " + errno_text(errno), errno);
  auto lock = FileLock::take(fd.get(), path, access, locking);
  if (!lock)
    return lock.status();
  auto size = size_of(path, fd.get());
  if (!size)
    return size.status();
  return std::unique_ptr<File>(
      std::make_unique<PosixFile>(path, std::move(fd), *size, std::move(*lock)));
}

}  // namespace qed
