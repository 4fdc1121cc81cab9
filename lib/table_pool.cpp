#include "lib/table_pool.h"

#include <algorithm>
#include <cstring>
#include <new>

namespace qed {

TableBuffer &TableBuffer::operator=(TableBuffer &&other) noexcept {
  if (this != &other) {
    reset();
    pool_ = std::exchange(other.pool_, nullptr);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

uint64_t TableBuffer::capacity() const { return pool_ ? pool_->entries() : 0; }

void TableBuffer::resize(uint64_t n) { size_ = std::min(n, capacity()); }

void TableBuffer::reset() noexcept {
  if (pool_)
    pool_->give(data_);
  pool_ = nullptr;
  data_ = nullptr;
  size_ = 0;
}

TablePool::TablePool(uint64_t entries) : entries_(std::max<uint64_t>(entries, 1)) {}

TablePool::~TablePool() {
  while (free_) {
    uint64_t *next;
    std::memcpy(&next, free_, sizeof next);
    ::operator delete(free_);
    free_ = next;
  }
}

TableBuffer TablePool::take(uint64_t size) {
  size = std::min(size, entries_);
  {
    MutexLock lock(mu_);
    if (free_) {
      uint64_t *b = free_;
      std::memcpy(&free_, b, sizeof free_);
      return TableBuffer(this, b, size);
    }
  }
  auto *b = static_cast<uint64_t *>(::operator new(entries_ * 8));  // may throw
  MutexLock lock(mu_);
  allocated_++;
  return TableBuffer(this, b, size);
}

void TablePool::give(uint64_t *buffer) noexcept {
  MutexLock lock(mu_);
  std::memcpy(buffer, &free_, sizeof free_);
  free_ = buffer;
}

uint64_t TablePool::allocated() {
  MutexLock lock(mu_);
  return allocated_;
}

}  // namespace qed
