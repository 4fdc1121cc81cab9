// Simulated power loss: the one model of what a crash keeps of a file, used
// by every crash test (tests/crash, tests/syscall, the fuzz crash sweep and
// the unit tests that crash an image).
//
// A log (crash_record.h) says, in the order they took effect, what was done
// to a file. A crash "at k" is a power loss at a moment when exactly the
// records before k had been made. What the disk then holds:
//   - everything up to the last successful sync before k, as it was made;
//   - each later record present, absent or, for a write or a zeroed range,
//     torn at 512-byte sectors of the file (any subset of its sectors reached
//     the disk). A torn write or zeroed range past the end may have grown the
//     file to its end, or only as far as the sectors that reached the disk;
//   - size changes (truncation, extension) after the last sync likewise
//     present or absent.
// Survival says how the records after the last sync fare: none, all, or each
// decided at random as above.
//
// A failed sync is modelled the way Linux behaves after a write-back error
// ("fsyncgate"): the kernel may have dropped the dirty pages, so the writes
// made between the last successful sync and the failed one may be lost for
// good, even after a later sync succeeds. state_at() takes that branch when
// `lose_after_failed_sync` is set (and a sync failed before k).
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "tests/support/crash_record.h"

namespace crash {

enum class Survival { kNone, kAll, kRandom };

class CrashStates {
public:
  // `initial` is the file before the first record.
  CrashStates(std::vector<uint8_t> initial, Log log);

  size_t size() const { return log_.size(); }
  const Log &log() const { return log_; }
  // Index of the last successful sync before position k, or -1.
  long last_sync_before(size_t k) const { return last_sync_[k]; }
  // Whether a sync failed before position k (so losing its pages differs).
  bool failed_sync_before(size_t k) const { return failed_before_[k]; }

  // The file after a crash at position `k` (0..size()). Cheapest when k does
  // not decrease between calls with the same `lose_after_failed_sync`.
  std::vector<uint8_t> state_at(size_t k, Survival survival, std::mt19937_64 &rng,
                                bool lose_after_failed_sync = false);
  // The same into `out`, whose memory is reused: many states cost no
  // allocation (and, under ASan, no fresh pages) each.
  void state_at(size_t k, Survival survival, std::mt19937_64 &rng, std::vector<uint8_t> &out,
                bool lose_after_failed_sync = false);
  // The file with every record applied (what the real file must be).
  std::vector<uint8_t> final_file() const;

  // Applies one record to `file` as made.
  static void apply(std::vector<uint8_t> &file, const Record &r);

private:
  // The durable part of a state: initial_ with records [0, upto] applied
  // (less the writes a failed sync lost, in lost_).
  struct Base {
    std::vector<uint8_t> file;
    bool ready = false;
    long upto = -1;
  };
  static void apply_torn(std::vector<uint8_t> &file, const Record &r, std::mt19937_64 &rng);
  void advance(Base &base, long upto, bool lose);

  const std::vector<uint8_t> initial_;
  const Log log_;
  std::vector<long> last_sync_;       // [k]: last successful sync index < k, or -1
  std::vector<bool> failed_before_;   // [k]: whether some sync < k failed
  std::vector<bool> lost_if_failed_;  // [i]: write i follows the last good sync and
                                      // precedes a failed one
  uint64_t max_size_ = 0;             // the largest the file gets in the log
  Base kept_, lost_;
};

}  // namespace crash
