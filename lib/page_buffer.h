// A zeroed buffer for the copy-on-write of one request, given back to the
// kernel as soon as the request is done with it.
//
// Why not std::vector: glibc returns a large block to the kernel on free only
// while it is above malloc's mmap threshold, and each such free raises the
// threshold (up to 32 MiB); blocks of that size then come from, and stay in,
// the arena of each thread that used them. nbdkit runs 16 threads per
// connection, so each would keep the largest copy it ever made, and nbdkit's
// own request buffers would stop going back too. Buffers from 128 KiB on are
// mapped here instead; smaller ones are ordinary allocations, which the
// arenas reuse.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace qed {

class PageBuffer {
public:
  // `size` bytes, all zero. Throws std::bad_alloc when there is no memory.
  explicit PageBuffer(size_t size);
  ~PageBuffer();
  PageBuffer(const PageBuffer &) = delete;
  PageBuffer &operator=(const PageBuffer &) = delete;

  uint8_t *data() { return data_; }
  size_t size() const { return size_; }

private:
  static constexpr size_t kMapFrom = 128 * 1024;

  size_t size_;
  std::vector<uint8_t> small_;  // below kMapFrom
  uint8_t *data_;
};

}  // namespace qed
