// The engine's only door to storage. Every byte the engine reads or writes
// goes through this interface, so tests can swap in an in-memory file, inject
// faults, or record writes and syncs to simulate a power loss.
//
// Thread safety: every method may be called from many threads at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "lib/file_lock.h"
#include "lib/status.h"

namespace qed {

class File {
public:
  virtual ~File() = default;
  File() = default;
  File(const File &) = delete;
  File &operator=(const File &) = delete;

  // The name used in error messages (usually the path).
  virtual const std::string &name() const = 0;

  // Reads `count` bytes at `offset`. Bytes at or beyond the end of the file
  // read as zeroes (QED reserves clusters past the end before writing them).
  virtual Status pread(void *buf, size_t count, uint64_t offset) = 0;
  // Writes all `count` bytes at `offset`, extending the file if needed.
  virtual Status pwrite(const void *buf, size_t count, uint64_t offset) = 0;
  // Makes every completed write durable (fdatasync).
  virtual Status sync() = 0;
  // A hint, never a promise: begins writing to storage what was written to
  // [offset, offset+count) (count 0: to the end of the file) without waiting,
  // so that a bulk copy's disk writes overlap its reads and its final sync()
  // has little left to do. Errors show up in the next sync(). Default: none.
  virtual void start_writeback(uint64_t offset, uint64_t count) {
    (void)offset;
    (void)count;
  }
  // Current size in bytes.
  virtual Result<uint64_t> size() = 0;
  // Sets the size, discarding or zero-extending the tail.
  virtual Status truncate(uint64_t size) = 0;
  // Grows the file to at least `size` bytes without touching any byte that is
  // already there, and never making the file shorter than any write made to
  // it, even while other threads write past its end. When the file must grow,
  // it may grow to `preferred` (if larger) instead, so that later calls find
  // it long enough and cost nothing.
  virtual Status extend_to(uint64_t size, uint64_t preferred = 0) = 0;
  // Deallocates the range; it then reads as zeroes. kNotSupported if the file
  // system cannot.
  virtual Status punch_hole(uint64_t offset, uint64_t count) = 0;
  // Makes the range read as zeroes, keeping it allocated. kNotSupported if the
  // file system cannot do that without writing.
  virtual Status zero_range(uint64_t offset, uint64_t count) = 0;
  // Whether `offset` is in a hole, and how many bytes (at most `limit`) the
  // data or hole region starting there spans. The default says everything is data.
  struct Region {
    bool hole;
    uint64_t length;
  };
  virtual Result<Region> probe_run(uint64_t offset, uint64_t limit) {
    (void)offset;
    return Region{false, limit};
  }
};

enum class OpenMode { kReadOnly, kReadWrite, kCreate };

// Opens a file with the POSIX implementation. kCreate makes a new file and
// fails if one exists (the caller decides whether to remove it first).
Result<std::unique_ptr<File>> open_posix_file(const std::string &path, OpenMode mode);
// The same, holding QEMU's image locks for `access` (file_lock.h) from before
// the first byte is read until the File is destroyed.
Result<std::unique_ptr<File>> open_posix_file(const std::string &path, OpenMode mode,
                                              LockAccess access, const LockSettings &locking);

}  // namespace qed
