// Address arithmetic, checked against plain division and modulo.
#include <doctest/doctest.h>

#include <algorithm>

#include "lib/geometry.h"
#include "tests/unit/test_util.h"

TEST_SUITE_BEGIN("geometry");

namespace {

qed::Geometry make_geometry(uint32_t cs, uint32_t ts, uint64_t size, uint32_t header_size = 1) {
  qed::Header h;
  h.cluster_size = cs;
  h.table_size = ts;
  h.header_size = header_size;
  h.l1_table_offset = uint64_t(cs) * header_size;
  h.image_size = size;
  return qed::Geometry(h);
}

}  // namespace

TEST_CASE("l1_index, l2_index and offset_in_cluster for every geometry") {
  qt::Rng rng(42);
  for (uint64_t cs = 4096; cs <= (64u << 20); cs *= 2)
    for (uint64_t ts = 1; ts <= 16; ts *= 2) {
      const uint64_t size = qed::max_image_size(uint32_t(cs), uint32_t(ts));
      const qed::Geometry g = make_geometry(uint32_t(cs), uint32_t(ts), size);
      const uint64_t entries = ts * cs / 8;
      CAPTURE(cs);
      CAPTURE(ts);
      CHECK(g.cluster_size() == cs);
      CHECK((uint64_t(1) << g.cluster_bits()) == cs);
      CHECK(g.table_entries() == entries);
      CHECK(g.table_bytes() == ts * cs);
      CHECK(g.header_bytes() == cs);
      CHECK(g.image_size() == size);
      CHECK(g.l2_span_bytes() == entries * cs);
      std::vector<uint64_t> offsets = {0, 1, cs - 1, cs, cs + 1, entries * cs - 1, entries * cs,
                                       entries * cs + 1, size - 1, size - 512};
      for (int i = 0; i < 300; i++) {
        // Mix uniform offsets with small ones, so low indexes are exercised too.
        const uint64_t limit = i % 3 == 0 ? size : i % 3 == 1 ? std::min(size, entries * cs * 4)
                                                              : std::min<uint64_t>(size, 1 << 24);
        offsets.push_back(rng.below(limit));
      }
      for (uint64_t pos : offsets) {
        if (pos >= size)
          continue;
        CAPTURE(pos);
        CHECK(g.l1_index(pos) == pos / (entries * cs));
        CHECK(g.l2_index(pos) == (pos / cs) % entries);
        CHECK(g.offset_in_cluster(pos) == pos % cs);
        CHECK(g.cluster_start(pos) == pos / cs * cs);
        CHECK(g.is_cluster_aligned(pos) == (pos % cs == 0));
        CHECK(g.l2_span_start(g.l1_index(pos)) == pos / (entries * cs) * (entries * cs));
        // Recomposing gives the offset back.
        CHECK(g.l1_index(pos) * entries * cs + g.l2_index(pos) * cs + g.offset_in_cluster(pos) ==
              pos);
      }
    }
}

TEST_CASE("clusters_for rounds up exactly (QEMU divided by cluster_size - 1)") {
  for (uint64_t cs = 4096; cs <= (64u << 20); cs *= 2) {
    const qed::Geometry g = make_geometry(uint32_t(cs), 16, 1 << 20);
    CAPTURE(cs);
    CHECK(g.clusters_for(0) == 0);
    CHECK(g.clusters_for(1) == 1);
    CHECK(g.clusters_for(cs - 1) == 1);
    CHECK(g.clusters_for(cs) == 1);
    CHECK(g.clusters_for(cs + 1) == 2);
    std::vector<uint64_t> ks;
    for (uint64_t k = 1; k <= (1u << 20); k = k < 64 ? k + 1 : k * 2 + (k & 1 ? 0 : 1))
      ks.push_back(k);
    for (uint64_t k : {cs - 2, cs - 1, cs, cs + 1, 2 * cs - 2, 2 * cs - 1, uint64_t(1) << 20})
      if (k <= (1u << 20))
        ks.push_back(k);
    for (uint64_t k : ks) {
      CAPTURE(k);
      const uint64_t b = k * cs;
      CHECK(g.clusters_for(b - 1) == k);
      CHECK(g.clusters_for(b) == k);
      CHECK(g.clusters_for(b + 1) == k + 1);
    }
  }
}

namespace {

uint64_t round_up_64_capped(uint64_t n, uint64_t cap) {
  return std::min(cap, (n + 63) / 64 * 64);
}

}  // namespace

TEST_CASE("l1_entries_used and l2_entries_used round to 64 entries") {
  qt::Rng rng(9);
  for (uint64_t cs = 4096; cs <= (1u << 20); cs *= 4)
    for (uint64_t ts = 1; ts <= 16; ts *= 2) {
      const uint64_t entries = ts * cs / 8;
      const uint64_t span = entries * cs;
      std::vector<uint64_t> sizes = {0,         512,          cs,          cs + 512,
                                     64 * cs,   64 * cs + 512, span - 512, span,
                                     span + 512, 3 * span + 65 * cs};
      for (int i = 0; i < 20; i++)
        sizes.push_back(rng.below(std::min<uint64_t>(
                            qed::max_image_size(uint32_t(cs), uint32_t(ts)), 70 * span)) /
                        512 * 512);
      for (uint64_t size : sizes) {
        if (size > qed::max_image_size(uint32_t(cs), uint32_t(ts)))
          continue;
        CAPTURE(cs);
        CAPTURE(ts);
        CAPTURE(size);
        const qed::Geometry g = make_geometry(uint32_t(cs), uint32_t(ts), size);
        const uint64_t tables = size / span + (size % span != 0);
        CHECK(g.l1_entries_used() == round_up_64_capped(tables, entries));
        for (uint64_t i = 0; i < tables + 2; i++) {
          uint64_t expected = 0;
          if (i < tables) {
            const uint64_t bytes = std::min(span, size - i * span);
            expected = round_up_64_capped(bytes / cs + (bytes % cs != 0), entries);
          }
          CAPTURE(i);
          CHECK(g.l2_entries_used(i) == expected);
        }
      }
    }
}

TEST_CASE("l2_entries_used of the last table of a maximal image") {
  // 64 MiB clusters, 16-cluster tables: the size is capped below 2^64, and
  // the last used L1 index must not overflow when computing its span.
  const uint64_t cap = qed::max_image_size(64u << 20, 16);
  const qed::Geometry g = make_geometry(64u << 20, 16, cap);
  const uint64_t span = g.l2_span_bytes();
  const uint64_t tables = cap / span + (cap % span != 0);
  CHECK(tables == 1u << 11);  // 2^64 / 2^53
  CHECK(g.l1_entries_used() == 1u << 11);
  CHECK(g.l2_entries_used(tables - 1) == g.table_entries());  // 2^64-512 fills the last table
  CHECK(g.l2_entries_used(tables) == 0);
  CHECK(g.l1_index(cap - 1) == tables - 1);
  CHECK(g.l2_index(cap - 1) == g.table_entries() - 1);
}

TEST_CASE("header_size > 1 moves header_bytes") {
  const qed::Geometry g = make_geometry(4096, 4, 1 << 20, 3);
  CHECK(g.header_bytes() == 3 * 4096);
}

TEST_SUITE_END();
