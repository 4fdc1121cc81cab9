// The L2 table cache: LRU order, the byte budget, tables that cannot be
// evicted, and concurrent misses on one table.
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <latch>
#include <list>
#include <thread>
#include <utility>
#include <vector>

#include "lib/dirty_sectors.h"
#include "lib/l2_cache.h"
#include "lib/metadata.h"
#include "lib/table.h"
#include "tests/unit/test_util.h"

using qed::CachedTable;
using qed::L2Cache;
using qed::Status;

namespace {

// A table of `entries` entries whose buffer comes from the cache's pool.
std::unique_ptr<CachedTable> table(L2Cache &cache, uint64_t offset, size_t entries) {
  auto t = std::make_unique<CachedTable>(offset);
  t->entries = cache.pool().take(entries);
  std::fill(t->entries.begin(), t->entries.end(), 0);
  t->dirty_sectors = qed::DirtySectors(entries);
  return t;
}

constexpr uint32_t kCs = 4096;
constexpr uint32_t kTs = 1;
constexpr uint64_t kSpan = uint64_t(kTs) * kCs / 8 * kCs;  // 2 MiB
constexpr uint64_t kTableBytes = uint64_t(kTs) * kCs;      // 512 entries * 8

// An image with `tables` L2 tables, each holding one data cluster at the
// start of its span (the rest unallocated). Returns the table offsets.
std::vector<uint64_t> build_tables(qt::MemImage &m, uint64_t tables) {
  {
    auto img = qt::open_mem(m, qt::rw_options());
    for (uint64_t i = 0; i < tables; i++) {
      const uint8_t b = uint8_t(i + 1);
      REQUIRE(img->write(&b, 1, i * kSpan, false).is_ok());
    }
    REQUIRE(img->close().is_ok());
  }
  const auto bytes = m.mem->contents();
  std::vector<uint64_t> offsets;
  for (uint64_t i = 0; i < tables; i++) {
    const uint64_t off = qt::get_le64(&bytes[kCs + 8 * i]);
    REQUIRE(off != 0);
    offsets.push_back(off);
  }
  return offsets;
}

struct Counted {
  std::shared_ptr<qt::CountingFile::Shared> shared = std::make_shared<qt::CountingFile::Shared>();
  std::unique_ptr<qed::Image> img;

  uint64_t reads_at(uint64_t off) {
    std::lock_guard lock(shared->mu);
    auto it = shared->reads_at.find(off);
    return it == shared->reads_at.end() ? 0 : it->second;
  }
};

Counted open_counted(qt::MemImage &m, const qed::OpenOptions &o) {
  Counted c;
  c.img = qt::open_on(m.path, std::make_unique<qt::CountingFile>(m.mem, c.shared), o);
  return c;
}

// Reads one byte of an unallocated cluster in table i: costs a table read on
// a miss and no data read.
void touch(qed::Image &img, uint64_t i) {
  uint8_t b = 0xff;
  REQUIRE(img.read(&b, 1, i * kSpan + 5 * kCs).is_ok());
  CHECK(b == 0);
}

}  // namespace

TEST_SUITE_BEGIN("l2cache");

TEST_CASE("TablePool hands out the buffers given back before it allocates") {
  qed::TablePool pool(100);
  CHECK(pool.buffer_bytes() == 800);
  {
    qed::TableBuffer a = pool.take(100), b = pool.take(40);
    CHECK(a.size() == 100);
    CHECK(b.size() == 40);
    CHECK(b.capacity() == 100);
    b.resize(1000);  // never past the buffer
    CHECK(b.size() == 100);
    CHECK(pool.allocated() == 2);
    const uint64_t *was = a.data();
    a.reset();
    qed::TableBuffer c = pool.take(7);
    CHECK(c.data() == was);
    qed::TableBuffer d = std::move(c);  // the buffer moves, and goes back once
    CHECK(c.empty());
    CHECK(d.data() == was);
  }
  // Every buffer back: taking them all again allocates nothing.
  qed::TableBuffer x = pool.take(1), y = pool.take(1);
  CHECK(pool.allocated() == 2);
  qed::TableBuffer z = pool.take(1);
  CHECK(pool.allocated() == 3);
}

