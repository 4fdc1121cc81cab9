// File on a POSIX file descriptor: pread/pwrite loops, fdatasync, fallocate.
#pragma once

#include <unistd.h>

#include <mutex>
#include <string>
#include <utility>

#include "file.h"

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

// Thread-safe because every operation is a positioned system call on a shared
// descriptor (no file offset is used), except the extend_to() fallback, which
// serialises on extend_mu_.
class PosixFile final : public File {
public:
  PosixFile(std::string path, UniqueFd fd) : path_(std::move(path)), fd_(std::move(fd)) {}

  const std::string &name() const override { return path_; }
  Status pread(void *buf, size_t count, uint64_t offset) override;
  Status pwrite(const void *buf, size_t count, uint64_t offset) override;
  Status sync() override;
  Result<uint64_t> size() override;
  Status truncate(uint64_t size) override;
  Status extend_to(uint64_t size) override;
  Status punch_hole(uint64_t offset, uint64_t count) override;
  Status zero_range(uint64_t offset, uint64_t count) override;
  Result<Run> probe_run(uint64_t offset, uint64_t limit) override;

private:
  Status error(const std::string &what, uint64_t offset, int err) const;

  const std::string path_;
  UniqueFd fd_;
  std::mutex extend_mu_;  // serialises the ftruncate fallback of extend_to()
};

}  // namespace qed
