#include "tests/support/fault_file.h"

#include <algorithm>
#include <cstring>
#include <utility>

namespace qed {

MemoryFile::MemoryFile(std::vector<uint8_t> bytes, std::string name) : name_(std::move(name)) {
  std::unique_lock lock(mu_);
  write_locked(bytes.data(), bytes.size(), 0);
}

uint8_t *MemoryFile::chunk_locked(uint64_t index, uint64_t keep_from, uint64_t keep_to) {
  if (chunks_.size() <= index)
    chunks_.resize(index + 1);
  if (!chunks_[index]) {
    // A new chunk reads as zeroes but for [keep_from, keep_to), which the
    // caller is about to write.
    chunks_[index] = std::make_unique_for_overwrite<uint8_t[]>(kChunkBytes);
    std::memset(chunks_[index].get(), 0, keep_from);
    std::memset(chunks_[index].get() + keep_to, 0, kChunkBytes - keep_to);
  }
  return chunks_[index].get();
}

void MemoryFile::write_locked(const uint8_t *p, uint64_t count, uint64_t offset) {
  for (uint64_t done = 0; done < count;) {
    const uint64_t at = offset + done, in = at % kChunkBytes;
    const uint64_t n = std::min(count - done, kChunkBytes - in);
    std::memcpy(chunk_locked(at / kChunkBytes, in, in + n) + in, p + done, n);
    done += n;
  }
  size_ = std::max(size_, offset + count);
}

void MemoryFile::zero_locked(uint64_t offset, uint64_t count) {
  const uint64_t end = std::min(size_, offset + count);
  for (uint64_t at = offset; at < end;) {
    const uint64_t index = at / kChunkBytes, in = at % kChunkBytes;
    const uint64_t n = std::min(end - at, kChunkBytes - in);
    if (index < chunks_.size() && chunks_[index]) {
      if (n == kChunkBytes)
        chunks_[index].reset();  // a whole chunk: no memory for zeroes
      else
        std::memset(chunks_[index].get() + in, 0, n);
    }
    at += n;
  }
}

Status MemoryFile::pread(void *buf, size_t count, uint64_t offset) {
  if (count == 0)
    return Status::ok();
  std::shared_lock lock(mu_);
  auto *p = static_cast<uint8_t *>(buf);
  for (uint64_t done = 0; done < count;) {
    const uint64_t at = offset + done, index = at / kChunkBytes, in = at % kChunkBytes;
    const uint64_t n = std::min<uint64_t>(count - done, kChunkBytes - in);
    const bool data = at < size_ && index < chunks_.size() && chunks_[index];
    if (data)  // bytes of the chunk past the end of the file are zero
      std::memcpy(p + done, chunks_[index].get() + in, n);
    else
      std::memset(p + done, 0, n);
    done += n;
  }
  return Status::ok();
}

Status MemoryFile::pwrite(const void *buf, size_t count, uint64_t offset) {
  if (count == 0)
    return Status::ok();
  std::unique_lock lock(mu_);
  write_locked(static_cast<const uint8_t *>(buf), count, offset);
  return Status::ok();
}

Result<uint64_t> MemoryFile::size() {
  std::shared_lock lock(mu_);
  return size_;
}

Status MemoryFile::truncate(uint64_t size) {
  std::unique_lock lock(mu_);
  if (size < size_) {
    // What lies past the new end must read as zeroes if the file grows again.
    zero_locked(size, size_ - size);
    chunks_.resize(std::min<uint64_t>(chunks_.size(), (size + kChunkBytes - 1) / kChunkBytes));
  }
  size_ = size;
  return Status::ok();
}

Status MemoryFile::extend_to(uint64_t size, uint64_t preferred) {
  std::unique_lock lock(mu_);
  if (size_ < size)
    size_ = std::max(size, preferred);
  return Status::ok();
}

Status MemoryFile::punch_hole(uint64_t offset, uint64_t count) {
  std::unique_lock lock(mu_);
  zero_locked(offset, count);
  return Status::ok();
}

Status MemoryFile::zero_range(uint64_t offset, uint64_t count) {
  std::unique_lock lock(mu_);
  size_ = std::max(size_, offset + count);
  zero_locked(offset, count);
  return Status::ok();
}

std::vector<uint8_t> MemoryFile::contents() const {
  std::vector<uint8_t> out(size_);
  (void)const_cast<MemoryFile *>(this)->pread(out.data(), out.size(), 0);
  return out;
}

void FaultFile::fail_nth(FileOp op, uint64_t nth, int err) {
  std::lock_guard lock(mu_);
  Plan &p = plans_[size_t(op)];
  p.nth = nth;
  p.err = err;
}

void FaultFile::fail_one_in(FileOp op, uint32_t n, uint64_t seed, int err) {
  std::lock_guard lock(mu_);
  Plan &p = plans_[size_t(op)];
  p.one_in = n;
  p.rng = seed | 1;
  p.err = err;
}

void FaultFile::clear_failures() {
  std::lock_guard lock(mu_);
  for (Plan &p : plans_)
    p = Plan{};
}

void FaultFile::set_recording(bool on) {
  std::lock_guard lock(mu_);
  recording_ = on;
}

void FaultFile::add_marker(uint64_t tag) { record(crash::Kind::kMarker, tag, 0, nullptr); }

std::vector<FaultFile::Record> FaultFile::records() const {
  std::lock_guard lock(mu_);
  return log_;
}

std::vector<FaultFile::Record> FaultFile::take_records() {
  std::lock_guard lock(mu_);
  return std::exchange(log_, {});
}

Status FaultFile::maybe_fail(FileOp op) {
  calls_[size_t(op)]++;
  std::lock_guard lock(mu_);
  Plan &p = plans_[size_t(op)];
  bool fail = false;
  if (p.nth && --p.nth == 0)
    fail = true;
  if (p.one_in) {
    p.rng ^= p.rng << 13;  // xorshift64
    p.rng ^= p.rng >> 7;
    p.rng ^= p.rng << 17;
    fail = fail || p.rng % p.one_in == 0;
  }
  if (!fail)
    return Status::ok();
  return Status::io_error(inner_->name() + ": injected failure", p.err);
}

void FaultFile::record(crash::Kind kind, uint64_t offset, uint64_t length, const void *bytes) {
  std::lock_guard lock(mu_);
  if (!recording_)
    return;
  Record r{kind, offset, length, {}};
  if (bytes)
    r.bytes.assign(static_cast<const uint8_t *>(bytes),
                   static_cast<const uint8_t *>(bytes) + length);
  log_.push_back(std::move(r));
}

Status FaultFile::pread(void *buf, size_t count, uint64_t offset) {
  QED_RETURN_IF_ERROR(maybe_fail(FileOp::kRead));
  return inner_->pread(buf, count, offset);
}

Status FaultFile::pwrite(const void *buf, size_t count, uint64_t offset) {
  QED_RETURN_IF_ERROR(maybe_fail(FileOp::kWrite));
  std::lock_guard order(order_mu_);
  QED_RETURN_IF_ERROR(inner_->pwrite(buf, count, offset));
  record(crash::Kind::kWrite, offset, count, buf);
  return Status::ok();
}

Status FaultFile::sync() {
  QED_RETURN_IF_ERROR(maybe_fail(FileOp::kSync));
  std::lock_guard order(order_mu_);
  QED_RETURN_IF_ERROR(inner_->sync());
  record(crash::Kind::kSync, 0, 0, nullptr);
  return Status::ok();
}

Status FaultFile::truncate(uint64_t size) {
  QED_RETURN_IF_ERROR(maybe_fail(FileOp::kTruncate));
  std::lock_guard order(order_mu_);
  QED_RETURN_IF_ERROR(inner_->truncate(size));
  record(crash::Kind::kTruncate, size, 0, nullptr);
  return Status::ok();
}

Status FaultFile::extend_to(uint64_t size, uint64_t preferred) {
  QED_RETURN_IF_ERROR(maybe_fail(FileOp::kExtend));
  // Only an extension that grows the file is an operation worth recording.
  std::lock_guard order(order_mu_);
  auto before = inner_->size();
  QED_RETURN_IF_ERROR(inner_->extend_to(size, preferred));
  if (!before || *before < size)
    record(crash::Kind::kExtend, std::max(size, preferred), 0, nullptr);
  return Status::ok();
}

Status FaultFile::punch_hole(uint64_t offset, uint64_t count) {
  QED_RETURN_IF_ERROR(maybe_fail(FileOp::kPunch));
  std::lock_guard order(order_mu_);
  QED_RETURN_IF_ERROR(inner_->punch_hole(offset, count));
  record(crash::Kind::kPunch, offset, count, nullptr);
  return Status::ok();
}

Status FaultFile::zero_range(uint64_t offset, uint64_t count) {
  QED_RETURN_IF_ERROR(maybe_fail(FileOp::kZero));
  std::lock_guard order(order_mu_);
  QED_RETURN_IF_ERROR(inner_->zero_range(offset, count));
  record(crash::Kind::kZero, offset, count, nullptr);
  return Status::ok();
}

}  // namespace qed