TEST_CASE("L2Cache evicts the least recently used clean table") {
  const uint64_t c = L2Cache::charge_for(100);
  L2Cache cache(2 * c, 100);  // two tables of 100 entries
  CachedTable *a = cache.insert(table(cache, 1 << 20, 100));
  CachedTable *b = cache.insert(table(cache, 2 << 20, 100));
  CHECK(cache.count() == 2);
  CHECK(cache.bytes() == 2 * c);
  CHECK(cache.held() == 0);
  CHECK(cache.find(1 << 20) == a);  // A becomes the most recent
  CachedTable *t3 = cache.insert(table(cache, 3 << 20, 100));
  CHECK(cache.count() == 2);
  CHECK(cache.bytes() == 2 * c);
  CHECK(cache.find(2 << 20) == nullptr);  // B went, not A
  CHECK(cache.find(1 << 20) == a);
  CHECK(cache.find(3 << 20) == t3);
  (void)b;
  // The finds above used A, then C: A is now the least recent, so D evicts A.
  cache.insert(table(cache, 4 << 20, 100));
  CHECK(cache.find(1 << 20) == nullptr);
  CHECK(cache.find(3 << 20) == t3);
  // Evicted tables gave their buffers back: the pool made no more than the
  // most in use at once (three: the new table's buffer is taken before the
  // insertion evicts).
  CHECK(cache.pool().allocated() == 3);
}

TEST_CASE("L2Cache charges dirty, written-back and loading tables a reserve, and keeps them") {
  // Each is charged its table and a reserve as large (the copy a write-back
  // makes, or what a load may make dirty); none can be evicted.
  const uint64_t c = L2Cache::charge_for(100);
  L2Cache cache(4 * c, 100);
  CachedTable *a = cache.insert(table(cache, 1 << 20, 100));
  CHECK(cache.bytes() == c);
  CHECK(cache.held() == 0);
  CHECK(cache.cost_to_dirty(*a) == 2 * c);
  cache.update(a, [&] {
    a->dirty_sectors.mark(0);
  });
  CHECK(cache.bytes() == 2 * c);
  CHECK(cache.held() == 2 * c);
  CHECK(cache.held_by_changes() == 2 * c);
  CHECK(cache.cost_to_dirty(*a) == 0);
  // Being written back: the reserve now stands for the copy.
  cache.update(a, [&] {
    a->dirty_sectors.clear(0, 1);
    a->pins++;
  });
  CHECK(cache.held() == 2 * c);
  CHECK(cache.held_by_changes() == 2 * c);
  // Changed again while it is written back: a second reserve, for the next copy.
  CHECK(cache.cost_to_dirty(*a) == c);
  cache.update(a, [&] {
    a->dirty_sectors.mark(1);
  });
  CHECK(cache.bytes() == 3 * c);
  CHECK(cache.held() == 3 * c);
  // A loading table, beside it.
  auto lp = table(cache, 4 << 20, 100);
  lp->latch = std::make_shared<qed::LoadLatch>();
  CachedTable *l = cache.insert(std::move(lp));
  CHECK(cache.bytes() == 5 * c);  // over budget: nothing could go
  CHECK(cache.held() == 5 * c);
  CHECK(cache.held_by_changes() == 3 * c);
  CHECK(cache.find(1 << 20) == a);
  CHECK(cache.find(4 << 20) == l);
  // Loaded, written back: clean and idle, each charged its table only.
  cache.update(l, [&] { l->latch.reset(); });
  cache.update(a, [&] {
    a->pins--;
    a->dirty_sectors.clear(1, 1);
  });
  CHECK(cache.bytes() == 2 * c);
  CHECK(cache.held() == 0);
  CHECK(cache.held_by_changes() == 0);
  // A new table evicts the oldest: A was used before L.
  cache.insert(table(cache, 5 << 20, 100));
  cache.insert(table(cache, 6 << 20, 100));
  cache.insert(table(cache, 7 << 20, 100));
  CHECK(cache.find(1 << 20) == nullptr);
  CHECK(cache.find(4 << 20) == l);
  CHECK(cache.bytes() == 4 * c);
}

