#include <nbdkit-filter.h>

#include "lib/align.h"
#include "filter/next_file.h"

#include <algorithm>
#include <cstring>
#include <vector>

namespace qed_filter {

NextLimits limits_from_block_size(uint32_t minimum, uint32_t maximum) {
  NextLimits l;
  // nbdkit guarantees a power of two up to 64 KiB for a non-zero minimum.
  if (minimum > 1 && minimum <= (64u << 10) && (minimum & (minimum - 1)) == 0)
    l.alignment = minimum;
  if (maximum != 0 && maximum < l.max_request)
    l.max_request = maximum;
  l.max_request = std::max(l.alignment, uint32_t(qed::round_down(l.max_request, l.alignment)));
  return l;
}

namespace {

// The context of the connection whose callback runs on this thread.
thread_local nbdkit_next_ops *current_next = nullptr;

}  // namespace

NextFile::Through::Through(nbdkit_next_ops *next) : outer_(current_next) { current_next = next; }

NextFile::Through::~Through() { current_next = outer_; }

NextFile::NextFile(std::string name, uint64_t size, NextLimits limits)
    : name_(std::move(name)), size_(size), limits_(limits) {}

qed::Status NextFile::pread(void *buf, size_t count, uint64_t offset) {
  auto *out = static_cast<uint8_t *>(buf);
  const uint64_t inside = offset < size_ ? std::min<uint64_t>(count, size_ - offset) : 0;
  if (inside < count)
    std::memset(out + inside, 0, count - inside);
  return inside ? read_within(out, inside, offset) : qed::Status::ok();
}

qed::Status NextFile::read_within(uint8_t *buf, uint64_t count, uint64_t offset) {
  const uint64_t align = limits_.alignment;
  std::vector<uint8_t> bounce;
  while (count > 0) {
    const uint64_t head = offset % align;
    uint64_t n;
    if (head != 0 || count < align) {
      // A partial block: read all of it (it may end early, at the end of the
      // export) and keep the part asked for.
      const uint64_t block = offset - head;
      const uint64_t len = std::min(align, size_ - block);
      bounce.resize(len);
      QED_RETURN_IF_ERROR(call_pread(bounce.data(), uint32_t(len), block));
      n = std::min(count, len - head);
      std::memcpy(buf, bounce.data() + head, n);
    } else {
      n = qed::round_down(std::min<uint64_t>(count, limits_.max_request), align);
      QED_RETURN_IF_ERROR(call_pread(buf, uint32_t(n), offset));
    }
    buf += n;
    offset += n;
    count -= n;
  }
  return qed::Status::ok();
}

qed::Status NextFile::call_pread(uint8_t *buf, uint32_t count, uint64_t offset) {
  nbdkit_next_ops *const next = current_next;
  if (!next)  // a callback that reaches the engine without naming its context: a bug of ours
    return qed::Status::io_error(name_ + ": reading at offset " + std::to_string(offset) +
                                     ": no connection to the layer below on this thread",
                                 EIO);
  int err = 0;
  const int r = next->pread(next, buf, count, offset, 0, &err);
  if (r == -1) {
    if (err == 0)
      err = EIO;
    return qed::Status::io_error(name_ + ": reading " + std::to_string(count) +
                                     " bytes at offset " + std::to_string(offset) +
                                     " failed: " + qed::errno_text(err),
                                 err);
  }
  return qed::Status::ok();
}

qed::Status NextFile::refuse_write(const char *what) const {
  return qed::Status::read_only(name_ + ": " + what +
                                ": the qed filter never changes the plugin's export");
}

qed::Status NextFile::pwrite(const void *, size_t, uint64_t) { return refuse_write("write"); }
qed::Status NextFile::truncate(uint64_t) { return refuse_write("truncate"); }
qed::Status NextFile::extend_to(uint64_t, uint64_t) { return refuse_write("extend"); }
qed::Status NextFile::punch_hole(uint64_t, uint64_t) { return refuse_write("punch hole"); }
qed::Status NextFile::zero_range(uint64_t, uint64_t) { return refuse_write("zero range"); }

}  // namespace qed_filter
