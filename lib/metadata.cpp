// Metadata: construction, lookup, and loading and creating tables within the
// cache's budget. Allocation is in metadata_alloc.cpp, write-back in
// metadata_writeback.cpp; the class and its locking are described in
// metadata.h.
#include "lib/metadata.h"

#include <algorithm>
#include <utility>

#include "lib/align.h"

namespace qed {

uint64_t minimum_cache_bytes(const Geometry &geo) {
  // The first table is the largest: only the last one can be shorter.
  return 4 * L2Cache::charge_for(std::max<uint64_t>(geo.l2_entries_used(0), 1));
}

Metadata::Metadata(File &file, const MetadataConfig &c, std::vector<uint64_t> l1,
                   WriteBack write_back)
    : file_(file),
      geo_(c.geometry),
      l1_offset_(c.l1_offset),
      open_file_size_(c.file_size),
      writable_(c.writable),
      lenient_(c.lenient),
      cache_budget_(std::max(c.cache_bytes, minimum_cache_bytes(c.geometry))),
      write_back_(std::move(write_back)),
      l1_(std::move(l1)),
      l1_dirty_sectors_(l1_.size()),
      cache_(cache_budget_, geo_.l2_entries_used(0)),
      pool_(cache_.pool()),
      file_end_(std::max({round_up(c.file_size, geo_.cluster_size()), geo_.header_bytes(),
                          c.l1_offset + geo_.table_bytes()})) {
  leaked_.reserve(kLeakedReserved);
  // An L1 entry whose table does not fit in the file is the trace of an
  // interrupted write: treat it as no table (and drop it at the next flush),
  // so that the space it names can never be handed out twice.
  for (uint64_t i = 0; i < l1_.size(); i++) {
    const uint64_t off = l1_[i];
    if (off != 0 && (off > open_file_size_ || geo_.table_bytes() > open_file_size_ - off)) {
      l1_[i] = 0;
      if (writable_)
        mark_l1_dirty(i);
    }
  }
}

Metadata::~Metadata() { inflight_.clear(); }

Metadata::EntryKind Metadata::classify(uint64_t e) const {
  if (e == kEntryUnallocated)
    return EntryKind::kUnallocated;
  if (e == kEntryZero)
    return EntryKind::kZero;
  const uint64_t cs = geo_.cluster_size();
  if (!geo_.is_cluster_aligned(e) || e < geo_.header_bytes() ||
      (e >= l1_offset_ && e - l1_offset_ < geo_.table_bytes()))
    return lenient_ ? EntryKind::kUnallocated : EntryKind::kInvalid;
  if (e > file_end_ - cs)  // past the end of the file: reads as unallocated
    return EntryKind::kUnallocated;
  return EntryKind::kData;
}

Status Metadata::invalid_entry(uint64_t e, uint64_t pos) const {
  return Status::corruption("L2 entry for virtual offset " + std::to_string(pos) +
                            " holds invalid cluster offset " + std::to_string(e) +
                            " (misaligned, or inside the header or L1 table)");
}

Status Metadata::check_table_offset(uint64_t l1_index, uint64_t off) const {
  const uint64_t tb = geo_.table_bytes();
  if (!geo_.is_cluster_aligned(off) || off < geo_.header_bytes() ||
      (off < l1_offset_ + tb && l1_offset_ < off + tb) || off > file_end_ - tb)
    return Status::corruption("L1 entry " + std::to_string(l1_index) +
                              " holds invalid L2 table offset " + std::to_string(off));
  return Status::ok();
}

Result<bool> Metadata::make_room(uint64_t need, bool dirtying) {
  // The budget is at least minimum_cache_bytes(), so whatever one request
  // needs fits once nothing else is held: each wait below ends.
  bool released = false;
  for (;;) {
    const uint64_t budget = cache_.budget();
    if (cache_.held() + need <= budget &&
        (!dirtying || cache_.held_by_changes() + need <= budget / 2))
      return released;
    released = true;
    if (!dirty_tables_.empty()) {
      // Changes take the room: write them back (after a write-back in
      // progress, which write_back_ waits for).
      Status s;
      {
        MutexUnlock unlocked(mu_);
        s = write_back_();
      }
      if (!s.is_ok())
        return s;
      continue;
    }
    // Loads and a write-back in progress take it: they end on their own.
    room_cv_.wait(mu_);
  }
}

Result<bool> Metadata::make_room_to_dirty(CachedTable *t) {
  const uint64_t need = cache_.cost_to_dirty(*t);
  if (need == 0)
    return false;
  return make_room(need, true);
}

Result<CachedTable *> Metadata::get_table(uint64_t l1_index) {
  for (;;) {
    const uint64_t off = l1_[l1_index];
    if (off == 0)
      return static_cast<CachedTable *>(nullptr);
    QED_RETURN_IF_ERROR(check_table_offset(l1_index, off));
    CachedTable *t = cache_.find(off);
    if (!t) {
      // A loading table is charged twice its size (l2_cache.h).
      auto released = make_room(2 * cache_.table_charge(), false);
      if (!released)
        return released.status();
      if (*released)
        continue;  // another request may have loaded it meanwhile
      return load_table(l1_index, off);
    }
    if (!t->loading()) {
      // Tables are cached by offset, with the entries of the span that loaded
      // them: one named by two L1 entries (corruption the check repairs) may
      // hold fewer entries than this span uses.
      if (t->entries.size() < geo_.l2_entries_used(l1_index))
        return Status::corruption("L1 entry " + std::to_string(l1_index) +
                                  " names the L2 table at offset " + std::to_string(off) +
                                  ", which another L1 entry uses");
      return t;
    }
    // Another request is reading this table: wait for it, not for others.
    std::shared_ptr<LoadLatch> latch = t->latch;
    while (!latch->done)
      latch->cv.wait(mu_);
    if (!latch->status.is_ok())
      return latch->status;
  }
}

Result<CachedTable *> Metadata::load_table(uint64_t l1_index, uint64_t off) {
  // Everything that allocates comes before the table is visible in the cache.
  const uint64_t entries = geo_.l2_entries_used(l1_index);
  auto fresh = std::make_unique<CachedTable>(off);
  std::shared_ptr<LoadLatch> latch = std::make_shared<LoadLatch>();
  fresh->dirty_sectors = DirtySectors(entries);
  fresh->entries = cache_.take_buffer(entries);
  fresh->latch = latch;
  CachedTable *t = cache_.insert(std::move(fresh));

  // While it loads, only this thread touches its entries: others wait on the
  // latch, and a loading table is never evicted.
  Status s;
  {
    MutexUnlock unlocked(mu_);
    s = read_table_entries(file_, off, t->entries.span());
  }

  latch->done = true;
  latch->status = s;
  if (!s.is_ok()) {
    cache_.erase(t);
  } else {
    cache_.update(t, [&] { t->latch.reset(); });
    sanitize_loaded(t);  // covered by the reserve the load held
  }
  latch->cv.notify_all();
  room_cv_.notify_all();
  if (!s.is_ok())
    return s;
  return t;
}

void Metadata::sanitize_loaded(CachedTable *t) {
  if (session_tables_.count(t->offset))
    return;
  const uint64_t cs = geo_.cluster_size();
  for (uint64_t i = 0; i < t->entries.size(); i++) {
    const uint64_t e = t->entries[i];
    // A cluster reaching past the file size at open was never written:
    // forget it before the space is reused for something else.
    if (e > kEntryZero && (e > open_file_size_ || cs > open_file_size_ - e)) {
      if (writable_)
        set_entry(t, i, kEntryUnallocated);
      else
        t->entries[i] = kEntryUnallocated;
    }
  }
}

CachedTable *Metadata::create_table(uint64_t l1_index) {
  const uint64_t off = file_end_;
  // Everything that allocates comes before anything changes.
  auto table = std::make_unique<CachedTable>(off);
  table->dirty_sectors = DirtySectors(geo_.l2_entries_used(l1_index));
  table->entries = cache_.take_buffer(geo_.l2_entries_used(l1_index));
  std::fill(table->entries.begin(), table->entries.end(), kEntryUnallocated);
  session_tables_.insert(off);
  CachedTable *t = cache_.insert(std::move(table));
  // The reserved space reads as zeroes, so the table needs no write until an
  // entry changes; flush extends the file over it before L1 points at it.
  file_end_ += geo_.table_bytes();
  l1_[l1_index] = off;
  mark_l1_dirty(l1_index);
  return t;
}

Run Metadata::unallocated_run(uint64_t l1_index, uint64_t pos, uint64_t len) const {
  // Runs of empty L1 entries are merged, so a sparse image maps in a few steps.
  uint64_t end = geo_.l2_span_start(l1_index) + geo_.l2_span_bytes();
  uint64_t next = l1_index + 1;
  while (end - pos < len && next < l1_.size() && l1_[next] == 0) {
    end += geo_.l2_span_bytes();
    next++;
  }
  return Run{Run::kUnallocated, std::min(len, end - pos), 0};
}

Result<Run> Metadata::run_in_table(CachedTable *t, uint64_t pos, uint64_t len) {
  const uint64_t cs = geo_.cluster_size();
  const uint64_t first = geo_.l2_index(pos);
  const uint64_t in_cluster = geo_.offset_in_cluster(pos);
  const uint64_t span_left = geo_.l2_span_start(geo_.l1_index(pos)) + geo_.l2_span_bytes() - pos;
  len = std::min(len, span_left);
  const uint64_t want = std::min<uint64_t>(geo_.clusters_for(in_cluster + len),
                                           t->entries.size() - first);
  const uint64_t e0 = t->entries[first];
  const EntryKind kind = classify(e0);
  if (kind == EntryKind::kInvalid)
    return invalid_entry(e0, pos);
  uint64_t n = 1;
  while (n < want) {
    const uint64_t e = t->entries[first + n];
    if (classify(e) != kind || (kind == EntryKind::kData && e != e0 + n * cs))
      break;
    n++;
  }
  Run run;
  run.kind = kind == EntryKind::kData ? Run::kData
             : kind == EntryKind::kZero ? Run::kZero
                                        : Run::kUnallocated;
  run.length = std::min(len, n * cs - in_cluster);
  run.host_offset = kind == EntryKind::kData ? e0 + in_cluster : 0;
  return run;
}

Result<Run> Metadata::lookup(uint64_t pos, uint64_t len) {
  MutexLock lock(mu_);
  const uint64_t l1_index = geo_.l1_index(pos);
  auto t = get_table(l1_index);
  if (!t)
    return t.status();
  if (*t == nullptr)
    return unallocated_run(l1_index, pos, len);
  return run_in_table(*t, pos, len);
}

uint64_t Metadata::changes_bytes() {
  MutexLock lock(mu_);
  return cache_.held_by_changes();
}

uint64_t Metadata::file_end() {
  MutexLock lock(mu_);
  return file_end_;
}

uint64_t Metadata::cache_bytes() {
  MutexLock lock(mu_);
  return cache_.bytes();
}

Metadata::PoolUse Metadata::pool_use() {
  return {pool_.allocated(), pool_.buffer_bytes()};  // the pool locks itself
}

}  // namespace qed
