// Many threads writing, zeroing, trimming, reading and flushing one image.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <latch>
#include <set>
#include <thread>

#include "lib/image.h"
#include "tests/unit/test_util.h"

using qed::Image;
using qed::Status;

TEST_SUITE_BEGIN("concurrency");

namespace {

constexpr uint32_t kCs = 4096;
constexpr uint32_t kTs = 1;                                  // 512 entries per table
constexpr uint64_t kSpan = uint64_t(kTs) * kCs / 8 * kCs;    // 2 MiB per L2 table
constexpr unsigned kThreads = 16;

// Runs fn(t) on kThreads threads that start together.
template <typename Fn>
void run_threads(unsigned n, Fn fn) {
  std::latch start(n);
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < n; t++)
    threads.emplace_back([&, t] {
      start.arrive_and_wait();
      fn(t);
    });
  for (auto &th : threads)
    th.join();
}

// Records failures from worker threads (doctest assertions are not meant to
// be used concurrently), to be checked on the main thread.
struct Failures {
  std::mutex mu;
  std::vector<std::string> messages;
  void add(const std::string &m) {
    std::lock_guard lock(mu);
    messages.push_back(m);
  }
  void check() {
    for (const auto &m : messages)
      FAIL_CHECK(m);
    CHECK(messages.empty());
  }
};

uint64_t expected_file_bytes(uint64_t tables, uint64_t clusters) {
  return kCs + uint64_t(kTs) * kCs + tables * kTs * kCs + clusters * kCs;
}

// Which clusters and tables the writes in `model_written` touched.
struct Usage {
  std::set<uint64_t> clusters, tables;
  void add(uint64_t pos, uint64_t len) {
    for (uint64_t c = pos / kCs; c <= (pos + len - 1) / kCs; c++) {
      clusters.insert(c);
      tables.insert(c * kCs / kSpan);
    }
  }
};

void verify_reopen(qt::MemImage &m, const std::vector<uint8_t> &model, const Usage &usage) {
  const auto bytes = m.mem->contents();
  const std::string problem = qt::check_structure(bytes);
  INFO(problem);
  CHECK(problem.empty());
  // No cluster was allocated twice: the file holds exactly the header, L1,
  // the tables and the clusters written.
  CHECK(bytes.size() <= expected_file_bytes(usage.tables.size(), usage.clusters.size()));
  auto img = qt::open_mem(m, qt::rw_options());
  CHECK(!img->header().needs_check());
  QT_CHECK_SAME(qt::read_all(*img), model);
  REQUIRE(img->close().is_ok());
}

}  // namespace

TEST_CASE("parallel allocating writes into the same L2 table, different clusters") {
  qt::TempDir dir;
  const uint64_t size = 8 * kSpan;
  qt::MemImage m = qt::MemImage::create(dir, "a.qed", size, kCs, kTs);
  std::vector<uint8_t> model(size, 0);
  Usage usage;
  Failures failures;
  {
    auto img = qt::open_mem(m, qt::rw_options());
    // Thread t writes clusters c = t, t + 16, ... of table 0, each with an
    // odd offset and length inside the cluster, in its own random order.
    struct W {
      uint64_t pos, len, seed;
    };
    std::vector<std::vector<W>> plan(kThreads);
    qt::Rng r(3);
    for (uint64_t c = 0; c < kSpan / kCs; c++) {
      const uint64_t off = r.below(kCs / 2) | 1;
      const uint64_t len = r.range(1, kCs - off);
      plan[c % kThreads].push_back({c * kCs + off, len, r.next()});
    }
    for (auto &p : plan)
      for (size_t i = p.size(); i > 1; i--)
        std::swap(p[i - 1], p[r.below(i)]);
    run_threads(kThreads, [&](unsigned t) {
      std::vector<uint8_t> buf;
      for (const W &w : plan[t]) {
        buf.resize(w.len);
        qt::fill_pattern(buf.data(), w.len, w.seed);
        Status s = img->write(buf.data(), w.len, w.pos, false);
        if (!s.is_ok())
          failures.add("write: " + s.message());
      }
    });
    failures.check();
    for (const auto &p : plan)
      for (const W &w : p) {
        qt::fill_pattern(model.data() + w.pos, w.len, w.seed);
        usage.add(w.pos, w.len);
      }
    QT_CHECK_SAME(qt::read_all(*img), model);
    REQUIRE(img->close().is_ok());
  }
  verify_reopen(m, model, usage);
}

