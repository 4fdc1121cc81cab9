#include "crash_model.h"

#include <algorithm>
#include <cstring>

namespace crash {

using qed::FileOp;

CrashStates::CrashStates(std::vector<uint8_t> initial, Log log)
    : log_(std::move(log)), initial_(std::move(initial)), base_(initial_) {
  last_sync_.resize(log_.size() + 1);
  max_size_ = initial_.size();
  for (const auto &r : log_) {
    if (r.op == FileOp::kWrite || r.op == FileOp::kZero)
      max_size_ = std::max<uint64_t>(max_size_, r.offset + r.length);
    else if (r.op == FileOp::kExtend || r.op == FileOp::kTruncate)
      max_size_ = std::max<uint64_t>(max_size_, r.offset);
  }
  long last = -1;
  for (size_t k = 0; k <= log_.size(); k++) {
    last_sync_[k] = last;
    if (k < log_.size() && log_[k].op == FileOp::kSync)
      last = long(k);
  }
}

long CrashStates::last_sync_before(size_t k) const { return last_sync_[k]; }

void CrashStates::apply(std::vector<uint8_t> &file, const qed::FaultFile::Record &r) {
  switch (r.op) {
  case FileOp::kWrite:
    if (file.size() < r.offset + r.length)
      file.resize(r.offset + r.length);
    std::memcpy(file.data() + r.offset, r.bytes.data(), r.length);
    break;
  case FileOp::kTruncate:
    file.resize(r.offset);
    break;
  case FileOp::kExtend:
    if (file.size() < r.offset)
      file.resize(r.offset);
    break;
  case FileOp::kZero:
    if (file.size() < r.offset + r.length)
      file.resize(r.offset + r.length);
    [[fallthrough]];
  case FileOp::kPunch:
    if (r.offset < file.size())
      std::fill_n(file.begin() + long(r.offset),
                  std::min<uint64_t>(r.length, file.size() - r.offset), 0);
    break;
  default:
    break;
  }
}

void CrashStates::apply_sectors(std::vector<uint8_t> &file, const qed::FaultFile::Record &r,
                                std::mt19937_64 &rng) {
  // Sectors are 512-byte units of the file, so a write is torn on those.
  const uint64_t end = r.offset + r.length;
  for (uint64_t s = r.offset; s < end;) {
    const uint64_t next = std::min(end, (s / 512 + 1) * 512);
    if (rng() & 1) {
      if (file.size() < next)
        file.resize(next);
      std::memcpy(file.data() + s, r.bytes.data() + (s - r.offset), next - s);
    }
    s = next;
  }
}

void CrashStates::advance_base_to(long sync_index) {
  if (sync_index < base_upto_) {
    base_ = initial_;
    base_upto_ = -1;
  }
  // Room for everything the log may add, so applying it never moves the file.
  base_.reserve(max_size_);
  for (long i = base_upto_ + 1; i <= sync_index; i++)
    apply(base_, log_[size_t(i)]);
  base_upto_ = std::max(base_upto_, sync_index);
}

std::vector<uint8_t> CrashStates::state_at(size_t k, Survival survival, std::mt19937_64 &rng) {
  std::vector<uint8_t> file;
  state_at(k, survival, rng, file);
  return file;
}

void CrashStates::state_at(size_t k, Survival survival, std::mt19937_64 &rng,
                           std::vector<uint8_t> &file) {
  const long sync = last_sync_[k];
  advance_base_to(sync);
  file.reserve(max_size_);
  file.assign(base_.begin(), base_.end());
  for (size_t i = size_t(sync + 1); i < k; i++) {
    const auto &r = log_[i];
    if (survival == Survival::kNone)
      continue;
    if (survival == Survival::kAll)
      apply(file, r);
    else if (r.op == FileOp::kWrite)
      apply_sectors(file, r, rng);
    else if (rng() & 1)
      apply(file, r);
  }
}

}  // namespace crash
