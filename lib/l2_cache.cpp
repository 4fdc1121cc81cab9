#include "l2_cache.h"

namespace qed {

namespace {
constexpr size_t kInitialBuckets = 64;
}

L2Cache::L2Cache(uint64_t budget_bytes)
    : budget_(budget_bytes),
      buckets_(kInitialBuckets),
      index_(Index::bucket_traits(buckets_.data(), buckets_.size())) {
  spare_.reserve(kMaxSpare);  // so that erase(), called on paths that must not fail, never allocates
}

L2Cache::~L2Cache() {
  spare_.clear();
  index_.clear_and_dispose([](CachedTable *t) { delete t; });
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
  // Make room first: the new table must survive its own insertion, since the
  // caller is about to use it.
  maybe_rehash(index_.size() + 1);  // the only step that allocates: first
  bytes_ += table->bytes();
  evict_over_budget();
  CachedTable *t = table.release();
  index_.insert(*t);
  lru_.push_back(*t);
  return t;
}

void L2Cache::erase(CachedTable *t) {
  bytes_ -= t->bytes();
  index_.erase(index_.iterator_to(*t));
  if (spare_.size() < kMaxSpare && t->entries.capacity() > 0)
    spare_.push_back(std::move(t->entries));
  delete t;  // the auto-unlink hooks leave the LRU and dirty lists
}

std::vector<uint64_t> L2Cache::take_buffer(uint64_t entries) {
  std::vector<uint64_t> buf;
  if (!spare_.empty()) {
    buf = std::move(spare_.back());
    spare_.pop_back();
  }
  buf.resize(entries);
  return buf;
}

void L2Cache::account(CachedTable *t, uint64_t old_bytes) {
  bytes_ = bytes_ - old_bytes + t->bytes();
}

void L2Cache::evict_over_budget() {
  auto it = lru_.begin();
  while (bytes_ > budget_ && it != lru_.end()) {
    CachedTable &t = *it++;
    if (t.evictable())
      erase(&t);
  }
}

void L2Cache::maybe_rehash(size_t entries) {
  if (entries <= buckets_.size())
    return;
  std::vector<Index::bucket_type> bigger(buckets_.size() * 2);
  index_.rehash(Index::bucket_traits(bigger.data(), bigger.size()));
  buckets_.swap(bigger);
}

}  // namespace qed