TEST_CASE("parallel writes of disjoint bytes in the same clusters") {
  // Every thread touches every cluster, so the threads race to allocate the
  // same clusters; each cluster must be allocated once and keep every
  // thread's bytes.
  qt::TempDir dir;
  const uint64_t size = 4 * kSpan;
  qt::MemImage m = qt::MemImage::create(dir, "o.qed", size, kCs, kTs);
  std::vector<uint8_t> model(size, 0);
  Usage usage;
  Failures failures;
  const uint64_t first = kSpan - 32 * kCs;  // 64 clusters across the first table boundary
  const uint64_t clusters = 64;
  const uint64_t slice = kCs / kThreads;   // 256 bytes per thread per cluster
  {
    auto img = qt::open_mem(m, qt::rw_options());
    run_threads(kThreads, [&](unsigned t) {
      qt::Rng r(t + 1);
      std::vector<uint64_t> order(clusters);
      for (uint64_t i = 0; i < clusters; i++)
        order[i] = i;
      for (size_t i = order.size(); i > 1; i--)
        std::swap(order[i - 1], order[r.below(i)]);
      std::vector<uint8_t> buf(slice);
      for (uint64_t c : order) {
        const uint64_t pos = first + c * kCs + t * slice;
        qt::fill_pattern(buf.data(), slice, pos);
        Status s = img->write(buf.data(), slice, pos, false);
        if (!s.is_ok())
          failures.add("write: " + s.message());
      }
    });
    failures.check();
    for (uint64_t c = 0; c < clusters; c++)
      for (unsigned t = 0; t < kThreads; t++) {
        const uint64_t pos = first + c * kCs + t * slice;
        qt::fill_pattern(model.data() + pos, slice, pos);
        usage.add(pos, slice);
      }
    QT_CHECK_SAME(qt::read_all(*img), model);
    REQUIRE(img->flush().is_ok());
    // Exactly: nothing was allocated twice.
    CHECK(m.mem->contents().size() ==
          expected_file_bytes(usage.tables.size(), usage.clusters.size()));
    REQUIRE(img->close().is_ok());
  }
  verify_reopen(m, model, usage);
}

TEST_CASE("parallel writes each creating new L2 tables") {
  qt::TempDir dir;
  const uint64_t size = 2 * kThreads * kSpan + 512;
  qt::MemImage m = qt::MemImage::create(dir, "b.qed", size, kCs, kTs);
  std::vector<uint8_t> model(size, 0);
  Usage usage;
  Failures failures;
  {
    auto img = qt::open_mem(m, qt::rw_options());
    // Thread t owns tables 2t and 2t+1; its writes cross the boundary
    // between them and land in scattered clusters.
    run_threads(kThreads, [&](unsigned t) {
      qt::Rng r(100 + t);
      std::vector<uint8_t> buf;
      const uint64_t base = 2 * t * kSpan;
      for (int i = 0; i < 12; i++) {
        const uint64_t pos = i == 0 ? base + kSpan - 1000 : base + r.below(2 * kSpan - 3 * kCs);
        const uint64_t len = i == 0 ? 5000 : r.range(1, 3 * kCs);
        buf.resize(len);
        qt::fill_pattern(buf.data(), len, pos * 31 + len);
        Status s = img->write(buf.data(), len, pos, false);
        if (!s.is_ok())
          failures.add("write: " + s.message());
      }
    });
    failures.check();
    // Replay each thread's writes in order (their ranges are per thread).
    for (unsigned t = 0; t < kThreads; t++) {
      qt::Rng r(100 + t);
      const uint64_t base = 2 * t * kSpan;
      for (int i = 0; i < 12; i++) {
        const uint64_t pos = i == 0 ? base + kSpan - 1000 : base + r.below(2 * kSpan - 3 * kCs);
        const uint64_t len = i == 0 ? 5000 : r.range(1, 3 * kCs);
        qt::fill_pattern(model.data() + pos, len, pos * 31 + len);
        usage.add(pos, len);
      }
    }
    QT_CHECK_SAME(qt::read_all(*img), model);
    REQUIRE(img->close().is_ok());
  }
  verify_reopen(m, model, usage);
}

