// Image reads and writes against a reference model (a plain byte vector), for
// every table size and a range of cluster sizes, on in-memory and real files.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>

#include "lib/image.h"
#include "tests/unit/test_util.h"

using qed::Image;
using qed::Status;

TEST_SUITE_BEGIN("image");

namespace {

struct Geo {
  uint32_t cs;
  uint32_t ts;
  uint64_t size;
};

// A size that crosses at least one L2 table boundary when it can without
// exceeding `cap`, ends in a partial cluster, and is a multiple of 512.
uint64_t pick_size(uint32_t cs, uint32_t ts, uint64_t cap) {
  const uint64_t span = uint64_t(ts) * cs / 8 * cs;
  uint64_t size = 2 * span + span / 3;
  if (size > (8ull << 20))
    size = span + span / 8;
  if (size > cap)
    size = std::min<uint64_t>(cap, 6ull << 20);
  size = size / cs * cs + 1536;  // a partial last cluster
  return std::min(size, qed::max_image_size(cs, ts));
}

// Offsets near the interesting places: cluster and table boundaries, the
// end of the image, or anywhere.
uint64_t pick_pos(qt::Rng &r, const qed::Geometry &g) {
  const uint64_t size = g.image_size();
  const uint64_t cs = g.cluster_size();
  const uint64_t span = g.l2_span_bytes();
  uint64_t anchor;
  switch (r.below(5)) {
  case 0: anchor = r.below(size / cs + 1) * cs; break;
  case 1: anchor = r.below(size / span + 1) * span; break;
  case 2: anchor = size; break;
  default: return r.below(size);
  }
  const uint64_t delta = r.below(3 * cs);
  const uint64_t pos = r.chance(50) ? (anchor > delta ? anchor - delta : 0) : anchor + delta;
  return std::min(pos, size - 1);
}

uint64_t pick_len(qt::Rng &r, const qed::Geometry &g, uint64_t pos) {
  const uint64_t cs = g.cluster_size();
  uint64_t len;
  switch (r.below(4)) {
  case 0: len = r.range(1, 1024); break;
  case 1: len = r.range(1, cs + 10); break;
  case 2: len = r.range(cs, 4 * cs); break;
  default: len = r.range(1, std::min<uint64_t>(4 << 20, 8 * cs)); break;
  }
  return std::min(len, g.image_size() - pos);
}

// Applies random operations to `img` and `model`, checking reads as it goes.
void random_ops(Image &img, std::vector<uint8_t> &model, qt::Rng &r, int ops, bool trim_zeroes) {
  const qed::Geometry &g = img.geometry();
  const uint64_t cs = g.cluster_size();
  std::vector<uint8_t> buf;
  for (int i = 0; i < ops; i++) {
    const uint64_t pos = pick_pos(r, g);
    const uint64_t len = pick_len(r, g, pos);
    CAPTURE(i);
    CAPTURE(pos);
    CAPTURE(len);
    const unsigned kind = unsigned(r.below(10));
    if (kind < 5) {
      buf.resize(len);
      qt::fill_pattern(buf.data(), len, r.next());
      const Status s = img.write(buf.data(), len, pos, r.chance(10));
      INFO("write: " << s.message());
      REQUIRE(s.is_ok());
      std::memcpy(model.data() + pos, buf.data(), len);
    } else if (kind < 7) {
      qed::ZeroFlags f;
      f.may_trim = r.chance(50);
      f.fua = r.chance(10);
      const Status s = img.zero(pos, len, f);
      INFO("zero: " << s.message());
      REQUIRE(s.is_ok());
      std::memset(model.data() + pos, 0, len);
    } else if (kind < 8) {
      const Status s = img.trim(pos, len, r.chance(10));
      INFO("trim: " << s.message());
      REQUIRE(s.is_ok());
      if (trim_zeroes) {
        // Whole clusters inside the range read as zeroes afterwards (no
        // backing file, a file that can punch holes); the rest is kept.
        const uint64_t first = (pos + cs - 1) / cs * cs;
        const uint64_t last = std::min((pos + len) / cs * cs, g.image_size());
        if (first < last)
          std::memset(model.data() + first, 0, last - first);
      }
    } else if (kind < 9) {
      buf.resize(len);
      const Status s = img.read(buf.data(), len, pos);
      INFO("read: " << s.message());
      REQUIRE(s.is_ok());
      INFO("read differs from the model");
      REQUIRE(std::memcmp(buf.data(), model.data() + pos, len) == 0);
    } else {
      const Status s = img.flush();
      INFO("flush: " << s.message());
      REQUIRE(s.is_ok());
    }
  }
}

void check_header_clean(Image &img) {
  const qed::Header h = img.header();
  CHECK(!h.needs_check());
}

// The whole scenario on an image in memory.
void exercise_memory(const Geo &geo, uint64_t seed, int batches, int ops) {
  qt::TempDir dir;
  qt::MemImage m = qt::MemImage::create(dir, "t.qed", geo.size, geo.cs, geo.ts);
  // Reused from one geometry to the next: fresh pages are slow to fault in.
  static std::vector<uint8_t> model, got;
  model.assign(geo.size, 0);
  auto same = [&](Image &img) {
    qt::read_all_into(img, got);
    QT_CHECK_SAME(got, model);
  };
  qt::Rng r(seed);
  {
    auto img = qt::open_mem(m, qt::rw_options());
    REQUIRE(img->size() == geo.size);
    for (int b = 0; b < batches; b++) {
      random_ops(*img, model, r, ops, true);
      same(*img);
    }
    REQUIRE(img->flush().is_ok());
    const Status s = img->close();
    INFO(s.message());
    REQUIRE(s.is_ok());
  }
  const std::string problem = qt::check_structure(m.mem->contents());
  INFO(problem);
  CHECK(problem.empty());
  {
    auto img = qt::open_mem(m, qt::rw_options());
    check_header_clean(*img);
    same(*img);
    // More changes after a reopen, then a read-only reopen.
    random_ops(*img, model, r, ops, true);
    same(*img);
    REQUIRE(img->close().is_ok());
  }
  {
    qed::OpenOptions ro;
    auto img = qt::open_mem(m, ro);
    CHECK(img->read_only());
    same(*img);
    uint8_t byte = 1;
    const Status s = img->write(&byte, 1, 0, false);
    CHECK(s.code() == Status::Code::kReadOnly);
    CHECK(img->zero(0, 1, {}).code() == Status::Code::kReadOnly);
    CHECK(img->trim(0, geo.cs, false).code() == Status::Code::kReadOnly);
  }
  CHECK(qt::check_structure(m.mem->contents()).empty());
}

}  // namespace