TEST_CASE("L2Cache::insert returns a table that is still in the cache") {
  // When every other table is dirty and the budget is exceeded, insert()
  // evicts the table it was given (it is clean, unpinned and not yet marked
  // as loading) and returns a dangling pointer. Metadata::create_table() and
  // Metadata::load_table() use that pointer right away.
  const uint64_t c = L2Cache::charge_for(100);
  L2Cache cache(2 * c, 100);
  CachedTable *a = cache.insert(table(cache, 1 << 20, 100));
  cache.update(a, [&] {
    a->dirty_sectors.mark(0);
  });
  CachedTable *b = cache.insert(table(cache, 2 << 20, 100));
  CHECK(cache.find(2 << 20) == b);
  CHECK(cache.find(2 << 20) != nullptr);
}

TEST_CASE("L2Cache rehashes as it grows") {
  L2Cache cache(1ull << 40, 1);
  std::vector<CachedTable *> ts;
  for (uint64_t i = 0; i < 1000; i++)
    ts.push_back(cache.insert(table(cache, (i + 1) * 4096, 1)));
  CHECK(cache.count() == 1000);
  for (uint64_t i = 0; i < 1000; i++)
    CHECK(cache.find((i + 1) * 4096) == ts[i]);
  cache.erase(ts[10]);
  CHECK(cache.find(11 * 4096) == nullptr);
  CHECK(cache.count() == 999);
  CHECK(cache.bytes() == 999 * L2Cache::charge_for(1));
}

TEST_CASE("Image: touching A, B, C, A, then D evicts B, not A") {
  // The smallest budget: room for two tables beside one loading (twice its
  // size), so three stay.
  qt::TempDir dir;
  qt::MemImage m = qt::MemImage::create(dir, "lru.qed", 8 * kSpan, kCs, kTs);
  const auto off = build_tables(m, 4);
  Counted c = open_counted(m, [] {
    qed::OpenOptions o;
    o.cache_bytes = 4 * L2Cache::charge_for(kTableBytes / 8);
    return o;
  }());
  qed::Image &img = *c.img;
  const uint64_t A = off[0], B = off[1], C = off[2], D = off[3];
  touch(img, 0);
  touch(img, 1);
  touch(img, 2);
  CHECK(c.reads_at(A) == 1);
  CHECK(c.reads_at(B) == 1);
  CHECK(c.reads_at(C) == 1);
  touch(img, 0);
  CHECK(c.reads_at(A) == 1);  // a hit
  touch(img, 3);
  CHECK(c.reads_at(D) == 1);
  touch(img, 0);
  CHECK(c.reads_at(A) == 1);  // A survived
  touch(img, 1);
  CHECK(c.reads_at(B) == 2);  // B had gone; this evicts C (A and D were used later)
  touch(img, 0);
  CHECK(c.reads_at(A) == 1);
  touch(img, 3);
  CHECK(c.reads_at(D) == 1);
  touch(img, 2);
  CHECK(c.reads_at(C) == 2);
}

