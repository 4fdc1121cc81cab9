// The image's metadata in memory: the L1 table, the L2 cache, the end of the
// file, the allocations in flight and the changes not yet written back.
//
// Locking. mu_ guards every member below it (GUARDED_BY; methods that need
// it held say REQUIRES(mu_): clang checks both, see thread_annotations.h). It is held only for in-memory
// work, never across I/O: a table miss drops mu_ while the table is read (other
// requests for that table wait on its LoadLatch; requests for other tables go
// on), and callers do all data I/O without it. Lock order: Image::flush_mu_
// before mu_.
//
// Allocation. A write that needs clusters reserves them at the end of the file
// and registers an Inflight record for its virtual clusters in the intrusive
// set inflight_. Another request touching one of those clusters waits on that
// record only; requests for other clusters never wait. When the data is
// written, commit() points the L2 entries at it and wakes the waiters.
//
// Write-back. commit(), mark_zero() and new tables change metadata only in
// memory and mark the changed 512-byte sectors dirty; take_dirty() hands them
// to Image::flush(), which orders the writes (see the protocol at the top of
// image_write.cpp).
//
// Memory. The cache's budget (cache_budget(): the cache-size the user gave,
// or minimum_cache_bytes() if that is more) bounds every table in memory:
// clean, loading, dirty or being written back, with the copies write-backs
// make (see l2_cache.h for what each is charged). Before a table is loaded,
// created or dirtied, make_room() waits until the cache can hold it: for
// loads to finish, for a write-back to end, or it writes the changes back
// itself (write_back: Image's flush without its final sync) when they are
// what takes the room. Changes may hold at most half of the budget, so that reads always
// find room, even after a failed flush left changes that cannot be written.
//
// Leaked clusters. Clusters of an allocation that failed (abandon()) go back
// when they end the file: it is cut back to them. Otherwise something was
// reserved after them, and they are leaked clusters: space no entry points
// at, listed in leaked_ and freed when everything after them is freed too.
// Those left at close keep the image marked NEED_CHECK (Image::close): only
// the consistency check can reclaim them (check.h).
//
// Failures. Every method leaves the state as it was when it fails, whether by
// a Status or by an exception (std::bad_alloc): memory is allocated before
// anything changes, and reservations end on every path (Allocation).
#pragma once

#include <boost/intrusive/set.hpp>
#include <functional>
#include <memory>
#include <unordered_set>
#include <vector>

#include "lib/dirty_sectors.h"
#include "lib/file.h"
#include "lib/geometry.h"
#include "lib/l2_cache.h"
#include "lib/run.h"
#include "lib/table.h"
#include "lib/thread_annotations.h"

namespace qed {

// Clusters reserved for one allocating request, from plan_write() to commit()
// or abandon().
struct Inflight : bi::set_base_hook<>, std::enable_shared_from_this<Inflight> {
  Inflight(uint64_t first, uint64_t n) : first_cluster(first), count(n) {}
  uint64_t first_cluster;  // virtual cluster index
  uint64_t count;
  CondVar done_cv;    // waited on with Metadata::mu_
  bool done = false;  // guarded by Metadata::mu_
};

class Metadata;

// Clusters reserved for one allocating request, from plan_write() to commit().
// Move-only. Destroyed before commit() (an error, an exception), it abandons
// its clusters (Metadata::abandon: freed, or leaked clusters), so that no exit
// path leaves an in-flight record linked or waiters waiting.
class Allocation {
public:
  Allocation() = default;
  Allocation(Allocation &&other) noexcept { *this = std::move(other); }
  Allocation &operator=(Allocation &&other) noexcept;
  ~Allocation();