TEST_CASE("random writes, zeroes and trims match a reference model (MemoryFile)") {
  const uint64_t cap = 40ull << 20;
  uint64_t seed = 1;
  for (uint32_t cs : {4096u, 8192u, 65536u, 1u << 20})
    for (uint32_t ts : {1u, 2u, 4u, 8u, 16u}) {
      if (cs == (1u << 20) && (ts == 2 || ts == 8))
        continue;  // 16 MiB tables make memory files slow; the rest covers them
      const Geo geo{cs, ts, pick_size(cs, ts, cs >= (1u << 20) ? 24ull << 20 : cap)};
      CAPTURE(cs);
      CAPTURE(ts);
      CAPTURE(geo.size);
      exercise_memory(geo, seed++, 2, cs >= (1u << 20) ? 12 : 30);
    }
}

TEST_CASE("random operations on real files, including 64 MiB clusters") {
  struct Case {
    uint32_t cs, ts;
    uint64_t size;
    int ops;
  } cases[] = {
      {4096, 4, pick_size(4096, 4, 24ull << 20), 40},
      {4096, 1, pick_size(4096, 1, 8ull << 20), 40},
      {2u << 20, 16, (5ull << 20) + 512, 12},
      {64u << 20, 1, (64ull << 20) + 1024, 6},
  };
  uint64_t seed = 100;
  for (const Case &c : cases) {
    CAPTURE(c.cs);
    CAPTURE(c.ts);
    qt::TempDir dir;
    const std::string path = dir.file("p.qed");
    qt::make_image(path, c.size, c.cs, c.ts);
    static std::vector<uint8_t> model, got;
    model.assign(c.size, 0);
    qt::Rng r(seed++);
    {
      auto img = qt::open_path(path, qt::rw_options());
      // Trim zeroes whole clusters only where the file system can punch
      // holes; elsewhere it leaves the data as it was.
      random_ops(*img, model, r, c.ops, img->can_punch_holes());
      qt::read_all_into(*img, got);
      QT_CHECK_SAME(got, model);
      REQUIRE(img->close().is_ok());
    }
    {
      auto img = qt::open_path(path, qt::rw_options());
      check_header_clean(*img);
      qt::read_all_into(*img, got);
      QT_CHECK_SAME(got, model);
      REQUIRE(img->close().is_ok());
    }
    if (c.cs <= (64u << 10))
      CHECK(qt::check_structure(qt::read_whole_file(path)).empty());
  }
}