TEST_CASE("Metadata follows an LRU model and stays within its byte budget") {
  // 9 tables: 8 full (512 entries, 4 KiB) and a last one of 128 entries
  // (rounded to 64), so sizes differ. The budget is 3.5 tables.
  qt::TempDir dir;
  const uint64_t size = 8 * kSpan + 100 * kCs;
  qt::MemImage m = qt::MemImage::create(dir, "budget.qed", size, kCs, kTs);
  const auto off = build_tables(m, 9);
  const auto header_bytes = m.mem->contents();
  qed::Header h;
  {
    qed::HeaderBytes hb;
    std::copy(header_bytes.begin(), header_bytes.begin() + 64, hb.begin());
    h = qed::decode_header(hb);
  }
  const qed::Geometry geo(h);
  CHECK(geo.l2_entries_used(8) == 128);
  auto shared = std::make_shared<qt::CountingFile::Shared>();
  qt::CountingFile file(m.mem, shared);
  std::vector<uint64_t> l1(geo.l1_entries_used());
  REQUIRE(qed::read_table_entries(file, h.l1_table_offset, l1).is_ok());
  // Every table is charged a whole buffer of the pool, the last one too; a
  // loading table twice that.
  const uint64_t charge = L2Cache::charge_for(geo.l2_entries_used(0));
  const uint64_t budget = 5 * charge + charge / 2;
  for (bool writable : {false, true}) {
    CAPTURE(writable);
    qed::MetadataConfig cfg{geo, h.l1_table_offset, header_bytes.size(), budget, writable, false};
    qed::Metadata meta(file, cfg, l1, [] {
      FAIL("a write-back, with nothing changed");
      return Status::ok();
    });
    CHECK(meta.cache_budget() == budget);
    // The reference: an LRU list of (table, bytes).
    std::list<std::pair<uint64_t, uint64_t>> lru;  // front: least recent
    uint64_t model_bytes = 0;
    std::map<uint64_t, uint64_t> expected_reads;
    {
      std::lock_guard lock(shared->mu);
      shared->reads_at.clear();
    }
    qt::Rng r(11 + writable);
    for (int step = 0; step < 300; step++) {
      const uint64_t i = r.below(9);
      const uint64_t bytes = charge;
      auto it = std::find_if(lru.begin(), lru.end(), [&](auto &p) { return p.first == i; });
      if (it != lru.end()) {
        lru.splice(lru.end(), lru, it);
      } else {
        expected_reads[off[i]]++;
        // Room for the table while it loads, then it stays.
        while (model_bytes + 2 * bytes > budget) {
          model_bytes -= lru.front().second;
          lru.pop_front();
        }
        lru.emplace_back(i, bytes);
        model_bytes += bytes;
      }
      auto run = meta.lookup(i * kSpan + 3 * kCs, 100);
      REQUIRE(run.is_ok());
      CHECK(run->kind == qed::Run::kUnallocated);
      CHECK(meta.cache_bytes() <= budget);
      CHECK(meta.cache_bytes() == model_bytes);
    }
    std::lock_guard lock(shared->mu);
    for (uint64_t i = 0; i < 9; i++) {
      CAPTURE(i);
      CHECK(shared->reads_at[off[i]] == expected_reads[off[i]]);
    }
  }
}

TEST_CASE("a budget below four tables is raised to four tables") {
  qt::TempDir dir;
  qt::MemImage m = qt::MemImage::create(dir, "tiny.qed", 4 * kSpan, kCs, kTs);
  const auto off = build_tables(m, 4);
  qed::OpenOptions o;
  o.cache_bytes = 100;
  Counted c = open_counted(m, o);
  const auto budgets = c.img->cache_budgets();
  REQUIRE(budgets.size() == 1);
  CHECK(budgets[0].requested == 100);
  CHECK(budgets[0].table == L2Cache::charge_for(512));
  CHECK(budgets[0].budget == 4 * L2Cache::charge_for(512));
  // Room for a table loading beside two others: touching four in turn misses
  // every time, and a table just used stays for the next request.
  for (int round = 0; round < 3; round++)
    for (uint64_t i = 0; i < 4; i++) {
      touch(*c.img, i);
      touch(*c.img, i);  // the table in use stays for the next request
      CHECK(c.reads_at(off[i]) == uint64_t(round + 1));
    }
}

TEST_CASE("concurrent misses on one table read it once") {
  qt::TempDir dir;
  qt::MemImage m = qt::MemImage::create(dir, "miss.qed", 8 * kSpan, kCs, kTs);
  const auto off = build_tables(m, 8);
  Counted c = open_counted(m, qed::OpenOptions{});
  {
    std::lock_guard lock(c.shared->mu);
    for (uint64_t o : off)
      c.shared->delay_ms_at[o] = 150;
  }
  constexpr unsigned kThreads = 16;
  std::atomic<int> bad{0};
  {
    std::latch start(kThreads);
    std::vector<std::thread> th;
    for (unsigned t = 0; t < kThreads; t++)
      th.emplace_back([&, t] {
        start.arrive_and_wait();
        uint8_t buf[2] = {9, 9};
        // Data cluster 0 of table 3 (value 4), from every thread at once.
        if (!c.img->read(buf, 2, 3 * kSpan + (t % 2)).is_ok())
          bad++;
        if (buf[0] != (t % 2 ? 0 : 4) || buf[1] != 0)
          bad++;
      });
    for (auto &x : th)
      x.join();
  }
  CHECK(bad == 0);
  CHECK(c.reads_at(off[3]) == 1);

  // Misses on different tables do not wait for each other.
  const auto t0 = std::chrono::steady_clock::now();
  {
    std::latch start(8);
    std::vector<std::thread> th;
    for (unsigned t = 0; t < 8; t++)
      th.emplace_back([&, t] {
        start.arrive_and_wait();
        if (t != 3)
          touch(*c.img, t);
      });
    for (auto &x : th)
      x.join();
  }
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::steady_clock::now() - t0)
                      .count();
  CHECK(ms < 7 * 150 / 2);  // sequential misses would take 7 * 150 ms
  for (uint64_t i = 0; i < 8; i++)
    CHECK(c.reads_at(off[i]) == 1);
}

