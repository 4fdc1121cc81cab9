// A bounded LRU cache of L2 tables, keyed by the table's file offset, and the
// account of the memory they take.
//
// Not thread-safe by itself: every call requires the owner's metadata mutex
// (Metadata::mu_). Tables are only ever read or changed under that mutex, so
// the cache hands out plain pointers that stay valid while the mutex is held.
//
// Memory. Every table is charged its charge (charge_for(): its entries, its
// dirty map and its bookkeeping) from insert() to erase(), whatever its state.
// On top of that it is charged a reserve of the same size
//   - while it is dirty: the copy of its entries that the next write-back
//     will make (Metadata::take_dirty),
//   - while it is being written back: that copy, which exists then,
//   - while it is loading: what it may become once loaded (a writable image
//     drops entries a crash left behind, which makes the table dirty).
// bytes() is the sum of all that: it is never below the memory the tables
// and their copies take. held() is the part that cannot be evicted:
// everything but clean, idle tables. Clean, idle tables go, least recently
// used first, while bytes() exceeds the budget; so as long as held() stays
// within the budget, which is what the owner makes sure of before it loads,
// creates or dirties a table (Metadata::make_room), bytes() does too. Tables
// and copies live in buffers of one pool (table_pool.h), which therefore
// never holds more than the budget's worth of them either.
//
// A table's state (loading, dirty, pins) changes only inside update(), which
// keeps the charges exact.
#pragma once

#include <boost/intrusive/list.hpp>
#include <boost/intrusive/unordered_set.hpp>
#include <cstdint>
#include <memory>
#include <vector>

#include "lib/dirty_sectors.h"
#include "lib/status.h"
#include "lib/table_pool.h"
#include "lib/thread_annotations.h"

namespace qed {

namespace bi = boost::intrusive;
using LruHook = bi::list_member_hook<bi::link_mode<bi::auto_unlink>>;
using DirtyHook = bi::list_member_hook<bi::link_mode<bi::auto_unlink>>;
using IndexHook = bi::unordered_set_member_hook<>;

// Signalled once when a table finishes loading; shared so that waiters can
// outlive a table that failed to load and was dropped.
// Guarded by the owner's Metadata::mu_, which cv is waited on with.
struct LoadLatch {
  CondVar cv;
  bool done = false;
  Status status;
};

struct CachedTable {
  explicit CachedTable(uint64_t table_offset) : offset(table_offset) {}

  uint64_t offset;                  // file offset of the table: the key
  TableBuffer entries;              // the entries that address the image
  std::shared_ptr<LoadLatch> latch; // non-null while loading
  DirtySectors dirty_sectors;       // sectors changed since written
  unsigned pins = 0;                // pieces of a write-back in progress
  uint64_t charge = 0;              // set by L2Cache::insert (see above)

  bool loading() const { return latch != nullptr; }
  bool dirty() const { return dirty_sectors.any(); }
  bool evictable() const { return !loading() && !dirty() && pins == 0; }

  LruHook lru_hook;
  DirtyHook dirty_hook;
  IndexHook index_hook;
};

class L2Cache {
public:
  // Tables of at most `table_entries` entries, within `budget_bytes`.
  L2Cache(uint64_t budget_bytes, uint64_t table_entries);
  ~L2Cache();
  L2Cache(const L2Cache &) = delete;
  L2Cache &operator=(const L2Cache &) = delete;

  // What a table is charged whose buffer holds `entries` entries, and what
  // each of this cache's tables is (a whole buffer of the pool, whatever
  // part of it the table uses).
  static uint64_t charge_for(uint64_t entries);
  uint64_t table_charge() const { return charge_for(pool_.entries()); }

  // The table at `offset`, marked most recently used; null if absent.
  CachedTable *find(uint64_t offset);
  // Takes ownership of `table` (whose offset must be absent; its entries
  // from take_buffer()), charges it, and evicts others to make room. The returned table stays until the next call that evicts. If it
  // throws (std::bad_alloc), the table was not inserted.
  CachedTable *insert(std::unique_ptr<CachedTable> table);
  // Removes and frees `table`; its buffer goes back to the pool.
  void erase(CachedTable *table);
  // Runs `change` on the table's state (loading, dirty, pins) and charges the
  // difference; evicts if that made the cache go over its budget. `change`
  // must not throw.
  template <typename Change>
  void update(CachedTable *t, Change &&change) noexcept {
    const Weight before = weigh(*t);
    change();
    reweigh(before, weigh(*t));
  }
  void evict_over_budget();

  // A buffer for a table of `entries` entries, after evicting what must go
  // to make room for it. If it throws (std::bad_alloc), nothing changed but
  // evictions.
  TableBuffer take_buffer(uint64_t entries);
  // The pool, for the copies write-backs make (covered by the reserves).
  TablePool &pool() { return pool_; }

  // What the tables would hold more if `t` became dirty now (0 if it is).
  uint64_t cost_to_dirty(const CachedTable &t) const;

  uint64_t bytes() const { return bytes_; }
  uint64_t held() const { return held_; }
  // The part of held() that dirty tables and tables being written back hold.
  uint64_t held_by_changes() const { return held_by_changes_; }
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

  // What one table adds to bytes() beyond its charge, to held() and to
  // held_by_changes().
  struct Weight {
    uint64_t reserve = 0, held = 0, changes = 0;
  };
  static Weight weigh(const CachedTable &t);
  void reweigh(const Weight &before, const Weight &after) noexcept;
  // Evicts the least recently used clean table; false if there is none.
  bool evict_one();
  // Grows the buckets (this may throw) before `entries` tables are held.
  void maybe_rehash(size_t entries);

  const uint64_t budget_;
  uint64_t bytes_ = 0;            // see "Memory" above
  uint64_t held_ = 0;
  uint64_t held_by_changes_ = 0;
  TablePool pool_;  // before the tables: it outlives them
  Lru lru_;  // front: least recently used
  std::vector<Index::bucket_type> buckets_;
  Index index_;
};

}  // namespace qed