TEST_CASE("a write of cluster_size-1 clusters leaves the neighbour cluster alone") {
  // QEMU counts clusters as bytes / (cs - 1): with 4 KiB clusters and tables
  // of >= 4095 entries, writing k >= 4095 clusters also re-points the next
  // k / 4095 entries, losing the clusters written there before.
  for (uint32_t ts : {8u, 16u}) {
    CAPTURE(ts);
    const uint64_t k = ts == 8 ? 4095 : 8190;
    const uint64_t span = uint64_t(ts) * 4096 / 8 * 4096;
    const uint64_t size = span + (64 << 10);  // a little of a second table
    qt::TempDir dir;
    qt::MemImage m = qt::MemImage::create(dir, "n.qed", size, 4096, ts);
    std::vector<uint8_t> model(size, 0);
    {
      auto img = qt::open_mem(m, qt::rw_options());
      // Neighbours after the run, including the first cluster of the next table.
      const uint64_t neighbours = (span / 4096) - k + 1;
      for (uint64_t c = k; c < k + neighbours; c++) {
        std::vector<uint8_t> n(4096, uint8_t(0xc0 + c - k));
        REQUIRE(img->write(n.data(), 4096, c * 4096, false).is_ok());
        std::memcpy(model.data() + c * 4096, n.data(), 4096);
      }
      REQUIRE(img->flush().is_ok());
      std::vector<uint8_t> big(k * 4096, 0xab);
      REQUIRE(img->write(big.data(), big.size(), 0, false).is_ok());
      std::memset(model.data(), 0xab, big.size());
      for (uint64_t c = k; c < k + neighbours; c++) {
        CAPTURE(c);
        std::vector<uint8_t> back(4096);
        REQUIRE(img->read(back.data(), 4096, c * 4096).is_ok());
        CHECK(back == std::vector<uint8_t>(model.begin() + int64_t(c * 4096),
                                           model.begin() + int64_t(c * 4096 + 4096)));
      }
      QT_CHECK_SAME(qt::read_all(*img), model);
      REQUIRE(img->close().is_ok());
      // No cluster was allocated beyond the ones written: header, L1, two
      // tables, k + neighbours data clusters.
      const auto bytes = m.mem->contents();
      CHECK(qt::check_structure(bytes).empty());
      CHECK(bytes.size() == 4096 + uint64_t(ts) * 4096 * 3 + (k + neighbours) * 4096);
    }
    auto img = qt::open_mem(m, qt::rw_options());
    QT_CHECK_SAME(qt::read_all(*img), model);
  }
}