TEST_CASE("a failed table read is not cached and the next read retries") {
  qt::TempDir dir;
  qt::MemImage m = qt::MemImage::create(dir, "fail.qed", 2 * kSpan, kCs, kTs);
  build_tables(m, 2);
  auto img = qt::open_mem(m, qed::OpenOptions{});
  m.last_fault->fail_nth(qed::FileOp::kRead, 1, EIO);
  uint8_t b = 0;
  const Status s = img->read(&b, 1, kSpan);
  CHECK(!s.is_ok());
  CHECK(s.errno_value() == EIO);
  REQUIRE(img->read(&b, 1, kSpan).is_ok());
  CHECK(b == 2);
}

TEST_SUITE_END();

// Kept apart: with the bug present this crashes (use after free), so it
// must not take the other cache tests down with it.
TEST_SUITE_BEGIN("l2cache-evict-new");

TEST_CASE("a write creating a second table with a one-table cache") {
  // The first table becomes dirty; creating the second pushes the cache over
  // its budget, and the only evictable table is the new one.
  qt::TempDir dir;
  qt::MemImage m = qt::MemImage::create(dir, "evict.qed", 4 * kSpan, kCs, kTs);
  std::vector<uint8_t> model(4 * kSpan, 0);
  {
    auto img = qt::open_mem(m, qt::rw_options(kTableBytes));
    std::vector<uint8_t> buf(3 * kCs);
    qt::fill_pattern(buf.data(), buf.size(), 77);
    const uint64_t pos = kSpan - kCs - 7;  // crosses into the second table
    const Status s = img->write(buf.data(), buf.size(), pos, false);
    INFO(s.message());
    REQUIRE(s.is_ok());
    std::memcpy(model.data() + pos, buf.data(), buf.size());
    QT_CHECK_SAME(qt::read_all(*img), model);
    REQUIRE(img->close().is_ok());
  }
  auto img = qt::open_mem(m, qt::rw_options(kTableBytes));
  QT_CHECK_SAME(qt::read_all(*img), model);
  CHECK(qt::check_structure(m.mem->contents()).empty());
}

TEST_SUITE_END();

TEST_CASE("DirtySectors counts marks once and finds maximal runs") {
  qed::DirtySectors d(10 * 64 + 1);  // 11 sectors, the last one partly used
  REQUIRE(d.sectors() == 11);
  CHECK(!d.any());
  d.mark(0);
  d.mark(0);
  d.mark(2, 3);  // 2, 3, 4
  d.mark(4);
  d.mark(10);
  CHECK(d.count() == 5);
  std::vector<std::pair<uint64_t, uint64_t>> runs;
  d.for_each_run([&](uint64_t first, uint64_t n) { runs.emplace_back(first, n); });
  CHECK(runs == std::vector<std::pair<uint64_t, uint64_t>>{{0, 1}, {2, 3}, {10, 1}});
  d.clear(1, 3);  // 1 was clean: only 2 and 3 count
  CHECK(d.count() == 3);
  CHECK(!d.test(3));
  CHECK(d.test(4));
  runs.clear();
  d.for_each_run([&](uint64_t first, uint64_t n) { runs.emplace_back(first, n); });
  CHECK(runs == std::vector<std::pair<uint64_t, uint64_t>>{{0, 1}, {4, 1}, {10, 1}});
  d.clear(0, 11);
  CHECK(!d.any());
}
