#include "tests/support/crash_model.h"

#include <algorithm>
#include <cstring>

namespace crash {

namespace {

constexpr uint64_t kSector = 512;

void grow_to(std::vector<uint8_t> &file, uint64_t size) {
  if (file.size() < size)
    file.resize(size, 0);
}

void zero_clipped(std::vector<uint8_t> &file, uint64_t off, uint64_t len) {
  if (off >= file.size())
    return;
  const uint64_t end = std::min<uint64_t>(file.size(), off + len);
  std::memset(file.data() + off, 0, end - off);
}

bool tearable(const Record &r) {
  return (r.kind == Kind::kWrite || r.kind == Kind::kZero || r.kind == Kind::kPunch) &&
         r.length > 0;
}

}  // namespace

CrashStates::CrashStates(std::vector<uint8_t> initial, Log log)
    : initial_(std::move(initial)), log_(std::move(log)) {
  const size_t n = log_.size();
  last_sync_.assign(n + 1, -1);
  failed_before_.assign(n + 1, false);
  lost_if_failed_.assign(n, false);
  max_size_ = initial_.size();
  long last = -1;
  bool failed = false;
  for (size_t i = 0; i < n; i++) {
    last_sync_[i] = last;
    failed_before_[i] = failed;
    const Record &r = log_[i];
    switch (r.kind) {
    case Kind::kWrite:
    case Kind::kZero:
      max_size_ = std::max<uint64_t>(max_size_, r.offset + r.length);
      break;
    case Kind::kTruncate:
    case Kind::kExtend:
      max_size_ = std::max<uint64_t>(max_size_, r.offset);
      break;
    case Kind::kSync:
      last = long(i);
      break;
    case Kind::kFailedSync:
      failed = true;
      for (long j = last + 1; j < long(i); j++)
        if (log_[size_t(j)].kind == Kind::kWrite)
          lost_if_failed_[size_t(j)] = true;
      break;
    default:
      break;
    }
  }
  last_sync_[n] = last;
  failed_before_[n] = failed;
}

void CrashStates::apply(std::vector<uint8_t> &file, const Record &r) {
  switch (r.kind) {
  case Kind::kWrite:
    grow_to(file, r.offset + r.length);
    std::memcpy(file.data() + r.offset, r.bytes.data(), r.length);
    break;
  case Kind::kTruncate:
    file.resize(r.offset, 0);
    break;
  case Kind::kExtend:
    grow_to(file, r.offset);
    break;
  case Kind::kZero:
    grow_to(file, r.offset + r.length);
    [[fallthrough]];
  case Kind::kPunch:
    zero_clipped(file, r.offset, r.length);
    break;
  default:
    break;
  }
}

void CrashStates::apply_torn(std::vector<uint8_t> &file, const Record &r, std::mt19937_64 &rng) {
  if (!tearable(r)) {
    if (rng() & 1)
      apply(file, r);
    return;
  }
  const bool grows = r.kind != Kind::kPunch;
  const uint64_t end = r.offset + r.length;
  // The size may get to the end without the data, or only as far as the
  // sectors that reached the disk.
  if (grows && (rng() & 1))
    grow_to(file, end);
  for (uint64_t s = r.offset; s < end;) {
    const uint64_t next = std::min(end, (s / kSector + 1) * kSector);
    if (rng() & 1) {
      if (grows)
        grow_to(file, next);
      if (r.kind == Kind::kWrite)
        std::memcpy(file.data() + s, r.bytes.data() + (s - r.offset), next - s);
      else
        zero_clipped(file, s, next - s);
    }
    s = next;
  }
}

void CrashStates::advance(Base &base, long upto, bool lose) {
  if (!base.ready || base.upto > upto) {
    base.file = initial_;
    base.upto = -1;
    base.ready = true;
  }
  // Room for everything the log may add, so applying it never moves the file.
  base.file.reserve(max_size_);
  for (long i = base.upto + 1; i <= upto; i++)
    if (!(lose && lost_if_failed_[size_t(i)]))
      apply(base.file, log_[size_t(i)]);
  base.upto = upto;
}

std::vector<uint8_t> CrashStates::state_at(size_t k, Survival survival, std::mt19937_64 &rng,
                                           bool lose_after_failed_sync) {
  std::vector<uint8_t> file;
  state_at(k, survival, rng, file, lose_after_failed_sync);
  return file;
}

void CrashStates::state_at(size_t k, Survival survival, std::mt19937_64 &rng,
                           std::vector<uint8_t> &file, bool lose_after_failed_sync) {
  const bool lose = lose_after_failed_sync && failed_before_[k];
  Base &base = lose ? lost_ : kept_;
  const long sync = last_sync_[k];
  advance(base, sync, lose);
  file.reserve(max_size_);
  file.assign(base.file.begin(), base.file.end());
  for (size_t i = size_t(sync + 1); i < k; i++) {
    const Record &r = log_[i];
    if (lose && lost_if_failed_[i])
      continue;
    switch (survival) {
    case Survival::kNone:
      break;
    case Survival::kAll:
      apply(file, r);
      break;
    case Survival::kRandom:
      switch (rng() % 3) {
      case 0: break;
      case 1: apply(file, r); break;
      default: apply_torn(file, r, rng); break;
      }
      break;
    }
  }
}

std::vector<uint8_t> CrashStates::final_file() const {
  std::vector<uint8_t> file = initial_;
  for (const Record &r : log_)
    apply(file, r);
  return file;
}

}  // namespace crash
