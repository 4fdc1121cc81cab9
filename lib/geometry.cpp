#include "lib/geometry.h"

#include "lib/align.h"
#include <algorithm>
#include <bit>

namespace qed {

namespace {

uint64_t round_up_entries(uint64_t n, uint64_t limit) {
  return std::min(round_up(n, kEntriesPerSector), limit);
}

}  // namespace

Geometry::Geometry(const Header &h)
    : cluster_size_(h.cluster_size),
      cluster_bits_(unsigned(std::countr_zero(h.cluster_size))),
      table_size_(h.table_size),
      table_entries_(uint64_t(h.table_size) * h.cluster_size / 8),
      l1_shift_(cluster_bits_ + unsigned(std::countr_zero(table_entries_))),
      header_bytes_(uint64_t(h.header_size) * h.cluster_size),
      image_size_(h.image_size) {
  // A span can reach 2^53 bytes; image_size <= 2^64, so this cannot overflow.
  const uint64_t span = l2_span_bytes();
  const uint64_t used = image_size_ / span + (image_size_ % span != 0);
  l1_entries_addressing_ = used;
  l1_entries_used_ = round_up_entries(used, table_entries_);
}

uint64_t Geometry::l2_entries_used(uint64_t l1_index) const {
  if (l1_index >= l1_entries_addressing_)
    return 0;  // also keeps l2_span_start() from overflowing
  const uint64_t start = l2_span_start(l1_index);
  const uint64_t clusters = clusters_for(std::min(image_size_ - start, l2_span_bytes()));
  return round_up_entries(clusters, table_entries_);
}

}  // namespace qed
