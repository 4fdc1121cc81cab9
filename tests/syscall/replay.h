// Crash states from a log of system calls on the image file.
//
// A crash "at k" is a power loss at a moment when exactly the calls before
// op k (in log order) had been made. What the disk then holds:
//   - everything up to the last successful barrier (fsync/fdatasync) before
//     k, as it was made;
//   - each later call present, absent or (writes, punched and zeroed ranges)
//     torn at 512-byte sectors: any subset of its sectors reached the disk.
//     A write past the end may have grown the file with none of its data;
//   - file sizes likewise: a truncation or an extending fallocate after the
//     last barrier may or may not have happened.
// Failed calls changed nothing (the preload makes injected failures without
// the real call).
//
// A failed barrier is modelled the way Linux behaves after a write-back
// error ("fsyncgate"): the kernel may have dropped the dirty pages, so the
// writes made between the last successful barrier and the failed one may be
// lost for good, even after a later barrier succeeds. state_at() takes that
// branch when `lose_after_failed_sync` is set.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "syscall_log.h"

namespace qsys {

enum class Survival { kNone, kAll, kRandom };

class Replay {
public:
  // `initial` is the file before the first op; `ops` are the calls that
  // matter (Op::matters()), in log order.
  Replay(std::vector<uint8_t> initial, std::vector<Op> ops);

  size_t size() const { return ops_.size(); }
  const std::vector<Op> &ops() const { return ops_; }
  // An upper bound of the moment of a crash at k: the start of op k (no call
  // was made after the crash), or "never" for k == size().
  uint64_t crash_time_bound(size_t k) const {
    return k < ops_.size() ? ops_[k].t_start : UINT64_MAX;
  }
  // Whether a barrier failed before k (so the fsyncgate branch differs).
  bool failed_barrier_before(size_t k) const;

  // The file after a crash at k. Cheapest when k does not decrease between
  // calls with the same `lose_after_failed_sync`.
  std::vector<uint8_t> state_at(size_t k, Survival survival, bool lose_after_failed_sync,
                                std::mt19937_64 &rng);
  // The file with every op applied (what the real file must be).
  std::vector<uint8_t> final_file();

  // Applies one op to `file` as made (nothing for a failed call).
  static void apply(std::vector<uint8_t> &file, const Op &op);

private:
  struct Base {
    std::vector<uint8_t> file;
    bool ready = false;
    long upto = -1;  // ops [0, upto] applied to file
  };
  static void apply_torn(std::vector<uint8_t> &file, const Op &op, std::mt19937_64 &rng);
  void advance(Base &base, long upto, bool lose);

  const std::vector<uint8_t> initial_;
  const std::vector<Op> ops_;
  std::vector<long> last_barrier_;   // [k]: last successful barrier index < k, or -1
  std::vector<long> first_failed_;   // [k]: whether some barrier < k failed (index or -1)
  std::vector<bool> lost_if_failed_;  // write i precedes a failed barrier, after an ok one
  Base kept_, lost_;
};

}  // namespace qsys
