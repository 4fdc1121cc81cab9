#include "replay.h"

#include <linux/falloc.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace qsys {

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

[[noreturn]] void unsupported(const Op &op) {
  std::fprintf(stderr, "syscall replay: cannot model %s\n", op.describe().c_str());
  std::exit(2);
}

// fallocate modes the engine uses; anything else stops the harness.
bool zeroes_range(uint32_t mode) { return mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE); }

}  // namespace

Replay::Replay(std::vector<uint8_t> initial, std::vector<Op> ops)
    : initial_(std::move(initial)), ops_(std::move(ops)) {
  const size_t n = ops_.size();
  last_barrier_.assign(n + 1, -1);
  first_failed_.assign(n + 1, -1);
  lost_if_failed_.assign(n, false);
  long last = -1, failed = -1;
  for (size_t i = 0; i < n; i++) {
    last_barrier_[i] = last;
    first_failed_[i] = failed;
    const Op &op = ops_[i];
    if (op.kind == QSYS_WRITE && op.data.size() != op.length && op.ok())
      unsupported(op);  // the log was made without data (QED_SYSCALL_DATA=0)
    if (op.kind == QSYS_FALLOCATE && op.ok() &&
        (op.mode & ~uint32_t(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)))
      unsupported(op);
    if (!op.is_barrier())
      continue;
    if (op.ok()) {
      last = long(i);
    } else {
      if (failed < 0)
        failed = long(i);
      for (long j = last + 1; j < long(i); j++)
        if (ops_[size_t(j)].kind == QSYS_WRITE && ops_[size_t(j)].ok())
          lost_if_failed_[size_t(j)] = true;
    }
  }
  last_barrier_[n] = last;
  first_failed_[n] = failed;
}

bool Replay::failed_barrier_before(size_t k) const { return first_failed_[k] >= 0; }

void Replay::apply(std::vector<uint8_t> &file, const Op &op) {
  if (!op.ok())
    return;
  switch (op.kind) {
  case QSYS_WRITE:
    grow_to(file, op.offset + op.length);
    std::memcpy(file.data() + op.offset, op.data.data(), op.length);
    break;
  case QSYS_TRUNCATE:
    file.resize(op.offset, 0);
    break;
  case QSYS_FALLOCATE:
    if (zeroes_range(op.mode))
      zero_clipped(file, op.offset, op.length);
    if (!(op.mode & FALLOC_FL_KEEP_SIZE))
      grow_to(file, op.offset + op.length);
    break;
  default:
    break;
  }
}

void Replay::apply_torn(std::vector<uint8_t> &file, const Op &op, std::mt19937_64 &rng) {
  if (!op.ok())
    return;
  const bool write = op.kind == QSYS_WRITE;
  if ((!write && !(op.kind == QSYS_FALLOCATE && zeroes_range(op.mode))) || op.length == 0) {
    if (rng() & 1)
      apply(file, op);
    return;
  }
  if (write || !(op.mode & FALLOC_FL_KEEP_SIZE))
    grow_to(file, op.offset + op.length);  // the size may get there without the data
  const uint64_t end = op.offset + op.length;
  for (uint64_t s = op.offset / kSector * kSector; s < end; s += kSector) {
    if (rng() & 1)
      continue;
    const uint64_t a = std::max(s, op.offset), b = std::min(s + kSector, end);
    if (write)
      std::memcpy(file.data() + a, op.data.data() + (a - op.offset), b - a);
    else
      zero_clipped(file, a, b - a);
  }
}

void Replay::advance(Base &base, long upto, bool lose) {
  if (!base.ready || base.upto > upto) {
    base.file = initial_;
    base.upto = -1;
    base.ready = true;
  }
  for (long i = base.upto + 1; i <= upto; i++)
    if (!(lose && lost_if_failed_[size_t(i)]))
      apply(base.file, ops_[size_t(i)]);
  base.upto = upto;
}

std::vector<uint8_t> Replay::state_at(size_t k, Survival survival, bool lose,
                                      std::mt19937_64 &rng) {
  lose = lose && failed_barrier_before(k);
  Base &base = lose ? lost_ : kept_;
  const long b = last_barrier_[k];
  advance(base, b, lose);
  std::vector<uint8_t> file = base.file;
  for (size_t i = size_t(b + 1); i < k; i++) {
    const Op &op = ops_[i];
    if (lose && lost_if_failed_[i])
      continue;
    switch (survival) {
    case Survival::kNone:
      break;
    case Survival::kAll:
      apply(file, op);
      break;
    case Survival::kRandom:
      switch (rng() % 3) {
      case 0: break;
      case 1: apply(file, op); break;
      default: apply_torn(file, op, rng); break;
      }
      break;
    }
  }
  return file;
}

std::vector<uint8_t> Replay::final_file() {
  std::vector<uint8_t> file = initial_;
  for (const Op &op : ops_)
    apply(file, op);
  return file;
}

}  // namespace qsys
