#include "metadata.h"

#include <algorithm>
#include <utility>

#include "align.h"
#include "byte_order.h"

namespace qed {

namespace {

struct ClusterKeyLess {
  bool operator()(uint64_t key, const Inflight &r) const { return key < r.first_cluster; }
  bool operator()(const Inflight &r, uint64_t key) const { return r.first_cluster < key; }
};

uint64_t sectors_for(uint64_t entries) {
  return div_round_up(entries, kEntriesPerSector);
}

// Failed allocations remembered below the end of the file. They go back as
// soon as everything above them has; under a run of failures from several
// threads at once (a full disk), each failure may find another's reservation
// above it, so the list grows with the failures in flight and shrinks when
// the last of them goes. Past this many, further ones are only counted.
constexpr size_t kMaxAbandoned = size_t(1) << 20;
constexpr size_t kAbandonedReserved = 64;

}  // namespace

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
      l1_dirty_sectors_(sectors_for(l1_.size())),
      cache_(cache_budget_, geo_.l2_entries_used(0)),
      file_end_(std::max({round_up(c.file_size, geo_.cluster_size()), geo_.header_bytes(),
                          c.l1_offset + geo_.table_bytes()})) {
  abandoned_.reserve(kAbandonedReserved);
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

Allocation &Allocation::operator=(Allocation &&other) noexcept {
  if (this != &other) {
    if (owner_)
      owner_->abandon(*this);
    virtual_offset = other.virtual_offset;
    clusters = other.clusters;
    host_offset = other.host_offset;
    first_kind = other.first_kind;
    last_kind = other.last_kind;
    owner_ = std::exchange(other.owner_, nullptr);
    record_ = std::move(other.record_);
  }
  return *this;
}

Allocation::~Allocation() {
  if (owner_)
    owner_->abandon(*this);
}

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

uint64_t Metadata::image_clusters_from(uint64_t cluster) const {
  const uint64_t total = geo_.clusters_for(geo_.image_size());
  return cluster < total ? total - cluster : 0;
}

Result<bool> Metadata::make_room(std::unique_lock<std::mutex> &lock, uint64_t need,
                                 bool dirtying) {
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
      lock.unlock();
      Status s = write_back_();
      lock.lock();
      if (!s.is_ok())
        return s;
      continue;
    }
    // Loads and a write-back in progress take it: they end on their own.
    room_cv_.wait(lock);
  }
}

Result<bool> Metadata::make_room_to_dirty(std::unique_lock<std::mutex> &lock, CachedTable *t) {
  const uint64_t need = cache_.cost_to_dirty(*t);
  if (need == 0)
    return false;
  return make_room(lock, need, true);
}

