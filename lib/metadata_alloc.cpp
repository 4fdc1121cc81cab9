// Metadata: allocation (plans, in-flight records, commit) and what happens to
// the clusters of an allocation that failed: freed when they end the file,
// else leaked clusters (see metadata.h).
#include "lib/metadata.h"

#include <algorithm>
#include <utility>

namespace qed {

namespace {

struct ClusterKeyLess {
  bool operator()(uint64_t key, const Inflight &r) const { return key < r.first_cluster; }
  bool operator()(const Inflight &r, uint64_t key) const { return r.first_cluster < key; }
};

}  // namespace

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

uint64_t Metadata::image_clusters_from(uint64_t cluster) const {
  const uint64_t total = geo_.clusters_for(geo_.image_size());
  return cluster < total ? total - cluster : 0;
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

Result<CachedTable *> Metadata::table_for_write(uint64_t pos) {
  if (!writable_)
    return Status::read_only(file_.name() + ": image is open read-only");
  const uint64_t l1_index = geo_.l1_index(pos);
  for (;;) {
    auto got = get_table(l1_index);
    if (!got)
      return got.status();
    if (*got)
      return *got;
    auto released = make_room(cache_.table_charge(), false);
    if (!released)
      return released.status();
    if (!*released)
      return create_table(l1_index);
    // Another request may have created it meanwhile: look again.
  }
}

bool Metadata::wait_for_inflight(uint64_t cluster) {
  Inflight *busy = find_inflight(cluster);
  if (!busy)
    return false;
  // Wait for that allocation only; afterwards the caller must look again,
  // since the tables may have changed (or been evicted) meanwhile.
  std::shared_ptr<Inflight> keep = busy->shared_from_this();
  while (!keep->done)
    keep->done_cv.wait(mu_);
  return true;
}

Result<WritePlan> Metadata::plan_write(uint64_t pos, uint64_t len) {
  return plan_allocation(pos, len, false);
}

Result<WritePlan> Metadata::plan_copy(uint64_t pos, uint64_t len) {
  return plan_allocation(pos, len, true);
}

Result<WritePlan> Metadata::plan_allocation(uint64_t pos, uint64_t len, bool unallocated_only) {
  MutexLock lock(mu_);
  for (;;) {
    auto got = table_for_write(pos);
    if (!got)
      return got.status();
    CachedTable *t = *got;
    const uint64_t first = geo_.l2_index(pos);
    const EntryKind kind = classify(t->entries[first]);
    if (kind == EntryKind::kInvalid)
      return invalid_entry(t->entries[first], pos);
    const uint64_t cluster = pos >> geo_.cluster_bits();
    if (kind != EntryKind::kData && wait_for_inflight(cluster))
      continue;
    // Data is written in place; for a copy, a zero cluster is newer than the
    // backing data and is skipped the same way.
    if (kind == EntryKind::kData || (unallocated_only && kind == EntryKind::kZero)) {
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
  MutexLock lock(mu_);
  CachedTable *t;
  for (;;) {
    // The table may have been evicted meanwhile: reloading it, or making room
    // to change it, can fail (or throw); the Allocation then still gives the
    // clusters back.
    auto got = get_table(geo_.l1_index(a.virtual_offset));
    if (!got)
      return got.status();
    if (*got == nullptr)
      return Status::corruption("L2 table vanished during an allocation");
    auto released = make_room_to_dirty(*got);
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
  MutexLock lock(mu_);
  remove_inflight(*a.record_);
  a.owner_ = nullptr;
  free_clusters(a.host_offset, a.clusters * geo_.cluster_size());
}

void Metadata::free_clusters(uint64_t host, uint64_t bytes) noexcept {
  if (host + bytes != file_end_) {
    // Something was reserved after it: leaked, until that goes too.
    add_leaked(host, bytes);
    return;
  }
  uint64_t end = host;
  for (bool found = true; found;) {
    found = false;
    for (size_t i = 0; i < leaked_.size(); i++) {
      if (leaked_[i].first + leaked_[i].second == end) {
        end = leaked_[i].first;
        leaked_[i] = leaked_.back();
        leaked_.pop_back();
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
      add_leaked(end, file_end_ - end);
      return;
    }
  } catch (...) {  // a message that could not be built: they stay leaked
    leaked_unlisted_ = true;
    return;
  }
  file_end_ = end;
  cut_back_since_writeback_ = true;
}

void Metadata::add_leaked(uint64_t host, uint64_t bytes) noexcept {
  try {
    if (leaked_.size() < kMaxLeaked) {
      leaked_.emplace_back(host, bytes);
      return;
    }
  } catch (...) {  // no memory to list them: the check will find them
  }
  leaked_unlisted_ = true;
}

bool Metadata::has_leaked_clusters() {
  MutexLock lock(mu_);
  return !leaked_.empty() || leaked_unlisted_;
}

Result<uint64_t> Metadata::mark_zero(uint64_t pos, uint64_t clusters) {
  MutexLock lock(mu_);
  for (;;) {
    auto got = table_for_write(pos);
    if (!got)
      return got.status();
    CachedTable *t = *got;
    const uint64_t first = geo_.l2_index(pos);
    const uint64_t cluster = pos >> geo_.cluster_bits();
    if (wait_for_inflight(cluster))
      continue;
    auto released = make_room_to_dirty(t);
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

}  // namespace qed
