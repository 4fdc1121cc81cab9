#include "lib/page_buffer.h"

#include <sys/mman.h>

#include <new>

namespace qed {

PageBuffer::PageBuffer(size_t size) : size_(size) {
  if (size < kMapFrom) {
    small_.resize(size);
    data_ = small_.data();
    return;
  }
  // Anonymous pages read as zeroes.
  void *p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED)
    throw std::bad_alloc();
  data_ = static_cast<uint8_t *>(p);
}

PageBuffer::~PageBuffer() {
  if (size_ >= kMapFrom)
    ::munmap(data_, size_);
}

}  // namespace qed
