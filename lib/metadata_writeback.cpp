// Metadata: marking entries dirty and handing them to a write-back
// (Image::flush orders the writes; see image_write.cpp).
#include "lib/metadata.h"

#include <algorithm>
#include <span>
#include <vector>

#include "lib/byte_order.h"

namespace qed {

void Metadata::set_entry(CachedTable *t, uint64_t index, uint64_t value) {
  t->entries[index] = value;
  const uint64_t sector = index / kEntriesPerSector;
  if (!t->dirty_sectors.test(sector))
    cache_.update(t, [&] { t->dirty_sectors.mark(sector); });
  if (!t->dirty_hook.is_linked())
    dirty_tables_.push_back(*t);
}

void Metadata::mark_l1_dirty(uint64_t index) {
  l1_dirty_sectors_.mark(index / kEntriesPerSector);
}

namespace {

// Appends a piece for each run of dirty sectors of `entries` (a table at
// `table_offset`), encoding the entries at `out`, which has room for all of
// them.
void encode_dirty_runs(const DirtySectors &dirty, std::span<const uint64_t> entries,
                       uint64_t table_offset, CachedTable *table, uint8_t *out,
                       std::vector<Writeback::Piece> &pieces) {
  dirty.for_each_run([&](uint64_t sector, uint64_t sectors) {
    const uint64_t first = sector * kEntriesPerSector;
    const uint64_t count =
        std::min<uint64_t>(sectors * kEntriesPerSector, entries.size() - first);
    for (uint64_t i = 0; i < count; i++)
      store_le64(out + i * 8, entries[first + i]);
    pieces.push_back({table_offset + first * 8, out, count * 8, table, sector, sectors});
    out += count * 8;
  });
}

}  // namespace

Writeback Metadata::take_dirty() {
  MutexLock lock(mu_);
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
  w.l1_bytes.resize(512 * l1_dirty_sectors_.count());
  encode_dirty_runs(l1_dirty_sectors_, l1_, l1_offset_, nullptr, w.l1_bytes.data(), w.l1);
  // Nothing below allocates. Each table's reserve now covers its copy.
  for (Writeback::Piece &p : w.tables) {
    // The table's pieces cover all its dirty sectors: the first clears them.
    cache_.update(p.table, [&] {
      p.table->dirty_sectors.clear(0, p.table->dirty_sectors.sectors());
      p.table->pins++;
    });
  }
  dirty_tables_.clear();
  for (Writeback::Piece &p : w.l1)
    l1_dirty_sectors_.clear(p.first_sector, p.sectors);
  w.file_end = file_end_;
  w.sync_before_entries = cut_back_since_writeback_;
  cut_back_since_writeback_ = false;
  return w;
}

void Metadata::finish_writeback(Writeback &w, bool written) noexcept {
  MutexLock lock(mu_);
  if (!written && w.sync_before_entries)
    cut_back_since_writeback_ = true;
  // A table written back gives its reserve back. One that was not is dirty
  // again, with the same charge: its reserve is for the next copy.
  for (Writeback::Piece &p : w.tables) {
    CachedTable *t = p.table;
    cache_.update(t, [&] {
      t->pins--;
      if (!written)
        t->dirty_sectors.mark(p.first_sector, p.sectors);
    });
    if (!written && !t->dirty_hook.is_linked())
      dirty_tables_.push_back(*t);
  }
  if (!written)
    for (Writeback::Piece &p : w.l1)
      l1_dirty_sectors_.mark(p.first_sector, p.sectors);
  // The copies go back to the pool as their reserves end.
  w.copies.clear();
  room_cv_.notify_all();
  cache_.evict_over_budget();
}

}  // namespace qed