TEST_CASE("zeroing a whole L2 table of data leaves the next table's cluster alone") {
  qt::TempDir dir;
  const uint64_t size = (16ull << 20) + (64 << 10);
  qt::MemImage m = qt::MemImage::create(dir, "z.qed", size, 4096, 8);
  std::vector<uint8_t> model(size, 0);
  auto img = qt::open_mem(m, qt::rw_options());
  std::vector<uint8_t> data(16 << 20);
  qt::fill_pattern(data.data(), data.size(), 5);
  REQUIRE(img->write(data.data(), data.size(), 0, false).is_ok());
  std::memcpy(model.data(), data.data(), data.size());
  std::vector<uint8_t> n(4096, 0x5a);
  REQUIRE(img->write(n.data(), 4096, 16 << 20, false).is_ok());
  std::memset(model.data() + (16 << 20), 0x5a, 4096);
  REQUIRE(img->flush().is_ok());
  for (bool may_trim : {false, true}) {
    qed::ZeroFlags f;
    f.may_trim = may_trim;
    REQUIRE(img->zero(0, 4096, f).is_ok());
    REQUIRE(img->zero(0, 16 << 20, f).is_ok());
    std::memset(model.data(), 0, 16 << 20);
    QT_CHECK_SAME(qt::read_all(*img), model);
  }
  REQUIRE(img->close().is_ok());
  img = qt::open_mem(m, qt::rw_options());
  QT_CHECK_SAME(qt::read_all(*img), model);
}

TEST_CASE("unaligned writes inside one cluster keep the bytes around them") {
  qt::TempDir dir;
  qt::MemImage m = qt::MemImage::create(dir, "u.qed", 1 << 20, 4096, 1);
  auto img = qt::open_mem(m, qt::rw_options());
  std::vector<uint8_t> model(1 << 20, 0);
  const uint8_t a[3] = {1, 2, 3};
  REQUIRE(img->write(a, 3, 4097, false).is_ok());
  std::memcpy(&model[4097], a, 3);
  const uint8_t b[5] = {9, 8, 7, 6, 5};
  REQUIRE(img->write(b, 5, 4095, false).is_ok());  // crosses into the allocated cluster
  std::memcpy(&model[4095], b, 5);
  const uint8_t c[1] = {0x42};
  REQUIRE(img->write(c, 1, (1 << 20) - 1, false).is_ok());  // the very last byte
  model[(1 << 20) - 1] = 0x42;
  QT_CHECK_SAME(qt::read_all(*img), model);
  REQUIRE(img->zero(4098, 1, {}).is_ok());
  model[4098] = 0;
  QT_CHECK_SAME(qt::read_all(*img), model);
  REQUIRE(img->close().is_ok());
  img = qt::open_mem(m, qt::rw_options());
  QT_CHECK_SAME(qt::read_all(*img), model);
}

TEST_CASE("a zero-sized image opens and a grown image keeps its data") {
  qt::TempDir dir;
  qt::MemImage m = qt::MemImage::create(dir, "g.qed", 8192, 4096, 1);
  {
    auto img = qt::open_mem(m, qt::rw_options());
    const uint8_t x[2] = {7, 7};
    REQUIRE(img->write(x, 2, 8190, false).is_ok());
    REQUIRE(img->close().is_ok());
  }
  qed::OpenOptions o = qt::rw_options();
  o.grow_to = (3 << 20) + 100;  // rounded up to 512
  auto img = qt::open_mem(m, o);
  CHECK(img->size() == (3 << 20) + 512);
  std::vector<uint8_t> model(img->size(), 0);
  model[8190] = model[8191] = 7;
  const uint8_t y = 9;
  REQUIRE(img->write(&y, 1, img->size() - 1, false).is_ok());
  model.back() = 9;
  QT_CHECK_SAME(qt::read_all(*img), model);
  REQUIRE(img->close().is_ok());
  img = qt::open_mem(m, qt::rw_options());
  CHECK(img->size() == model.size());
  QT_CHECK_SAME(qt::read_all(*img), model);
}

