// The kept block status replies of libqed-nbd (status_cache.h), without a
// server: merging, clipping, the bound on what is kept, the window, and which
// reply goes when the slots are full.
#include <doctest/doctest.h>

#include "nbd/status_cache.h"

using qed_nbd::StatusCache;
using qed_nbd::StatusReply;

TEST_SUITE_BEGIN("nbd");

TEST_CASE("a kept reply answers every probe it covers, neighbours of one kind merged") {
  StatusCache cache;
  StatusReply r(4096, 100000);
  r.add(1000, false);
  r.add(3000, false);  // merges with the first
  r.add(8000, true);
  r.add(200000, false);  // clipped to the range asked about
  r.add(5000, true);     // past it: ignored
  CHECK(r.extents() == 5);
  CHECK(r.covered_end() == 4096 + 100000);
  CHECK(!r.truncated());
  cache.insert(std::move(r));
  CHECK(!cache.find(4095, 10));
  CHECK(!cache.find(4096 + 100000, 10));
  auto run = cache.find(4096, 1 << 30);
  REQUIRE(run);
  CHECK(!run->hole);
  CHECK(run->length == 4000);
  run = cache.find(4096 + 3999, 1 << 30);
  REQUIRE(run);
  CHECK(run->length == 1);
  run = cache.find(4096 + 4000, 100);
  REQUIRE(run);
  CHECK(run->hole);
  CHECK(run->length == 100);
  run = cache.find(4096 + 12000, 1 << 30);
  REQUIRE(run);
  CHECK(!run->hole);
  CHECK(run->length == 100000 - 12000);
}

TEST_CASE("an extent of length 0 ends a reply; what came before holds") {
  StatusCache cache;
  StatusReply r(0, 1 << 20);
  r.add(4096, true);
  r.add(0, false);
  r.add(4096, false);
  CHECK(r.covered_end() == 4096);
  cache.insert(std::move(r));
  REQUIRE(cache.find(0, 1 << 20));
  CHECK(cache.find(0, 1 << 20)->hole);
  CHECK(!cache.find(4096, 10));
}

TEST_CASE("a reply keeps at most kMaxSpans spans, and the window follows the density") {
  StatusCache cache;
  CHECK(cache.window() == StatusCache::kMaxWindow);
  const uint64_t span = 4096;
  StatusReply r(0, StatusCache::kMaxWindow);
  for (size_t i = 0; i < 3 * StatusCache::kMaxSpans; i++)
    r.add(span, i % 2 == 1);
  CHECK(r.truncated());
  CHECK(r.extents() == 3 * StatusCache::kMaxSpans);
  CHECK(r.covered_end() == StatusCache::kMaxSpans * span);
  cache.insert(std::move(r));
  // The next request asks about as much as the kept spans covered.
  CHECK(cache.window() == StatusCache::kMaxSpans * span);
  CHECK(cache.find(StatusCache::kMaxSpans * span - 1, 10));
  CHECK(!cache.find(StatusCache::kMaxSpans * span, 10));
  // A reply with few extents over the whole range asked doubles it again.
  StatusReply sparse(1ull << 40, 1 << 20);
  sparse.add(1 << 20, true);
  cache.insert(std::move(sparse));
  CHECK(cache.window() == 2 * StatusCache::kMaxSpans * span);
  // Never below kMinWindow.
  StatusReply dense(0, 1 << 20);
  for (size_t i = 0; i < StatusCache::kMaxSpans + 1; i++)
    dense.add(1, i % 2 == 1);
  cache.insert(std::move(dense));
  CHECK(cache.window() == StatusCache::kMinWindow);
  cache.clear();
  CHECK(cache.window() == StatusCache::kMaxWindow);
  CHECK(!cache.find(0, 1));
}

TEST_CASE("when the slots are full, the least recently used reply goes") {
  StatusCache cache;
  auto reply_at = [](uint64_t off) {
    StatusReply r(off, 4096);
    r.add(4096, false);
    return r;
  };
  for (uint64_t i = 0; i < StatusCache::kSlots; i++)
    cache.insert(reply_at(i << 20));
  CHECK(cache.find(0, 1));  // the first is now the most recently used
  cache.insert(reply_at(100ull << 20));
  CHECK(cache.find(0, 1));
  CHECK(!cache.find(1 << 20, 1));  // the second went
  CHECK(cache.find(100ull << 20, 1));
  // The same question answered twice keeps one answer.
  cache.insert(reply_at(100ull << 20));
  CHECK(cache.find(2ull << 20, 1));
}

TEST_SUITE_END();
