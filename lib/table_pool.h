// Memory for L2 tables and for the copies of them that write-backs make:
// buffers of one size (an image's largest table), kept for reuse until the
// pool goes.
//
// Why a pool: with glibc's per-thread arenas, a buffer freed after another
// thread used it stays with the arena it came from, and large buffers that
// come and go on many threads take the process far past the cache's budget
// (measured: 16 nbdkit threads held 4 times a 1 MiB budget). Here a buffer is
// only allocated when none is free, so the pool never holds more buffers than
// were ever in use at once, which the cache's budget bounds (l2_cache.h).
//
// Thread-safe: mu_ guards free_ and allocated_, and is taken alone, briefly.
#pragma once

#include <cstdint>
#include <span>
#include <utility>

#include "lib/thread_annotations.h"

namespace qed {

class TablePool;

// One buffer of a pool, holding up to the pool's entries() entries, of which
// size() are in use. Move-only; gives the buffer back when destroyed.
class TableBuffer {
public:
  TableBuffer() = default;
  TableBuffer(TableBuffer &&other) noexcept { *this = std::move(other); }
  TableBuffer &operator=(TableBuffer &&other) noexcept;
  TableBuffer(const TableBuffer &) = delete;
  TableBuffer &operator=(const TableBuffer &) = delete;
  ~TableBuffer() { reset(); }

  uint64_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  // Entries of a pool buffer (0 when it holds none).
  uint64_t capacity() const;
  // Changes how many entries are in use, at most capacity(); the values of
  // new ones are unspecified.
  void resize(uint64_t n);
  uint64_t *data() { return data_; }
  const uint64_t *data() const { return data_; }
  uint64_t &operator[](uint64_t i) { return data_[i]; }
  const uint64_t &operator[](uint64_t i) const { return data_[i]; }
  uint64_t *begin() { return data_; }
  uint64_t *end() { return data_ + size_; }
  std::span<uint64_t> span() { return {data_, size_}; }
  std::span<const uint64_t> span() const { return {data_, size_}; }
  // Gives the buffer back to its pool now.
  void reset() noexcept;

private:
  friend class TablePool;
  TableBuffer(TablePool *pool, uint64_t *data, uint64_t size)
      : pool_(pool), data_(data), size_(size) {}

  TablePool *pool_ = nullptr;
  uint64_t *data_ = nullptr;
  uint64_t size_ = 0;
};

class TablePool {
public:
  // Buffers of `entries` entries (at least one).
  explicit TablePool(uint64_t entries);
  // Every buffer taken must have come back.
  ~TablePool();
  TablePool(const TablePool &) = delete;
  TablePool &operator=(const TablePool &) = delete;

  uint64_t entries() const { return entries_; }
  uint64_t buffer_bytes() const { return entries_ * 8; }
  // A free buffer, or a new one when none is; `size` entries in use (at most
  // entries()). Throws std::bad_alloc when there is no memory for a new one.
  TableBuffer take(uint64_t size);
  // Buffers allocated so far: the most that were ever in use at once.
  uint64_t allocated() EXCLUDES(mu_);

private:
  friend class TableBuffer;
  void give(uint64_t *buffer) noexcept;

  const uint64_t entries_;
  Mutex mu_;
  uint64_t *free_ GUARDED_BY(mu_) = nullptr;  // linked through each buffer's first entry
  uint64_t allocated_ GUARDED_BY(mu_) = 0;
};

}  // namespace qed
