// Address arithmetic for one image: how a virtual offset splits into an L1
// index, an L2 index and an offset inside a cluster, and how many table entries
// the image really uses. Everything is exact integer arithmetic on powers of
// two (QEMU's cluster counting divides by cluster_size - 1; we never do).
#pragma once

#include <cstdint>

#include "lib/format.h"

namespace qed {

class Geometry {
public:
  Geometry() = default;
  // `header` must have passed validate_header().
  explicit Geometry(const Header &header);

  uint64_t cluster_size() const { return cluster_size_; }
  unsigned cluster_bits() const { return cluster_bits_; }
  uint64_t table_size_clusters() const { return table_size_; }
  uint64_t table_bytes() const { return table_size_ * cluster_size_; }
  uint64_t table_entries() const { return table_entries_; }
  uint64_t header_bytes() const { return header_bytes_; }
  uint64_t image_size() const { return image_size_; }

  // Bytes of virtual disk addressed by one L2 table.
  uint64_t l2_span_bytes() const { return uint64_t(1) << l1_shift_; }

  uint64_t l1_index(uint64_t pos) const { return pos >> l1_shift_; }
  uint64_t l2_index(uint64_t pos) const {
    return (pos >> cluster_bits_) & (table_entries_ - 1);
  }
  uint64_t offset_in_cluster(uint64_t pos) const { return pos & (cluster_size_ - 1); }
  uint64_t cluster_start(uint64_t pos) const { return pos & ~(cluster_size_ - 1); }
  bool is_cluster_aligned(uint64_t off) const { return offset_in_cluster(off) == 0; }
  // Virtual offset where the L2 table with this L1 index begins.
  uint64_t l2_span_start(uint64_t l1_index) const { return l1_index << l1_shift_; }

  // L1 entries that address some part of the image (the rest are unused).
  uint64_t l1_entries_used() const { return l1_entries_used_; }
  // Entries of the L2 table at `l1_index` that we load and keep: the ones that
  // address the image, rounded up to whole 512-byte sectors (64 entries) so
  // that a sector write never covers entries we did not read.
  uint64_t l2_entries_used(uint64_t l1_index) const;

  // Clusters needed to hold `bytes` (rounded up).
  uint64_t clusters_for(uint64_t bytes) const {
    return (bytes >> cluster_bits_) + (offset_in_cluster(bytes) != 0);
  }

private:
  uint64_t cluster_size_ = 0;
  unsigned cluster_bits_ = 0;
  uint64_t table_size_ = 0;
  uint64_t table_entries_ = 0;
  unsigned l1_shift_ = 0;
  uint64_t header_bytes_ = 0;
  uint64_t image_size_ = 0;
  uint64_t l1_entries_addressing_ = 0;  // L1 entries below image_size
  uint64_t l1_entries_used_ = 0;        // the same, rounded up to a sector
};

inline constexpr uint64_t kEntriesPerSector = 64;  // 512-byte sectors of u64

}  // namespace qed
