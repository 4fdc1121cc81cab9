// What an NBD server said about base:allocation, kept so that one block
// status reply answers every probe it covers.
//
// Why: the engine walks a range with probe_run, one run at a time, while a
// server answers a block status request with every extent of the range it
// was asked about. Asking again for each run and keeping only the first (as
// before) made a map quadratic: a base of N extents took N requests and sent
// N^2/2 extents. Kept replies make the walk linear: each request answers the
// probes over its whole reply.
//
// Bounds: at most kSlots replies of at most kMaxSpans spans each (runs of
// one kind, neighbours of the same kind merged), so a few hundred KiB
// whatever the server sends. A reply with more spans than that keeps its
// first kMaxSpans, and the next request asks about the length those covered
// (the window), so that a densely fragmented base is asked about fewer bytes
// at a time instead of sending the same extents again; replies well below
// the bound double the window again, up to kMaxWindow.
//
// Validity: the base must not change while overlays use it (as with QEMU);
// the owner clears the cache when it reconnects, since a restarted server may
// serve other content.
//
// Thread safety: every method may be called from many threads at once; mu_
// guards every member below it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include "lib/file.h"
#include "lib/thread_annotations.h"

namespace qed_nbd {

// One reply being collected: the libnbd extent callback feeds it, merging
// neighbours of one kind, clipping to the range asked about and stopping at
// kMaxSpans (StatusCache's bounds).
class StatusReply {
public:
  StatusReply(uint64_t offset, uint64_t count) : offset_(offset), end_(offset + count) {}
  // Adds the next extent of the reply (length 0 ends the reply: a server
  // that sends one is broken, and what came before still holds).
  void add(uint64_t length, bool zero);
  // Forgets what was collected (the request is tried again).
  void reset();

  uint64_t offset() const { return offset_; }
  uint64_t covered_end() const { return pos_; }
  bool truncated() const { return truncated_; }
  size_t extents() const { return extents_; }

private:
  friend class StatusCache;
  struct Span {
    uint64_t end;
    bool zero;
  };

  uint64_t offset_;
  uint64_t end_;            // of the range asked about
  uint64_t pos_ = offset_;  // where the next extent starts
  std::vector<Span> spans_;
  size_t extents_ = 0;      // extents received, merged or not
  bool truncated_ = false;  // more came than was kept
  bool ended_ = false;
};

class StatusCache {
public:
  static constexpr size_t kSlots = 8;
  static constexpr size_t kMaxSpans = 2048;
  static constexpr uint64_t kMaxWindow = 1ull << 30;
  static constexpr uint64_t kMinWindow = 64u << 10;

  // The run at `offset` (at most `limit` bytes, and not past the end of the
  // reply holding it), if a kept reply covers `offset`.
  std::optional<qed::File::Region> find(uint64_t offset, uint64_t limit);
  // Keeps `reply` (replacing the least recently used one) and adjusts the
  // window.
  void insert(StatusReply &&reply);
  void clear();
  // How many bytes the next request should ask about.
  uint64_t window();

private:
  struct Slot {
    StatusReply reply{0, 0};
    uint64_t used = 0;  // recency stamp; 0: empty
  };

  qed::Mutex mu_;
  Slot slots_[kSlots] GUARDED_BY(mu_);
  uint64_t clock_ GUARDED_BY(mu_) = 0;
  uint64_t window_ GUARDED_BY(mu_) = kMaxWindow;
};

}  // namespace qed_nbd