TEST_CASE("mixed writes, zeroes, trims, reads and flushes on disjoint regions") {
  qt::TempDir dir;
  const uint64_t region = 768 * 1024;  // 192 clusters: regions straddle table boundaries
  const uint64_t size = kThreads * region;
  qt::MemImage m = qt::MemImage::create(dir, "c.qed", size, kCs, kTs);
  std::vector<uint8_t> model(size, 0);
  std::vector<std::vector<std::pair<uint64_t, uint64_t>>> written(kThreads);
  Failures failures;
  {
    auto img = qt::open_mem(m, qt::rw_options());
    run_threads(kThreads, [&](unsigned t) {
      qt::Rng r(500 + t);
      const uint64_t base = t * region;
      uint8_t *mine = model.data() + base;  // only this thread touches it
      std::vector<uint8_t> buf;
      for (int i = 0; i < 60; i++) {
        const uint64_t off = r.below(region);
        const uint64_t len = std::min<uint64_t>(r.range(1, 3 * kCs), region - off);
        const unsigned kind = unsigned(r.below(10));
        Status s;
        if (kind < 5) {
          buf.resize(len);
          qt::fill_pattern(buf.data(), len, r.next());
          s = img->write(buf.data(), len, base + off, r.chance(5));
          if (s.is_ok()) {
            std::memcpy(mine + off, buf.data(), len);
            written[t].emplace_back(base + off, len);
          }
        } else if (kind < 7) {
          qed::ZeroFlags f;
          f.may_trim = r.chance(50);
          s = img->zero(base + off, len, f);
          if (s.is_ok())
            std::memset(mine + off, 0, len);
        } else if (kind < 8) {
          s = img->trim(base + off, len, false);
          const uint64_t a = (off + kCs - 1) / kCs * kCs;  // regions are cluster aligned
          const uint64_t b = (off + len) / kCs * kCs;
          if (s.is_ok() && a < b)
            std::memset(mine + a, 0, b - a);
        } else if (kind < 9) {
          buf.resize(len);
          s = img->read(buf.data(), len, base + off);
          if (s.is_ok() && std::memcmp(buf.data(), mine + off, len) != 0)
            failures.add("thread " + std::to_string(t) + ": read at " +
                         std::to_string(base + off) + " differs from what it wrote");
        } else {
          s = img->flush();
        }
        if (!s.is_ok())
          failures.add("op " + std::to_string(kind) + ": " + s.message());
      }
    });
    failures.check();
    QT_CHECK_SAME(qt::read_all(*img), model);
    REQUIRE(img->close().is_ok());
  }
  Usage usage;
  for (const auto &w : written)
    for (auto [pos, len] : w)
      usage.add(pos, len);
  verify_reopen(m, model, usage);
}

TEST_CASE("threads writing the same clusters: each 512-byte unit holds one writer's data") {
  qt::TempDir dir;
  const uint64_t size = 2 * kSpan;
  qt::MemImage m = qt::MemImage::create(dir, "s.qed", size, kCs, kTs);
  Failures failures;
  std::vector<uint8_t> after;
  struct Round {
    uint64_t pos, len;
  };
  // Unallocated ranges, starting and ending mid-cluster; the last crosses
  // the table boundary.
  const Round rounds[] = {{512, 3 * kCs}, {10 * kCs + 1024, kCs}, {kSpan - 2 * kCs + 512, 4 * kCs}};
  {
    auto img = qt::open_mem(m, qt::rw_options());
    for (const Round &rd : rounds) {
      run_threads(kThreads, [&](unsigned t) {
        std::vector<uint8_t> buf(rd.len, uint8_t(t + 1));
        for (int rep = 0; rep < 3; rep++) {
          Status s = img->write(buf.data(), rd.len, rd.pos, false);
          if (!s.is_ok())
            failures.add("write: " + s.message());
        }
      });
    }
    failures.check();
    after = qt::read_all(*img);
    REQUIRE(img->close().is_ok());
  }
  for (const Round &rd : rounds) {
    CAPTURE(rd.pos);
    for (uint64_t u = rd.pos; u < rd.pos + rd.len; u += 512) {
      CAPTURE(u);
      const uint8_t v = after[u];
      CHECK(v >= 1);
      CHECK(v <= kThreads);
      CHECK(std::all_of(after.begin() + int64_t(u), after.begin() + int64_t(u + 512),
                        [v](uint8_t x) { return x == v; }));
    }
    // The bytes around the range are still zero.
    CHECK(after[rd.pos - 1] == 0);
    CHECK(after[rd.pos + rd.len] == 0);
  }
  Usage usage;
  for (const Round &rd : rounds)
    usage.add(rd.pos, rd.len);
  verify_reopen(m, after, usage);
  // Exactly one allocation per cluster.
  CHECK(m.mem->contents().size() ==
        expected_file_bytes(usage.tables.size(), usage.clusters.size()));
}

