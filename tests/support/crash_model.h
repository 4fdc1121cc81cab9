// Simulated power loss for the engine's file interface.
//
// A workload runs on an Image whose file is a FaultFile (recording) over a
// MemoryFile. The log then says, in the order the file saw them, every write
// (with its bytes), sync, extension, punched hole and zeroed range, plus
// markers the workload added when flushes returned. A crash state at log
// position k is the file a power loss at k could leave: every operation
// before the last sync before k is there; each later operation may be there
// or not, and a later write may be torn at 512-byte granularity (any subset
// of its sectors reached the disk).
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "fault_file.h"

namespace crash {

using Log = std::vector<qed::FaultFile::Record>;

// How the operations after the last sync fare in one crash state.
enum class Survival { kNone, kAll, kRandom };

class CrashStates {
public:
  // `initial` is the file before the first logged operation.
  CrashStates(std::vector<uint8_t> initial, Log log);

  // The file after a crash at log position `k` (0..log.size()).
  std::vector<uint8_t> state_at(size_t k, Survival survival, std::mt19937_64 &rng);
  // The same into `out`, whose memory is reused: many states cost no
  // allocation (and, under ASan, no fresh pages) each.
  void state_at(size_t k, Survival survival, std::mt19937_64 &rng, std::vector<uint8_t> &out);

  // Index of the last sync before position k, or -1.
  long last_sync_before(size_t k) const;
  const Log &log() const { return log_; }

private:
  static void apply(std::vector<uint8_t> &file, const qed::FaultFile::Record &r);
  static void apply_sectors(std::vector<uint8_t> &file, const qed::FaultFile::Record &r,
                            std::mt19937_64 &rng);
  void advance_base_to(long sync_index);

  Log log_;
  std::vector<long> last_sync_;  // last_sync_[k]: last sync index < k
  std::vector<uint8_t> initial_;
  std::vector<uint8_t> base_;    // initial_ with ops [0, base_upto_] applied
  long base_upto_ = -1;
  uint64_t max_size_ = 0;        // the largest the file gets in the log
};

}  // namespace crash
