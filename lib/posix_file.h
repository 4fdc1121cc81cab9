// File on a POSIX file descriptor: pread/pwrite loops, fdatasync, fallocate.
#pragma once

#include <unistd.h>

#include <atomic>
#include <string>
#include <utility>

#include "lib/file.h"
#include "lib/file_lock.h"
#include "lib/thread_annotations.h"

namespace qed {

// Owns one file descriptor and closes it on destruction. Move-only.
class UniqueFd {
public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd &&other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd &operator=(UniqueFd &&other) noexcept {
    if (this != &other) {
      reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  ~UniqueFd() { reset(); }
  int get() const { return fd_; }
  void reset() {
    if (fd_ >= 0)
      ::close(fd_);
    fd_ = -1;
  }

private:
  int fd_ = -1;
};

// Thread-safe: every operation is a positioned system call on a shared
// descriptor (no file offset is used). The only hazard is the size: growing
// the file with ftruncate (where fallocate is not supported: ext2/ext3, NFSv3,
// some FUSE and 9p file systems) would cut off a write past the old end that
// landed between its fstat and its ftruncate, and a truncate() between an
// extension and the raise of known_size_ that follows it would leave
// known_size_ above the real size (extend_to would then skip a growth the
// engine relies on: issue 18). So:
//   - known_size_ is a lower bound of the file size, at every moment: the end
//     of a completed write or extension (set exactly by truncate()). A write
//     that ends within it cannot change the size and takes no lock.
//   - size_mu_ is held shared by every write that may grow the file and by a
//     fallocate extension together with its raise of known_size_ (neither can
//     shrink the file), and exclusively by the ftruncate that grows it and by
//     truncate(): the size never changes under a growing write except by
//     that write itself, and never shrinks between a growth and its raise.
class PosixFile final : public File {
public:
  PosixFile(std::string path, UniqueFd fd, uint64_t size_at_open, FileLock lock = {})
      : path_(std::move(path)),
        fd_(std::move(fd)),
        lock_(std::move(lock)),
        known_size_(size_at_open) {}

  const std::string &name() const override { return path_; }
  Status pread(void *buf, size_t count, uint64_t offset) override;
  Status pwrite(const void *buf, size_t count, uint64_t offset) override;
  Status sync() override;
  void start_writeback(uint64_t offset, uint64_t count) override;
  Result<uint64_t> size() override;
  Status truncate(uint64_t size) override;
  Status extend_to(uint64_t size, uint64_t preferred = 0) override;
  Status punch_hole(uint64_t offset, uint64_t count) override;
  Status zero_range(uint64_t offset, uint64_t count) override;
  Result<Region> probe_run(uint64_t offset, uint64_t limit) override;

private:
  Status error(const std::string &what, uint64_t offset, int err) const;
  Status write_all(const uint8_t *p, size_t count, uint64_t offset);
  void raise_known_size(uint64_t size);

  const std::string path_;
  UniqueFd fd_;
  FileLock lock_;  // on fd_, so declared after it: released before it closes
  SharedMutex size_mu_;  // guards the file's size, not a member (see above)
  std::atomic<uint64_t> known_size_;
  std::atomic<bool> no_fallocate_{false};  // fallocate said EOPNOTSUPP once
};

}  // namespace qed