TEST_CASE("concurrent reads while another thread allocates") {
  qt::TempDir dir;
  const uint64_t size = 4 * kSpan;
  qt::MemImage m = qt::MemImage::create(dir, "r.qed", size, kCs, kTs);
  auto img = qt::open_mem(m, qt::rw_options());
  std::atomic<bool> done{false};
  Failures failures;
  // The writer fills clusters in order with a value derived from the
  // cluster; readers may see a cluster as zeroes or as its final data, never
  // anything else.
  std::thread writer([&] {
    std::vector<uint8_t> buf(kCs);
    for (uint64_t c = 0; c < size / kCs; c += 3) {
      std::memset(buf.data(), int(c % 251) + 1, kCs);
      Status s = img->write(buf.data(), kCs, c * kCs, false);
      if (!s.is_ok())
        failures.add("write: " + s.message());
      if (c % 90 == 0 && !img->flush().is_ok())
        failures.add("flush failed");
    }
    done = true;
  });
  std::vector<std::thread> readers;
  for (unsigned t = 0; t < 4; t++)
    readers.emplace_back([&, t] {
      qt::Rng r(t);
      std::vector<uint8_t> buf(8 * kCs);
      while (!done) {
        const uint64_t c0 = r.below(size / kCs - 8);
        Status s = img->read(buf.data(), buf.size(), c0 * kCs);
        if (!s.is_ok()) {
          failures.add("read: " + s.message());
          return;
        }
        for (uint64_t i = 0; i < 8; i++) {
          const uint64_t c = c0 + i;
          const uint8_t want = c % 3 == 0 ? uint8_t(c % 251 + 1) : 0;
          for (uint64_t b = 0; b < kCs; b++) {
            const uint8_t v = buf[i * kCs + b];
            if (v != 0 && v != want) {
              failures.add("cluster " + std::to_string(c) + " holds foreign data");
              return;
            }
          }
        }
      }
    });
  writer.join();
  for (auto &th : readers)
    th.join();
  failures.check();
  REQUIRE(img->close().is_ok());
}

TEST_CASE("zero() racing an allocating write still zeroes the rest of its range") {
  // A raw backing file full of 0xbb, so that zeroing unallocated clusters
  // has to mark them as zero clusters. Thread B allocates cluster 10 with a
  // slow data write; meanwhile thread A zeroes clusters 0..63. A must wait
  // for B's cluster (or zero it) and still turn clusters 11..63 into zeroes.
  qt::TempDir dir;
  const uint64_t size = 2 * kSpan;
  qt::write_whole_file(dir.file("base.raw"), std::vector<uint8_t>(size, 0xbb));
  qt::make_image(dir.file("z.qed"), size, kCs, kTs, "base.raw", "raw");
  auto mem = std::make_shared<qed::MemoryFile>(qt::read_whole_file(dir.file("z.qed")),
                                               dir.file("z.qed"));
  auto shared = std::make_shared<qt::CountingFile::Shared>();
  auto img = qt::open_on(dir.file("z.qed"), std::make_unique<qt::CountingFile>(mem, shared),
                         qt::rw_options());
  REQUIRE(img->has_backing());
  {
    std::lock_guard lock(shared->mu);
    shared->delay_writes_of = kCs;  // B's data write (one whole cluster)
    shared->write_delay_ms = 300;
  }
  const uint64_t first = 64 * kCs;  // clusters 64..127 of the image
  std::vector<uint8_t> b(kCs, 0x11);
  Status sa, sb;
  std::thread tb([&] { sb = img->write(b.data(), kCs, first + 10 * kCs, false); });
  while (shared->delayed_writes == 0)  // until B is in its data write
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  std::thread ta([&] { sa = img->zero(first, 64 * kCs, qed::ZeroFlags{}); });
  ta.join();
  tb.join();
  {
    std::lock_guard lock(shared->mu);
    shared->write_delay_ms = 0;
  }
  INFO(sa.message());
  INFO(sb.message());
  REQUIRE(sa.is_ok());
  REQUIRE(sb.is_ok());
  std::vector<uint8_t> got(64 * kCs);
  REQUIRE(img->read(got.data(), got.size(), first).is_ok());
  // Cluster 10 is B's data or zeroes (either order is fine); all others are
  // zeroes, never the backing file's 0xbb.
  std::string backing_shows;  // clusters that still read the backing file
  for (uint64_t c = 0; c < 64; c++) {
    CAPTURE(c);
    const uint8_t v = got[c * kCs];
    if (c == 10)
      CHECK((v == 0x11 || v == 0));
    else if (v != 0)
      backing_shows += " " + std::to_string(c);
    CHECK(std::all_of(got.begin() + int64_t(c * kCs), got.begin() + int64_t((c + 1) * kCs),
                      [v](uint8_t x) { return x == v; }));
  }
  INFO("clusters not zeroed:" << backing_shows);
  CHECK(backing_shows.empty());
  REQUIRE(img->close().is_ok());
}

TEST_SUITE_END();