TEST_CASE("open errors name the file and the problem") {
  qt::TempDir dir;
  const std::string path = dir.file("e.qed");
  SUBCASE("file smaller than a header") {
    qt::write_whole_file(path, std::vector<uint8_t>(40, 0));
    auto r = Image::open(path, qed::OpenOptions{});
    REQUIRE(!r.is_ok());
    CHECK(r.status().code() == Status::Code::kCorruption);
    CHECK(r.status().message().find(path) != std::string::npos);
  }
  SUBCASE("bad magic") {
    qt::make_image(path, 1 << 20, 65536, 4);
    qt::patch_file(path, 0, "QEF", 3);
    auto r = Image::open(path, qed::OpenOptions{});
    REQUIRE(!r.is_ok());
    CHECK(r.status().code() == Status::Code::kCorruption);
    CHECK(r.status().message().find(path) != std::string::npos);
    CHECK(r.status().message().find("magic") != std::string::npos);
  }
  SUBCASE("unknown feature") {
    qt::make_image(path, 1 << 20, 65536, 4);
    uint8_t f[8];
    qt::put_le64(f, 0x8);
    qt::patch_file(path, 16, f, 8);
    auto r = Image::open(path, qed::OpenOptions{});
    REQUIRE(!r.is_ok());
    CHECK(r.status().code() == Status::Code::kNotSupported);
  }
  SUBCASE("truncated L1 table") {
    qt::make_image(path, 1 << 20, 65536, 4);
    std::filesystem::resize_file(path, 200000);
    auto r = Image::open(path, qed::OpenOptions{});
    REQUIRE(!r.is_ok());
    CHECK(r.status().message().find("does not fit") != std::string::npos);
  }
  SUBCASE("growing read-only, shrinking, and past the maximum") {
    qt::make_image(path, 1 << 20, 4096, 1);
    qed::OpenOptions o;
    o.grow_to = 2 << 20;
    auto r = Image::open(path, o);
    REQUIRE(!r.is_ok());
    CHECK(r.status().code() == Status::Code::kReadOnly);
    o = qt::rw_options();
    o.grow_to = 512;
    r = Image::open(path, o);
    REQUIRE(!r.is_ok());
    CHECK(r.status().code() == Status::Code::kInvalidArgument);
    o.grow_to = (1ull << 30) + 512;  // 4 KiB / 1: at most 1 GiB
    r = Image::open(path, o);
    REQUIRE(!r.is_ok());
    CHECK(r.status().code() == Status::Code::kInvalidArgument);
    o.grow_to = 1ull << 30;
    r = Image::open(path, o);
    REQUIRE(r.is_ok());
    CHECK((*r)->size() == 1ull << 30);
  }
}

TEST_CASE("autoclear bits are cleared by a read-write open only") {
  qt::TempDir dir;
  const std::string path = dir.file("ac.qed");
  qt::make_image(path, 1 << 20, 65536, 4);
  uint8_t v[8];
  qt::put_le64(v, 1ull << 40);
  qt::patch_file(path, 32, v, 8);
  qt::put_le64(v, 0xff);
  qt::patch_file(path, 24, v, 8);  // unknown compat bits are ignored
  {
    auto img = qt::open_path(path, qed::OpenOptions{});
    CHECK(img->header().autoclear_features == 1ull << 40);
  }
  CHECK(qt::get_le64(&qt::read_whole_file(path)[32]) == 1ull << 40);
  {
    auto img = qt::open_path(path, qt::rw_options());
    CHECK(img->header().autoclear_features == 0);
    REQUIRE(img->close().is_ok());
  }
  const auto f = qt::read_whole_file(path);
  CHECK(qt::get_le64(&f[32]) == 0);
  CHECK(qt::get_le64(&f[24]) == 0xff);
}

