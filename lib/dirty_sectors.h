// Which 512-byte sectors of a table (an L2 table or the L1 table) changed in
// memory since they were last written: the unit a write-back writes. Runs of
// dirty sectors become one write each (Metadata::take_dirty).
//
// Not thread-safe: the owner's lock guards it (Metadata::mu_).
#pragma once

#include <cstdint>
#include <vector>

#include "lib/align.h"
#include "lib/geometry.h"  // kEntriesPerSector

namespace qed {

class DirtySectors {
public:
  DirtySectors() = default;
  // A map of the sectors that hold `entries` table entries, all clean.
  explicit DirtySectors(uint64_t entries)
      : bits_(div_round_up(entries, kEntriesPerSector)) {}

  uint64_t sectors() const { return bits_.size(); }
  // How many are dirty.
  uint64_t count() const { return count_; }
  bool any() const { return count_ != 0; }
  bool test(uint64_t sector) const { return bits_[sector]; }

  void mark(uint64_t sector) {
    if (!bits_[sector]) {
      bits_[sector] = true;
      count_++;
    }
  }
  // Marks [first, first+n) dirty again (a write-back of them failed).
  void mark(uint64_t first, uint64_t n) {
    for (uint64_t s = first; s < first + n; s++)
      mark(s);
  }
  // Marks [first, first+n) clean (a write-back took them).
  void clear(uint64_t first, uint64_t n) {
    for (uint64_t s = first; s < first + n; s++) {
      if (bits_[s]) {
        bits_[s] = false;
        count_--;
      }
    }
  }

  // Calls fn(first, n) for each maximal run of dirty sectors, in order.
  template <typename Fn>
  void for_each_run(Fn &&fn) const {
    const uint64_t n = bits_.size();
    for (uint64_t s = 0; s < n;) {
      if (!bits_[s]) {
        s++;
        continue;
      }
      uint64_t e = s;
      while (e < n && bits_[e])
        e++;
      fn(s, e - s);
      s = e;
    }
  }

private:
  std::vector<bool> bits_;
  uint64_t count_ = 0;  // set bits in bits_
};

}  // namespace qed
