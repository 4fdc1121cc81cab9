// A bounded LRU cache of L2 tables, keyed by the table's file offset.
//
// Not thread-safe by itself: every call requires the owner's metadata mutex
// (Metadata::mu_). Tables are only ever read or changed under that mutex, so
// the cache hands out plain pointers that stay valid while the mutex is held.
//
// Bound: tables are evicted, least recently used first, while the entries held
// exceed the byte budget. A table that is loading, dirty or pinned (being
// written back) cannot be evicted, so the cache may exceed its budget by those;
// Metadata keeps dirty tables bounded by writing them back (see metadata.h).
#pragma once

#include <boost/intrusive/list.hpp>
#include <boost/intrusive/unordered_set.hpp>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <vector>

#include "status.h"

namespace qed {

namespace bi = boost::intrusive;
using LruHook = bi::list_member_hook<bi::link_mode<bi::auto_unlink>>;
using DirtyHook = bi::list_member_hook<bi::link_mode<bi::auto_unlink>>;
using IndexHook = bi::unordered_set_member_hook<>;

// Signalled once when a table finishes loading; shared so that waiters can
// outlive a table that failed to load and was dropped.
struct LoadLatch {
  std::condition_variable cv;
  bool done = false;
  Status status;
};

struct CachedTable {
  explicit CachedTable(uint64_t table_offset) : offset(table_offset) {}

  uint64_t offset;                  // file offset of the table: the key
  std::vector<uint64_t> entries;    // the entries that address the image
  std::shared_ptr<LoadLatch> latch; // non-null while loading
  std::vector<bool> dirty_sectors;  // 512-byte sectors changed since written
  uint64_t dirty_count = 0;         // set bits in dirty_sectors
  unsigned pins = 0;                // write-backs in progress

  bool loading() const { return latch != nullptr; }
  bool dirty() const { return dirty_count != 0; }
  bool evictable() const { return !loading() && !dirty() && pins == 0; }
  uint64_t bytes() const { return entries.size() * 8; }

  LruHook lru_hook;
  DirtyHook dirty_hook;
  IndexHook index_hook;
};

class L2Cache {
public:
  explicit L2Cache(uint64_t budget_bytes);
  ~L2Cache();
  L2Cache(const L2Cache &) = delete;
  L2Cache &operator=(const L2Cache &) = delete;

  // The table at `offset`, marked most recently used; null if absent.
  CachedTable *find(uint64_t offset);
  // Evicts to make room, then takes ownership of `table` (whose offset must
  // be absent). The returned table stays until the next call that evicts. If
  // it throws (std::bad_alloc), the table was not inserted.
  CachedTable *insert(std::unique_ptr<CachedTable> table);
  // Removes and frees `table`.
  void erase(CachedTable *table);
  // Call after a table's size changes (entries loaded) or it becomes clean.
  void account(CachedTable *table, uint64_t old_bytes);
  void evict_over_budget();

  // A buffer for `entries` entries, recycled from evicted tables when one is
  // spare: tables come and go all the time, and handing their memory back to
  // malloc lets per-thread arenas grow far past the budget.
  std::vector<uint64_t> take_buffer(uint64_t entries);

  uint64_t bytes() const { return bytes_; }
  size_t count() const { return index_.size(); }
  uint64_t budget() const { return budget_; }

private:
  struct KeyOf {
    using type = uint64_t;
    uint64_t operator()(const CachedTable &t) const { return t.offset; }
  };
  using Lru = bi::list<CachedTable, bi::member_hook<CachedTable, LruHook, &CachedTable::lru_hook>,
                       bi::constant_time_size<false>>;
  using Index =
      bi::unordered_set<CachedTable,
                        bi::member_hook<CachedTable, IndexHook, &CachedTable::index_hook>,
                        bi::key_of_value<KeyOf>, bi::power_2_buckets<true>>;

  // Grows the buckets (this may throw) before `entries` tables are held.
  void maybe_rehash(size_t entries);

  static constexpr size_t kMaxSpare = 8;

  const uint64_t budget_;
  uint64_t bytes_ = 0;
  std::vector<std::vector<uint64_t>> spare_;  // buffers of evicted tables
  Lru lru_;  // front: least recently used
  std::vector<Index::bucket_type> buckets_;
  Index index_;
};

}  // namespace qed