  uint64_t virtual_offset = 0;  // cluster aligned
  uint64_t clusters = 0;
  uint64_t host_offset = 0;     // first reserved cluster
  Run::Kind first_kind = Run::kUnallocated;  // what the first cluster held (kUnallocated or kZero)
  Run::Kind last_kind = Run::kUnallocated;   // what the last cluster held

private:
  friend class Metadata;
  Metadata *owner_ = nullptr;  // non-null while the reservation is pending
  std::shared_ptr<Inflight> record_;
};

// A plan for the start of a write: an in-place run or an allocation.
struct WritePlan {
  bool allocate = false;
  Run in_place{};          // when !allocate (kind kData)
  Allocation allocation;   // when allocate
};

// Byte runs to write back, ordered: tables first, then L1 (see image.h).
struct Writeback {
  struct Piece {
    uint64_t file_offset;
    const uint8_t *bytes;            // in `copies` or `l1_bytes`
    size_t count;
    CachedTable *table;              // null for L1 pieces
    uint64_t first_sector, sectors;  // to re-mark if the write fails
  };
  std::vector<Piece> tables;
  std::vector<Piece> l1;
  // The encoded entries: a buffer of the cache's pool for each table (given
  // back by finish_writeback()), and room for the whole L1 table.
  std::vector<TableBuffer> copies;
  std::vector<uint8_t> l1_bytes;
  uint64_t file_end = 0;  // the file must reach this before tables point into it
  // Clusters a failed allocation freed were cut off the file and are being
  // handed out again: that must be durable before an entry points into them,
  // or a crash could show the failed write's bytes there.
  bool sync_before_entries = false;
  bool empty() const { return tables.empty() && l1.empty(); }
};

struct InflightLess {
  bool operator()(const Inflight &a, const Inflight &b) const {
    return a.first_cluster < b.first_cluster;
  }
};

struct MetadataConfig {
  Geometry geometry;
  uint64_t l1_offset;
  uint64_t file_size;      // at open
  uint64_t cache_bytes;
  bool writable;
  bool lenient;            // invalid entries read as unallocated (dirty, read-only)
};

// The smallest cache budget an image of this geometry is served with: room
// for one changed table (the table and its copy) beside one table loading
// (the table and its reserve), at the size of its largest table. A smaller
// cache-size is raised to it (Image::cache_budget(); the front ends log it).
uint64_t minimum_cache_bytes(const Geometry &geometry);

// Writes every change back to the file, as a flush does (durable or not).
// Called without mu_ held.
using WriteBack = std::function<Status()>;

class Metadata {
public:
  // `l1` holds geometry.l1_entries_used() entries read from the file.
  // `write_back` is how make_room() gets changes out of memory.
  Metadata(File &file, const MetadataConfig &config, std::vector<uint64_t> l1,
           WriteBack write_back);
  ~Metadata();

  // The longest run at `pos` (at most `len` bytes) of one kind; data runs are
  // physically contiguous.
  Result<Run> lookup(uint64_t pos, uint64_t len);

  // Plans the start of a write at `pos` of `len` bytes.
  Result<WritePlan> plan_write(uint64_t pos, uint64_t len);
  // Plans the start of a copy from the backing file (copy-on-read, stream):
  // like plan_write(), but only clusters still unallocated are allocated, so
  // that base data never overwrites what a write (or zero) put there. A
  // cluster a write has in flight is waited for, then looked at again. When
  // the cluster at `pos` is data or a zero cluster, the plan is not to
  // allocate, and in_place.length is how many bytes of that kind to skip.
  Result<WritePlan> plan_copy(uint64_t pos, uint64_t len);
  // Points the L2 entries at the written clusters and wakes waiters. The
  // reservation ends either way.
  Status commit(Allocation &allocation);
  // Gives up an allocation and wakes waiters. Its clusters go back when they
  // are at the end of the file (the file is cut back to them, so that no byte
  // of the failed write can show through a later allocation); otherwise they
  // are leaked clusters (see above).
  void abandon(Allocation &allocation) noexcept;

  // Turns unallocated clusters at `pos` (cluster aligned) into zero clusters,
  // stopping at the first cluster that is data; returns the clusters handled
  // (zero clusters count as handled), at most `clusters`.
  Result<uint64_t> mark_zero(uint64_t pos, uint64_t clusters);

  // Hands the dirty sectors to a write-back. Strong guarantee: if it throws
  // (std::bad_alloc), nothing changed.
  Writeback take_dirty();
  // Ends a write-back: when it was not written, its sectors are dirty again.
  void finish_writeback(Writeback &writeback, bool written) noexcept;
  // Whether failed allocations left leaked clusters (see above).
  bool has_leaked_clusters();
  // What changes not yet written hold of the budget (L2Cache::held_by_changes).
  uint64_t changes_bytes();
  uint64_t file_end();
  // What the cache is charged now (L2Cache::bytes), and its budget.
  uint64_t cache_bytes();
  uint64_t cache_budget() const { return cache_budget_; }
  // The buffers the cache's pool has allocated: the most its tables and
  // their copies ever used at once, and their size.
  struct PoolUse {
    uint64_t buffers;
    uint64_t buffer_bytes;
  };
  PoolUse pool_use();

private:
  using InflightSet =
      bi::set<Inflight, bi::compare<InflightLess>, bi::constant_time_size<false>>;

