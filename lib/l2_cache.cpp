#include "lib/l2_cache.h"

namespace qed {

namespace {
constexpr size_t kInitialBuckets = 64;
}  // namespace

L2Cache::L2Cache(uint64_t budget_bytes, uint64_t table_entries)
    : budget_(budget_bytes),
      pool_(table_entries),
      buckets_(kInitialBuckets),
      index_(Index::bucket_traits(buckets_.data(), buckets_.size())) {}

L2Cache::~L2Cache() { index_.clear_and_dispose([](CachedTable *t) { delete t; }); }

uint64_t L2Cache::charge_for(uint64_t entries) {
  const uint64_t sectors = (entries + 63) / 64;
  const uint64_t dirty_map = (sectors + 63) / 64 * 8;  // std::vector<bool> words
  // The table's own record, and two hash buckets (the index keeps at most
  // twice as many as there are tables).
  const uint64_t record = sizeof(CachedTable) + 2 * sizeof(void *);
  return entries * 8 + dirty_map + record;
}

L2Cache::Weight L2Cache::weigh(const CachedTable &t) {
  const uint64_t reserves = uint64_t(t.loading()) + uint64_t(t.dirty()) + uint64_t(t.pins > 0);
  Weight w;
  w.reserve = t.charge * reserves;
  w.held = t.evictable() ? 0 : t.charge + w.reserve;
  w.changes = t.dirty() || t.pins > 0 ? t.charge + w.reserve : 0;
  return w;
}

void L2Cache::reweigh(const Weight &before, const Weight &after) noexcept {
  bytes_ = bytes_ - before.reserve + after.reserve;
  held_ = held_ - before.held + after.held;
  held_by_changes_ = held_by_changes_ - before.changes + after.changes;
}

uint64_t L2Cache::cost_to_dirty(const CachedTable &t) const {
  if (t.dirty())
    return 0;
  const Weight now = weigh(t);
  const uint64_t reserves = 1 + uint64_t(t.loading()) + uint64_t(t.pins > 0);
  return t.charge * (1 + reserves) - now.held;
}

CachedTable *L2Cache::find(uint64_t offset) {
  auto it = index_.find(offset);
  if (it == index_.end())
    return nullptr;
  CachedTable &t = *it;
  t.lru_hook.unlink();
  lru_.push_back(t);
  return &t;
}

CachedTable *L2Cache::insert(std::unique_ptr<CachedTable> table) {
  maybe_rehash(index_.size() + 1);  // the only step that allocates: first
  table->charge = table_charge();
  bytes_ += table->charge;
  reweigh(Weight{}, weigh(*table));
  // Make room before linking it: the new table must survive its own
  // insertion, since the caller is about to use it.
  evict_over_budget();
  CachedTable *t = table.release();
  index_.insert(*t);
  lru_.push_back(*t);
  return t;
}

void L2Cache::erase(CachedTable *t) {
  reweigh(weigh(*t), Weight{});
  bytes_ -= t->charge;
  index_.erase(index_.iterator_to(*t));
  delete t;  // the auto-unlink hooks leave the LRU and dirty lists
}

bool L2Cache::evict_one() {
  for (CachedTable &t : lru_) {
    if (t.evictable()) {
      erase(&t);
      return true;
    }
  }
  return false;
}

void L2Cache::evict_over_budget() {
  while (bytes_ > budget_ && evict_one()) {
  }
}

TableBuffer L2Cache::take_buffer(uint64_t entries) {
  // Evicting first lets the pool hand the evicted table's buffer out again.
  const uint64_t need = table_charge();
  while (bytes_ + need > budget_ && evict_one()) {
  }
  return pool_.take(entries);
}

void L2Cache::maybe_rehash(size_t entries) {
  if (entries <= buckets_.size())
    return;
  std::vector<Index::bucket_type> bigger(buckets_.size() * 2);
  index_.rehash(Index::bucket_traits(bigger.data(), bigger.size()));
  buckets_.swap(bigger);
}

}  // namespace qed