TEST_CASE("invalid table entries: errors, and entries past the end read as unallocated") {
  qt::TempDir dir;
  const std::string path = dir.file("inv.qed");
  const uint64_t cs = 65536;
  qt::make_image(path, 8 << 20, uint32_t(cs), 1);
  {
    auto img = qt::open_path(path, qt::rw_options());
    std::vector<uint8_t> d(2 * cs, 0x44);
    REQUIRE(img->write(d.data(), d.size(), 0, false).is_ok());
    REQUIRE(img->close().is_ok());
  }
  const auto f = qt::read_whole_file(path);
  const uint64_t l2 = qt::get_le64(&f[cs]);  // L1 entry 0
  REQUIRE(l2 != 0);
  const uint64_t d0 = qt::get_le64(&f[l2]);
  REQUIRE(d0 % cs == 0);
  uint8_t e[8];
  SUBCASE("a misaligned L2 entry fails the read") {
    qt::put_le64(e, d0 + 512);
    qt::patch_file(path, l2, e, 8);
    auto img = qt::open_path(path, qed::OpenOptions{});
    uint8_t b;
    const Status s = img->read(&b, 1, 0);
    CHECK(s.code() == Status::Code::kCorruption);
    CHECK(s.message().find(path) != std::string::npos);
    CHECK(!img->extents(0, cs, 4).is_ok());
    // The next cluster is fine.
    CHECK(img->read(&b, 1, cs).is_ok());
    CHECK(b == 0x44);
  }
  SUBCASE("an L2 entry pointing into the L1 table fails the read") {
    qt::put_le64(e, cs);
    qt::patch_file(path, l2, e, 8);
    auto img = qt::open_path(path, qed::OpenOptions{});
    uint8_t b;
    CHECK(img->read(&b, 1, 10).code() == Status::Code::kCorruption);
  }
  SUBCASE("an L1 entry inside the header fails reads of its span") {
    qt::put_le64(e, 0);
    uint8_t one[8];
    qt::put_le64(one, 4096 * 3);
    qt::patch_file(path, cs, one, 8);
    auto img = qt::open_path(path, qed::OpenOptions{});
    uint8_t b;
    CHECK(img->read(&b, 1, 10).code() == Status::Code::kCorruption);
  }
  SUBCASE("an L2 entry past the end of the file reads as unallocated and is not reused") {
    qt::put_le64(e, f.size() + 10 * cs);
    qt::patch_file(path, l2 + 8, e, 8);  // cluster 1
    {
      auto img = qt::open_path(path, qed::OpenOptions{});
      std::vector<uint8_t> b(2 * cs);
      REQUIRE(img->read(b.data(), b.size(), 0).is_ok());
      CHECK(b[0] == 0x44);
      CHECK(b[cs] == 0);
    }
    {
      // Writes after a read-write open allocate past that stale offset or
      // forget it; either way the file stays consistent.
      auto img = qt::open_path(path, qt::rw_options());
      std::vector<uint8_t> w(cs / 2, 0x55);
      for (uint64_t c = 2; c < 16; c++)
        REQUIRE(img->write(w.data(), w.size(), c * cs, false).is_ok());
      uint8_t b = 1;
      REQUIRE(img->read(&b, 1, cs).is_ok());
      CHECK(b == 0);
      REQUIRE(img->close().is_ok());
    }
    CHECK(qt::check_structure(qt::read_whole_file(path)).empty());
  }
}

TEST_CASE("two L1 entries naming one L2 table: errors, never a read or write past the table") {
  // 4 KiB clusters, one-cluster tables: 512 entries, 2 MiB per table. The
  // second table covers only 1 MiB of the image, so it is loaded with 256
  // entries; the first needs all 512. Found by fuzz_translate (ASan: a read
  // past the table's entries, and writes through it).
  qt::TempDir dir;
  const std::string path = dir.file("shared-table.qed");
  const uint64_t cs = 4096, span = 2 << 20;
  qt::make_image(path, 3 << 20, uint32_t(cs), 1);
  {
    auto img = qt::open_path(path, qt::rw_options());
    std::vector<uint8_t> d(cs, 0x44);
    REQUIRE(img->write(d.data(), d.size(), 0, false).is_ok());
    REQUIRE(img->write(d.data(), d.size(), span, false).is_ok());
    REQUIRE(img->close().is_ok());
  }
  std::vector<uint8_t> f = qt::read_whole_file(path);
  std::memcpy(&f[cs + 8], &f[cs], 8);  // L1 entry 1 := L1 entry 0
  auto img = qt::open_on(path, std::make_unique<qed::MemoryFile>(f, path), qt::rw_options());
  std::vector<uint8_t> b(cs);
  REQUIRE(img->read(b.data(), cs, span).is_ok());  // loads the table for entry 1
  const Status r = img->read(b.data(), cs, span - cs);  // entry 511 of entry 0's span
  CHECK(r.code() == Status::Code::kCorruption);
  CHECK(r.message().find(path) != std::string::npos);
  CHECK(img->write(b.data(), cs, span - cs, false).code() == Status::Code::kCorruption);
  CHECK(img->zero(span - cs, cs, qed::ZeroFlags{}).code() == Status::Code::kCorruption);
}

TEST_SUITE_END();