  // Waits until the cache can hold `need` bytes more (within half of the
  // budget when `dirtying`), writing changes back when they take the room.
  // Returns whether mu_ was released meanwhile: tables may then have gone,
  // and the caller must look them up again.
  Result<bool> make_room(uint64_t need, bool dirtying) REQUIRES(mu_);
  // make_room() for dirtying `t` (nothing when it is dirty already).
  Result<bool> make_room_to_dirty(CachedTable *t) REQUIRES(mu_);
  // The table of L1 entry `l1_index` (null when the entry is empty), loaded
  // if need be. May release mu_ meanwhile (make_room, the read).
  Result<CachedTable *> get_table(uint64_t l1_index) REQUIRES(mu_);
  Result<CachedTable *> load_table(uint64_t l1_index, uint64_t table_offset) REQUIRES(mu_);
  CachedTable *create_table(uint64_t l1_index) REQUIRES(mu_);
  // The table covering `pos`, created if the L1 entry is empty.
  Result<CachedTable *> table_for_write(uint64_t pos) REQUIRES(mu_);
  Result<WritePlan> plan_allocation(uint64_t pos, uint64_t len, bool unallocated_only)
      EXCLUDES(mu_);
  // If an allocation owns `cluster`, waits for it and returns true.
  bool wait_for_inflight(uint64_t cluster) REQUIRES(mu_);
  void sanitize_loaded(CachedTable *table) REQUIRES(mu_);
  Status check_table_offset(uint64_t l1_index, uint64_t offset) const REQUIRES(mu_);
  enum class EntryKind { kUnallocated, kZero, kData, kInvalid };
  EntryKind classify(uint64_t entry) const REQUIRES(mu_);
  Status invalid_entry(uint64_t entry, uint64_t pos) const;
  void remove_inflight(Inflight &record) noexcept REQUIRES(mu_);
  // Frees the clusters of a failed allocation: the file is cut back to them
  // (and to leaked clusters that end where they start) when they end it;
  // otherwise they become leaked clusters.
  void free_clusters(uint64_t host_offset, uint64_t bytes) noexcept REQUIRES(mu_);
  // Lists leaked clusters (or counts them as unlisted, past kMaxLeaked or
  // without memory).
  void add_leaked(uint64_t host_offset, uint64_t bytes) noexcept REQUIRES(mu_);
  uint64_t image_clusters_from(uint64_t cluster) const;
  Result<Run> run_in_table(CachedTable *t, uint64_t pos, uint64_t len) REQUIRES(mu_);
  Run unallocated_run(uint64_t l1_index, uint64_t pos, uint64_t len) const REQUIRES(mu_);
  Inflight *find_inflight(uint64_t cluster) REQUIRES(mu_);
  uint64_t next_inflight_start(uint64_t cluster) REQUIRES(mu_);
  void set_entry(CachedTable *t, uint64_t index, uint64_t value) REQUIRES(mu_);
  void mark_l1_dirty(uint64_t index) REQUIRES(mu_);

  File &file_;
  const Geometry geo_;
  const uint64_t l1_offset_;
  const uint64_t open_file_size_;  // entries reaching past it are crash traces
  const bool writable_;
  const bool lenient_;
  const uint64_t cache_budget_;
  const WriteBack write_back_;

  // Guards every member below, and the state of what they hold: the cache's
  // tables (CachedTable), the in-flight records (Inflight::done) and the load
  // latches (LoadLatch::done, status), which the analysis cannot name.
  Mutex mu_;
  std::vector<uint64_t> l1_ GUARDED_BY(mu_);
  DirtySectors l1_dirty_sectors_ GUARDED_BY(mu_);
  L2Cache cache_ GUARDED_BY(mu_);
  // cache_'s pool, which locks itself: pool_use() reads it without mu_.
  TablePool &pool_;
  // Signalled whenever the cache holds less: a load ended, a write-back ended.
  CondVar room_cv_;  // waited on with mu_
  bi::list<CachedTable,
           bi::member_hook<CachedTable, DirtyHook, &CachedTable::dirty_hook>,
           bi::constant_time_size<false>>
      dirty_tables_ GUARDED_BY(mu_);
  uint64_t file_end_ GUARDED_BY(mu_);  // next cluster to allocate
  InflightSet inflight_ GUARDED_BY(mu_);
  // Tables written by this process; their entries past open_file_size_ are
  // ours, while such entries in older tables are traces of a crash.
  std::unordered_set<uint64_t> session_tables_ GUARDED_BY(mu_);
  // Leaked clusters (offset, bytes), see above. Under a run of failures from
  // several threads at once (a full disk), each failure may find another's
  // reservation after it, so the list grows with the failures in flight and
  // shrinks when the last of them goes. Past kMaxLeaked, further ones are
  // only counted as unlisted: they stay leaked until a check.
  static constexpr size_t kMaxLeaked = size_t(1) << 20;
  static constexpr size_t kLeakedReserved = 64;
  std::vector<std::pair<uint64_t, uint64_t>> leaked_ GUARDED_BY(mu_);
  bool leaked_unlisted_ GUARDED_BY(mu_) = false;
  bool cut_back_since_writeback_ GUARDED_BY(mu_) = false;
};

}  // namespace qed