Result<CachedTable *> Metadata::get_table(std::unique_lock<std::mutex> &lock,
                                          uint64_t l1_index) {
  for (;;) {
    const uint64_t off = l1_[l1_index];
    if (off == 0)
      return static_cast<CachedTable *>(nullptr);
    QED_RETURN_IF_ERROR(check_table_offset(l1_index, off));
    CachedTable *t = cache_.find(off);
    if (!t) {
      // A loading table is charged twice its size (l2_cache.h).
      auto released = make_room(lock, 2 * cache_.table_charge(), false);
      if (!released)
        return released.status();
      if (*released)
        continue;  // another request may have loaded it meanwhile
      return load_table(lock, l1_index, off);
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
    latch->cv.wait(lock, [&] { return latch->done; });
    if (!latch->status.is_ok())
      return latch->status;
  }
}

Result<CachedTable *> Metadata::load_table(std::unique_lock<std::mutex> &lock,
                                           uint64_t l1_index, uint64_t off) {
  // Everything that allocates comes before the table is visible in the cache.
  const uint64_t entries = geo_.l2_entries_used(l1_index);
  auto fresh = std::make_unique<CachedTable>(off);
  std::shared_ptr<LoadLatch> latch = std::make_shared<LoadLatch>();
  fresh->dirty_sectors.assign(sectors_for(entries), false);
  fresh->entries = cache_.take_buffer(entries);
  fresh->latch = latch;
  CachedTable *t = cache_.insert(std::move(fresh));

  // While it loads, only this thread touches its entries: others wait on the
  // latch, and a loading table is never evicted.
  lock.unlock();
  Status s = read_table_entries(file_, off, t->entries.span());
  lock.lock();

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
  table->dirty_sectors.assign(sectors_for(geo_.l2_entries_used(l1_index)), false);
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

void Metadata::set_entry(CachedTable *t, uint64_t index, uint64_t value) {
  t->entries[index] = value;
  const uint64_t sector = index / kEntriesPerSector;
  if (!t->dirty_sectors[sector]) {
    cache_.update(t, [&] {
      t->dirty_sectors[sector] = true;
      t->dirty_count++;
    });
  }
  if (!t->dirty_hook.is_linked())
    dirty_tables_.push_back(*t);
}

void Metadata::mark_l1_dirty(uint64_t index) {
  l1_dirty_sectors_[index / kEntriesPerSector] = true;
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
  std::unique_lock lock(mu_);
  const uint64_t l1_index = geo_.l1_index(pos);
  auto t = get_table(lock, l1_index);
  if (!t)
    return t.status();
  if (*t == nullptr)
    return unallocated_run(l1_index, pos, len);
  return run_in_table(*t, pos, len);
}

Inflight *Metadata::find_inflight(uint64_t cluster) {
  auto it = inflight_.upper_bound(cluster, ClusterKeyLess());
  if (it == inflight_.begin())
    return nullptr;
  --it;
  return cluster - it->first_cluster < it->count ? &*it : nullptr;
}

uint64_t Metadata::next_inflight_start(uint64_t cluster) {
  auto it = inflight_.upper_bound(cluster, ClusterKeyLess());
  return it == inflight_.end() ? UINT64_MAX : it->first_cluster;
}

void Metadata::remove_inflight(Inflight &record) noexcept {
  if (record.is_linked())
    inflight_.erase(inflight_.iterator_to(record));
  record.done = true;
  record.done_cv.notify_all();
}

Result<CachedTable *> Metadata::table_for_write(std::unique_lock<std::mutex> &lock,
                                                uint64_t pos) {
  if (!writable_)
    return Status::read_only(file_.name() + ": image is open read-only");
  const uint64_t l1_index = geo_.l1_index(pos);
  for (;;) {
    auto got = get_table(lock, l1_index);
    if (!got)
      return got.status();
    if (*got)
      return *got;
    auto released = make_room(lock, cache_.table_charge(), false);
    if (!released)
      return released.status();
    if (!*released)
      return create_table(l1_index);
    // Another request may have created it meanwhile: look again.
  }
}

bool Metadata::wait_for_inflight(std::unique_lock<std::mutex> &lock, uint64_t cluster) {
  Inflight *busy = find_inflight(cluster);
  if (!busy)
    return false;
  // Wait for that allocation only; afterwards the caller must look again,
  // since the tables may have changed (or been evicted) meanwhile.
  std::shared_ptr<Inflight> keep = busy->shared_from_this();
  keep->done_cv.wait(lock, [&] { return keep->done; });
  return true;
}

Result<WritePlan> Metadata::plan_write(uint64_t pos, uint64_t len) {
  return plan_allocation(pos, len, false);
}

Result<WritePlan> Metadata::plan_copy(uint64_t pos, uint64_t len) {
  return plan_allocation(pos, len, true);
}

Result<WritePlan> Metadata::plan_allocation(uint64_t pos, uint64_t len, bool unallocated_only) {
  std::unique_lock lock(mu_);
  for (;;) {
    auto got = table_for_write(lock, pos);
    if (!got)
      return got.status();
    CachedTable *t = *got;
    const uint64_t first = geo_.l2_index(pos);
    const EntryKind kind = classify(t->entries[first]);
    if (kind == EntryKind::kInvalid)
      return invalid_entry(t->entries[first], pos);
    if (kind == EntryKind::kData) {
      auto run = run_in_table(t, pos, len);
      if (!run)
        return run.status();
      return WritePlan{false, *run, {}};
    }
    const uint64_t cluster = pos >> geo_.cluster_bits();
    if (wait_for_inflight(lock, cluster))
      continue;
    if (unallocated_only && kind == EntryKind::kZero) {
      // A zero cluster is newer than the backing data: skip it.
      auto run = run_in_table(t, pos, len);
      if (!run)
        return run.status();
      return WritePlan{false, *run, {}};
    }
    const uint64_t want = std::min({geo_.clusters_for(geo_.offset_in_cluster(pos) + len),
                                    uint64_t(t->entries.size() - first),
                                    image_clusters_from(cluster),
                                    next_inflight_start(cluster) - cluster});
    uint64_t n = 1;
    EntryKind last = kind;
    while (n < want) {
      const EntryKind k = classify(t->entries[first + n]);
      if (k == EntryKind::kData || k == EntryKind::kInvalid ||
          (unallocated_only && k != EntryKind::kUnallocated))
        break;
      last = k;
      n++;
    }
    WritePlan plan;
    plan.allocate = true;
    Allocation &a = plan.allocation;
    a.record_ = std::make_shared<Inflight>(cluster, n);  // the only allocation
    a.virtual_offset = cluster << geo_.cluster_bits();
    a.clusters = n;
    a.host_offset = file_end_;
    a.first_kind = kind == EntryKind::kZero ? Run::kZero : Run::kUnallocated;
    a.last_kind = last == EntryKind::kZero ? Run::kZero : Run::kUnallocated;
    file_end_ += n * geo_.cluster_size();
    inflight_.insert(*a.record_);
    a.owner_ = this;  // from here on, the reservation ends on every path
    return plan;
  }
}

Status Metadata::commit(Allocation &a) {
  std::unique_lock lock(mu_);
  CachedTable *t;
  for (;;) {
    // The table may have been evicted meanwhile: reloading it, or making room
    // to change it, can fail (or throw); the Allocation then still gives the
    // clusters back.
    auto got = get_table(lock, geo_.l1_index(a.virtual_offset));
    if (!got)
      return got.status();
    if (*got == nullptr)
      return Status::corruption("L2 table vanished during an allocation");
    auto released = make_room_to_dirty(lock, *got);
    if (!released)
      return released.status();
    if (!*released) {
      t = *got;
      break;
    }
  }
  const uint64_t first = geo_.l2_index(a.virtual_offset);
  for (uint64_t i = 0; i < a.clusters; i++)
    set_entry(t, first + i, a.host_offset + i * geo_.cluster_size());
  cache_.evict_over_budget();  // for the copy it now reserves
  remove_inflight(*a.record_);
  a.owner_ = nullptr;
  return Status::ok();
}

void Metadata::abandon(Allocation &a) noexcept {
  std::lock_guard lock(mu_);
  remove_inflight(*a.record_);
  a.owner_ = nullptr;
  give_back(a.host_offset, a.clusters * geo_.cluster_size());
}

void Metadata::give_back(uint64_t host, uint64_t bytes) noexcept {
  if (host + bytes != file_end_) {
    // Something was reserved after it: remember it, in case that goes too.
    remember_leak(host, bytes);
    return;
  }
  uint64_t end = host;
  for (bool found = true; found;) {
    found = false;
    for (size_t i = 0; i < abandoned_.size(); i++) {
      if (abandoned_[i].first + abandoned_[i].second == end) {
        end = abandoned_[i].first;
        abandoned_[i] = abandoned_.back();
        abandoned_.pop_back();
        found = true;
        break;
      }
    }
  }
  // The failed write may have left bytes there, and the next allocation
  // there may not cover the whole cluster: cut them off first. This is I/O
  // under mu_, on a rare path; nothing can be reserved past `end` meanwhile.
  try {
    auto size = file_.size();
    if (!size || (*size > end && !file_.truncate(end).is_ok())) {
      remember_leak(end, file_end_ - end);
      return;
    }
  } catch (...) {  // a message that could not be built: keep it as a leak
    interior_leak_overflow_ = true;
    return;
  }
  file_end_ = end;
  cut_back_since_writeback_ = true;
}

void Metadata::remember_leak(uint64_t host, uint64_t bytes) noexcept {
  try {
    if (abandoned_.size() < kMaxAbandoned) {
      abandoned_.emplace_back(host, bytes);
      return;
    }
  } catch (...) {  // no memory for it: the check will find the leak
  }
  interior_leak_overflow_ = true;
}

bool Metadata::has_interior_leaks() {
  std::lock_guard lock(mu_);
  return !abandoned_.empty() || interior_leak_overflow_;
}

Result<uint64_t> Metadata::mark_zero(uint64_t pos, uint64_t clusters) {
  std::unique_lock lock(mu_);
  for (;;) {
    auto got = table_for_write(lock, pos);
    if (!got)
      return got.status();
    CachedTable *t = *got;
    const uint64_t first = geo_.l2_index(pos);
    const uint64_t cluster = pos >> geo_.cluster_bits();
    if (wait_for_inflight(lock, cluster))
      continue;
    auto released = make_room_to_dirty(lock, t);
    if (!released)
      return released.status();
    if (*released)
      continue;
    const uint64_t want = std::min({clusters, uint64_t(t->entries.size() - first),
                                    next_inflight_start(cluster) - cluster});
    uint64_t n = 0;
    for (; n < want; n++) {
      const EntryKind k = classify(t->entries[first + n]);
      if (k == EntryKind::kData || k == EntryKind::kInvalid)
        break;
      if (t->entries[first + n] != kEntryZero)
        set_entry(t, first + n, kEntryZero);
    }
    cache_.evict_over_budget();  // for the copy it may now reserve
    return n;
  }
}

namespace {

// Appends a piece for each run of set bits in `dirty` (512-byte sectors of
// `entries`, a table at `table_offset`), encoding the entries at `out`, which
// has room for all of them. Returns the end of what it encoded.
uint8_t *encode_dirty_runs(const std::vector<bool> &dirty, std::span<const uint64_t> entries,
                           uint64_t table_offset, CachedTable *table, uint8_t *out,
                           std::vector<Writeback::Piece> &pieces) {
  const uint64_t sectors = dirty.size();
  for (uint64_t s = 0; s < sectors;) {
    if (!dirty[s]) {
      s++;
      continue;
    }
    uint64_t e = s;
    while (e < sectors && dirty[e])
      e++;
    const uint64_t first = s * kEntriesPerSector;
    const uint64_t count =
        std::min<uint64_t>((e - s) * kEntriesPerSector, entries.size() - first);
    for (uint64_t i = 0; i < count; i++)
      store_le64(out + i * 8, entries[first + i]);
    pieces.push_back({table_offset + first * 8, out, count * 8, table, s, e - s});
    out += count * 8;
    s = e;
  }
  return out;
}

}  // namespace

Writeback Metadata::take_dirty() {
  std::lock_guard lock(mu_);
  Writeback w;
  // First encode everything (this allocates and may throw); only then change
  // any state, with operations that cannot fail. Each table's copy takes a
  // buffer of the cache's pool, which the table's reserve covers (l2_cache.h).
  for (CachedTable &t : dirty_tables_) {
    session_tables_.insert(t.offset);
    w.copies.push_back(cache_.pool().take(t.entries.size()));
    auto *out = reinterpret_cast<uint8_t *>(w.copies.back().data());
    encode_dirty_runs(t.dirty_sectors, t.entries.span(), t.offset, &t, out, w.tables);
  }
  w.l1_bytes.resize(512 * uint64_t(std::count(l1_dirty_sectors_.begin(), l1_dirty_sectors_.end(), true)));
  encode_dirty_runs(l1_dirty_sectors_, l1_, l1_offset_, nullptr, w.l1_bytes.data(), w.l1);
  // Nothing below allocates. Each table's reserve now covers its copy.
  for (Writeback::Piece &p : w.tables) {
    cache_.update(p.table, [&] {
      for (uint64_t s = p.first_sector; s < p.first_sector + p.sectors; s++)
        p.table->dirty_sectors[s] = false;
      p.table->dirty_count = 0;
      p.table->pins++;
    });
  }
  dirty_tables_.clear();
  for (Writeback::Piece &p : w.l1)
    for (uint64_t s = p.first_sector; s < p.first_sector + p.sectors; s++)
      l1_dirty_sectors_[s] = false;
  w.file_end = file_end_;
  w.sync_before_entries = cut_back_since_writeback_;
  cut_back_since_writeback_ = false;
  return w;
}

void Metadata::finish_writeback(Writeback &w, bool written) noexcept {
  std::lock_guard lock(mu_);
  if (!written && w.sync_before_entries)
    cut_back_since_writeback_ = true;
  // A table written back gives its reserve back. One that was not is dirty
  // again, with the same charge: its reserve is for the next copy.
  for (Writeback::Piece &p : w.tables) {
    CachedTable *t = p.table;
    cache_.update(t, [&] {
      t->pins--;
      if (written)
        return;
      for (uint64_t s = p.first_sector; s < p.first_sector + p.sectors; s++) {
        if (!t->dirty_sectors[s]) {
          t->dirty_sectors[s] = true;
          t->dirty_count++;
        }
      }
    });
    if (!written && !t->dirty_hook.is_linked())
      dirty_tables_.push_back(*t);
  }
  if (!written)
    for (Writeback::Piece &p : w.l1)
      for (uint64_t s = p.first_sector; s < p.first_sector + p.sectors; s++)
        l1_dirty_sectors_[s] = true;
  // The copies go back to the pool as their reserves end.
  w.copies.clear();
  room_cv_.notify_all();
  cache_.evict_over_budget();
}

uint64_t Metadata::changes_bytes() {
  std::lock_guard lock(mu_);
  return cache_.held_by_changes();
}

uint64_t Metadata::file_end() {
  std::lock_guard lock(mu_);
  return file_end_;
}

uint64_t Metadata::cache_bytes() {
  std::lock_guard lock(mu_);
  return cache_.bytes();
}

Metadata::PoolUse Metadata::pool_use() {
  return {cache_.pool().allocated(), cache_.pool().buffer_bytes()};  // the pool locks itself
}

}  // namespace qed
