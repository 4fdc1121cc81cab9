#include "fault_file.h"

#include <algorithm>
#include <cstring>

namespace qed {

Status MemoryFile::pread(void *buf, size_t count, uint64_t offset) {
  if (count == 0)
    return Status::ok();
  std::shared_lock lock(mu_);
  auto *p = static_cast<uint8_t *>(buf);
  const uint64_t have = offset < data_.size() ? std::min<uint64_t>(count, data_.size() - offset) : 0;
  if (have)
    std::memcpy(p, data_.data() + offset, have);
  std::memset(p + have, 0, count - have);
  return Status::ok();
}

Status MemoryFile::pwrite(const void *buf, size_t count, uint64_t offset) {
  if (count == 0)
    return Status::ok();
  std::unique_lock lock(mu_);
  if (data_.size() < offset + count)
    data_.resize(offset + count);
  std::memcpy(data_.data() + offset, buf, count);
  return Status::ok();
}

Result<uint64_t> MemoryFile::size() {
  std::shared_lock lock(mu_);
  return uint64_t(data_.size());
}

Status MemoryFile::truncate(uint64_t size) {
  std::unique_lock lock(mu_);
  data_.resize(size);
  return Status::ok();
}

Status MemoryFile::extend_to(uint64_t size, uint64_t preferred) {
  std::unique_lock lock(mu_);
  if (data_.size() < size)
    data_.resize(std::max(size, preferred));
  return Status::ok();
}

Status MemoryFile::punch_hole(uint64_t offset, uint64_t count) {
  std::unique_lock lock(mu_);
  if (offset < data_.size())
    std::fill_n(data_.begin() + ptrdiff_t(offset),
                std::min<uint64_t>(count, data_.size() - offset), 0);
  return Status::ok();
}

Status MemoryFile::zero_range(uint64_t offset, uint64_t count) {
  {
    std::unique_lock lock(mu_);
    if (data_.size() < offset + count)
      data_.resize(offset + count);
  }
  return punch_hole(offset, count);
}

std::vector<uint8_t> MemoryFile::contents() const {
  std::shared_lock lock(mu_);
  return data_;
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

void FaultFile::add_marker(uint64_t tag) { record(FileOp::kMarker, tag, 0, nullptr); }

std::vector<FaultFile::Record> FaultFile::records() const {
  std::lock_guard lock(mu_);
  return log_;
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

void FaultFile::record(FileOp op, uint64_t offset, uint64_t length, const void *bytes) {
  std::lock_guard lock(mu_);
  if (!recording_)
    return;
  Record r{op, offset, length, {}};
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
  record(FileOp::kWrite, offset, count, buf);
  return Status::ok();
}

Status FaultFile::sync() {
  QED_RETURN_IF_ERROR(maybe_fail(FileOp::kSync));
  std::lock_guard order(order_mu_);
  QED_RETURN_IF_ERROR(inner_->sync());
  record(FileOp::kSync, 0, 0, nullptr);
  return Status::ok();
}

Status FaultFile::truncate(uint64_t size) {
  QED_RETURN_IF_ERROR(maybe_fail(FileOp::kTruncate));
  std::lock_guard order(order_mu_);
  QED_RETURN_IF_ERROR(inner_->truncate(size));
  record(FileOp::kTruncate, size, 0, nullptr);
  return Status::ok();
}

Status FaultFile::extend_to(uint64_t size, uint64_t preferred) {
  QED_RETURN_IF_ERROR(maybe_fail(FileOp::kExtend));
  // Only an extension that grows the file is an operation worth recording.
  std::lock_guard order(order_mu_);
  auto before = inner_->size();
  QED_RETURN_IF_ERROR(inner_->extend_to(size, preferred));
  if (!before || *before < size)
    record(FileOp::kExtend, std::max(size, preferred), 0, nullptr);
  return Status::ok();
}

Status FaultFile::punch_hole(uint64_t offset, uint64_t count) {
  QED_RETURN_IF_ERROR(maybe_fail(FileOp::kPunch));
  std::lock_guard order(order_mu_);
  QED_RETURN_IF_ERROR(inner_->punch_hole(offset, count));
  record(FileOp::kPunch, offset, count, nullptr);
  return Status::ok();
}

Status FaultFile::zero_range(uint64_t offset, uint64_t count) {
  QED_RETURN_IF_ERROR(maybe_fail(FileOp::kZero));
  std::lock_guard order(order_mu_);
  QED_RETURN_IF_ERROR(inner_->zero_range(offset, count));
  record(FileOp::kZero, offset, count, nullptr);
  return Status::ok();
}

}  // namespace qed
