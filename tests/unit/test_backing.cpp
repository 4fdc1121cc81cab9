// Backing chains: raw <- qed <- qed, copy-on-write, zero clusters, extents,
// loops and formats we refuse.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>

#include "lib/backing.h"
#include "lib/image.h"
#include "tests/unit/test_util.h"

using qed::Image;
using qed::Status;
using Code = qed::Status::Code;

TEST_SUITE_BEGIN("backing");

namespace {

constexpr uint64_t MiB = 1 << 20;

// A raw file of `size` bytes: pattern in [0, 1 MiB) and [2 MiB, size), a
// hole in [1 MiB, 2 MiB). Returns its contents.
std::vector<uint8_t> make_raw(const std::string &path, uint64_t size, uint64_t seed) {
  std::vector<uint8_t> bytes(size, 0);
  qt::fill_pattern(bytes.data(), MiB, seed);
  qt::fill_pattern(bytes.data() + 2 * MiB, size - 2 * MiB, seed + 1);
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    REQUIRE(out.good());
    out.write(reinterpret_cast<const char *>(bytes.data()), std::streamsize(MiB));
    out.seekp(std::streamoff(2 * MiB));
    out.write(reinterpret_cast<const char *>(bytes.data() + 2 * MiB),
              std::streamsize(size - 2 * MiB));
    REQUIRE(out.good());
  }
  return bytes;
}

qed::OpenOptions ro_options() { return qed::OpenOptions{}; }

void write_ok(Image &img, std::vector<uint8_t> &model, uint64_t pos, std::vector<uint8_t> data) {
  const Status s = img.write(data.data(), data.size(), pos, false);
  INFO(s.message());
  REQUIRE(s.is_ok());
  std::memcpy(model.data() + pos, data.data(), data.size());
}

void zero_ok(Image &img, std::vector<uint8_t> &model, uint64_t pos, uint64_t len,
             bool may_trim = true) {
  qed::ZeroFlags f;
  f.may_trim = may_trim;
  const Status s = img.zero(pos, len, f);
  INFO(s.message());
  REQUIRE(s.is_ok());
  std::memset(model.data() + pos, 0, len);
}

std::vector<uint8_t> bytes_of(uint64_t n, uint8_t v) { return std::vector<uint8_t>(n, v); }

// Expected extent type of every byte: 1 = zero/hole, 0 = data.
using Types = std::vector<uint8_t>;

// Checks one extents() answer against `types`: it starts at `pos`, is
// contiguous, stays within [pos, pos+count), has at most `max` entries,
// adjacent extents differ in type, and each byte's type matches.
void check_extents(Image &img, const Types &types, uint64_t pos, uint64_t count, size_t max) {
  CAPTURE(pos);
  CAPTURE(count);
  CAPTURE(max);
  auto r = img.extents(pos, count, max);
  INFO(r.status().message());
  REQUIRE(r.is_ok());
  const auto &ex = *r;
  REQUIRE(!ex.empty());
  CHECK(ex.size() <= max);
  uint64_t at = pos;
  for (size_t i = 0; i < ex.size(); i++) {
    CAPTURE(i);
    CHECK(ex[i].offset == at);
    CHECK(ex[i].length > 0);
    if (i > 0)
      CHECK(ex[i].zero != ex[i - 1].zero);
    const uint64_t end = std::min(ex[i].offset + ex[i].length, pos + count);
    CHECK(ex[i].offset + ex[i].length <= pos + count);
    for (uint64_t b = ex[i].offset; b < end; b++)
      if (types[b] != uint8_t(ex[i].zero)) {
        FAIL_CHECK("byte " << b << " should be " << (types[b] ? "zero" : "data"));
        break;
      }
    at = ex[i].offset + ex[i].length;
  }
  // When the answer stops early, the type must change there (a merged
  // extent cannot be cut short) unless the limit was reached.
  if (at < pos + count && ex.size() < max)
    FAIL_CHECK("extents stopped at " << at << " with room for more");
}

}  // namespace

TEST_CASE("raw <- qed <- qed chain with relative names: reads, COW, zero clusters, extents") {
  qt::TempDir dir;
  const uint64_t raw_size = 3 * MiB + 1000;  // not even a multiple of 512
  const uint64_t mid_size = 4 * MiB;
  const uint64_t top_size = 6 * MiB;
  const uint64_t mcs = 64 << 10, tcs = 4096;
  const auto raw = make_raw(dir.file("base.raw"), raw_size, 1);
  qt::make_image(dir.file("mid.qed"), mid_size, uint32_t(mcs), 1, "base.raw", "raw");
  qt::make_image(dir.file("top.qed"), top_size, uint32_t(tcs), 2, "mid.qed", "qed");

  // What mid holds, byte by byte, and the extent type of each byte.
  std::vector<uint8_t> mid(mid_size, 0);
  std::copy(raw.begin(), raw.end(), mid.begin());
  Types mid_types(mid_size, 1);
  std::fill(mid_types.begin(), mid_types.begin() + MiB, 0);
  std::fill(mid_types.begin() + 2 * MiB, mid_types.begin() + raw_size, 0);
  {
    auto img = qt::open_path(dir.file("mid.qed"), qt::rw_options());
    CHECK(img->has_backing());
    QT_CHECK_SAME(qt::read_all(*img), mid);
    // A partial write into an unallocated cluster keeps the raw bytes around it.
    write_ok(*img, mid, 5 * mcs + 100, bytes_of(50, 0xa1));
    std::fill(mid_types.begin() + 5 * mcs, mid_types.begin() + 6 * mcs, 0);
    // The same over the hole: the cluster becomes data.
    write_ok(*img, mid, MiB + 3 * mcs + 7, bytes_of(3, 0xa2));
    std::fill(mid_types.begin() + MiB + 3 * mcs, mid_types.begin() + MiB + 4 * mcs, 0);
    // A cluster straddling the end of the raw file: raw bytes, then zeroes.
    write_ok(*img, mid, 3 * MiB + 10, bytes_of(10, 0xa3));
    std::fill(mid_types.begin() + 3 * MiB, mid_types.begin() + 3 * MiB + mcs, 0);
    // Whole clusters zeroed over raw data: zero clusters hide it.
    zero_ok(*img, mid, 8 * mcs, 2 * mcs);
    std::fill(mid_types.begin() + 8 * mcs, mid_types.begin() + 10 * mcs, 1);
    // A partial zero over raw data: allocated, raw bytes around the zeroes.
    zero_ok(*img, mid, 12 * mcs + 1000, 24);
    std::fill(mid_types.begin() + 12 * mcs, mid_types.begin() + 13 * mcs, 0);
    QT_CHECK_SAME(qt::read_all(*img), mid);
    REQUIRE(img->close().is_ok());
  }
  const auto mid_file = qt::read_whole_file(dir.file("mid.qed"));
  {
    auto img = qt::open_path(dir.file("mid.qed"), ro_options());
    QT_CHECK_SAME(qt::read_all(*img), mid);
    check_extents(*img, mid_types, 0, mid_size, 1000);
  }

  std::vector<uint8_t> top(top_size, 0);
  std::copy(mid.begin(), mid.end(), top.begin());
  Types top_types(top_size, 1);
  std::copy(mid_types.begin(), mid_types.end(), top_types.begin());
  {
    auto img = qt::open_path(dir.file("top.qed"), qt::rw_options());
    QT_CHECK_SAME(qt::read_all(*img), top);
    // COW into a cluster over mid's data.
    write_ok(*img, top, 5 * mcs + 4096 + 1, bytes_of(4000, 0xb1));
    std::fill(top_types.begin() + 5 * mcs + 4096, top_types.begin() + 5 * mcs + 2 * 4096, 0);
    // Beyond mid's end: zeroes around.
    write_ok(*img, top, 5 * MiB + 3, bytes_of(5, 0xb2));
    std::fill(top_types.begin() + 5 * MiB, top_types.begin() + 5 * MiB + tcs, 0);
    // Zero clusters over raw data seen through mid.
    zero_ok(*img, top, 20 * tcs, 3 * tcs, false);
    std::fill(top_types.begin() + 20 * tcs, top_types.begin() + 23 * tcs, 1);
    QT_CHECK_SAME(qt::read_all(*img), top);
    check_extents(*img, top_types, 0, top_size, 100000);

    SUBCASE("a partial write into a zero cluster fills with zeroes, not backing data") {
      // QEMU copies the backing file around the data here (its bug 4).
      write_ok(*img, top, 21 * tcs + 2048, bytes_of(512, 0xcc));
      std::vector<uint8_t> c(tcs);
      REQUIRE(img->read(c.data(), tcs, 21 * tcs).is_ok());
      for (uint64_t i = 0; i < tcs; i++)
        if (c[i] != (i >= 2048 && i < 2560 ? 0xcc : 0)) {
          FAIL_CHECK("byte " << i << " of the cluster is " << int(c[i]));
          break;
        }
      std::fill(top_types.begin() + 21 * tcs, top_types.begin() + 22 * tcs, 0);
    }
    SUBCASE("random writes and zeroes over the chain") {
      qt::Rng r(5);
      std::vector<uint8_t> buf;
      for (int i = 0; i < 80; i++) {
        const uint64_t pos = r.below(top_size - 1);
        const uint64_t len = std::min<uint64_t>(r.range(1, 3 * tcs), top_size - pos);
        if (r.chance(70)) {
          buf.resize(len);
          qt::fill_pattern(buf.data(), len, r.next());
          write_ok(*img, top, pos, buf);
          std::fill(top_types.begin() + int64_t(pos / tcs * tcs),
                    top_types.begin() + int64_t(std::min(top_size, (pos + len + tcs - 1) / tcs * tcs)),
                    0);
        } else {
          zero_ok(*img, top, pos, len, r.chance(50));
          // Zeroing changes types in ways this test does not model.
          top_types.clear();
        }
      }
    }
    QT_CHECK_SAME(qt::read_all(*img), top);
    if (!top_types.empty())
      check_extents(*img, top_types, 0, top_size, 100000);
    REQUIRE(img->close().is_ok());
    // Reopen: the same, and mid was never written.
    img.reset();  // its lock would refuse the new open
    img = qt::open_path(dir.file("top.qed"), ro_options());
    QT_CHECK_SAME(qt::read_all(*img), top);
    if (!top_types.empty()) {
      qt::Rng r(9);
      for (int i = 0; i < 60; i++) {
        const uint64_t pos = r.below(top_size);
        const uint64_t count = r.range(1, top_size - pos);
        check_extents(*img, top_types, pos, count, size_t(r.range(1, 6)));
      }
    }
  }
  CHECK(qt::read_whole_file(dir.file("mid.qed")) == mid_file);
}

TEST_CASE("extents never return more than max entries") {
  // top (unallocated) over a raw file with data, a hole, then data: the
  // unallocated run asks the raw file for up to max+1 extents.
  qt::TempDir dir;
  const uint64_t size = 4 * MiB;
  const auto raw = make_raw(dir.file("r.raw"), size, 3);
  qt::make_image(dir.file("t.qed"), size, 65536, 4, "r.raw", "raw");
  auto img = qt::open_path(dir.file("t.qed"), ro_options());
  Types types(size, 0);
  std::fill(types.begin() + MiB, types.begin() + 2 * MiB, 1);
  for (size_t max = 1; max <= 4; max++)
    check_extents(*img, types, 0, size, max);
  check_extents(*img, types, MiB - 512, 2 * MiB, 1);
}

TEST_CASE("zero over backing data, then partial writes, on a raw-backed image") {
  qt::TempDir dir;
  const uint64_t cs = 65536;
  std::vector<uint8_t> raw(2 * MiB);
  qt::fill_pattern(raw.data(), raw.size(), 8);
  qt::write_whole_file(dir.file("base.raw"), raw);
  qt::make_image(dir.file("zb.qed"), MiB, uint32_t(cs), 4, "base.raw", "raw");  // shorter than raw
  std::vector<uint8_t> model(raw.begin(), raw.begin() + MiB);
  {
    auto img = qt::open_path(dir.file("zb.qed"), qt::rw_options());
    zero_ok(*img, model, 0, cs);              // a zero cluster
    QT_CHECK_SAME(qt::read_all(*img), model);
    write_ok(*img, model, 8192, bytes_of(4096, 0xcc));  // QEMU's repro of bug 4
    zero_ok(*img, model, 3 * cs, 2 * cs + 100);          // two zero clusters and a partial one
    QT_CHECK_SAME(qt::read_all(*img), model);
    auto ex = img->extents(3 * cs, 3 * cs, 100);
    REQUIRE(ex.is_ok());
    REQUIRE(ex->size() == 2);
    CHECK((*ex)[0].offset == 3 * cs);
    CHECK((*ex)[0].length == 2 * cs);
    CHECK((*ex)[0].zero);
    CHECK((*ex)[1].offset == 5 * cs);
    CHECK((*ex)[1].length == cs);
    CHECK(!(*ex)[1].zero);  // the partly zeroed cluster is data
    // A write across both zero clusters: zeroes around it, no backing bytes.
    write_ok(*img, model, 4 * cs - 1, bytes_of(2, 0xdd));
    QT_CHECK_SAME(qt::read_all(*img), model);
    ex = img->extents(3 * cs, 2 * cs, 100);
    REQUIRE(ex.is_ok());
    REQUIRE(ex->size() == 1);
    CHECK(!(*ex)[0].zero);
    REQUIRE(img->close().is_ok());
  }
  auto img = qt::open_path(dir.file("zb.qed"), ro_options());
  QT_CHECK_SAME(qt::read_all(*img), model);
}

TEST_CASE("write-zeroes of a whole L2 table over backing data leaves the next table alone") {
  // QEMU (4 KiB clusters, 8-cluster tables) sets entry 4096 of a 4096-entry
  // table, one past its end, and so corrupts an unrelated cluster.
  qt::TempDir dir;
  const uint64_t span = 16 * MiB;  // 4096 entries of 4 KiB
  const uint64_t size = span + 64 * 1024;
  std::vector<uint8_t> raw(size, 0xbb);
  qt::write_whole_file(dir.file("base.raw"), raw);
  qt::make_image(dir.file("zo.qed"), size, 4096, 8, "base.raw", "raw");
  std::vector<uint8_t> model = raw;
  {
    auto img = qt::open_path(dir.file("zo.qed"), qt::rw_options());
    zero_ok(*img, model, 0, 4096);
    write_ok(*img, model, span, bytes_of(4096, 0x5a));
    write_ok(*img, model, span - 4096, bytes_of(4096, 0x5b));  // the table's last cluster
    REQUIRE(img->flush().is_ok());
    zero_ok(*img, model, 0, span);
    QT_CHECK_SAME(qt::read_all(*img), model);
    auto ex = img->extents(0, size, 10);
    REQUIRE(ex.is_ok());
    REQUIRE(ex->size() == 2);
    CHECK((*ex)[0].zero);
    CHECK((*ex)[0].length == span - 4096);  // the last cluster is data (zeroed in place)
    CHECK(!(*ex)[1].zero);
    REQUIRE(img->close().is_ok());
  }
  CHECK(qt::check_structure(qt::read_whole_file(dir.file("zo.qed"))).empty());
  auto img = qt::open_path(dir.file("zo.qed"), ro_options());
  QT_CHECK_SAME(qt::read_all(*img), model);
}

TEST_CASE("backing loops are refused") {
  qt::TempDir dir;
  auto set_backing = [&](const std::string &image, const std::string &name) {
    uint8_t h[64];
    {
      std::ifstream in(dir.file(image), std::ios::binary);
      in.read(reinterpret_cast<char *>(h), 64);
    }
    qt::put_le64(h + 16, qt::get_le64(h + 16) | qed::kFeatureBackingFile);
    qt::put_le32(h + 56, 64);
    qt::put_le32(h + 60, uint32_t(name.size()));
    qt::patch_file(dir.file(image), 0, h, 64);
    qt::patch_file(dir.file(image), 64, name.data(), name.size());
  };
  SUBCASE("an image whose backing file is itself") {
    qt::make_image(dir.file("a.qed"), MiB, 65536, 4);
    set_backing("a.qed", "a.qed");
    auto r = Image::open(dir.file("a.qed"), ro_options());
    REQUIRE(!r.is_ok());
    INFO(r.status().message());
    CHECK(r.status().message().find("loop") != std::string::npos);
    CHECK(r.status().code() == Code::kCorruption);
  }
  SUBCASE("a.qed -> b.qed -> a.qed") {
    qt::make_image(dir.file("a.qed"), MiB, 65536, 4);
    qt::make_image(dir.file("b.qed"), MiB, 65536, 4, "a.qed", "qed");
    set_backing("a.qed", "b.qed");
    for (const char *name : {"a.qed", "b.qed"}) {
      CAPTURE(name);
      auto r = Image::open(dir.file(name), ro_options());
      REQUIRE(!r.is_ok());
      INFO(r.status().message());
      CHECK(r.status().message().find("loop") != std::string::npos);
      auto w = Image::open(dir.file(name), qt::rw_options());
      CHECK(!w.is_ok());
    }
  }
  SUBCASE("the same file under another name") {
    qt::make_image(dir.file("a.qed"), MiB, 65536, 4);
    REQUIRE(::symlink("a.qed", dir.file("alias.qed").c_str()) == 0);
    set_backing("a.qed", "alias.qed");
    auto r = Image::open(dir.file("a.qed"), ro_options());
    REQUIRE(!r.is_ok());
    CHECK(r.status().message().find("loop") != std::string::npos);
  }
  SUBCASE("a raw-flagged backing file that is the image itself") {
    qt::make_image(dir.file("a.qed"), MiB, 65536, 4);
    set_backing("a.qed", "a.qed");
    uint8_t f[8];
    qt::put_le64(f, qed::kFeatureBackingFile | qed::kFeatureBackingNoProbe);
    qt::patch_file(dir.file("a.qed"), 16, f, 8);
    auto r = Image::open(dir.file("a.qed"), ro_options());
    REQUIRE(!r.is_ok());
    CHECK(r.status().message().find("loop") != std::string::npos);
  }
}

TEST_CASE("a deep but finite chain opens") {
  qt::TempDir dir;
  std::vector<uint8_t> model(MiB, 0);
  qt::make_image(dir.file("c0.qed"), MiB, 65536, 1);
  for (int i = 1; i <= 10; i++)
    qt::make_image(dir.file(qt::cat("c", i, ".qed")), MiB, 65536, 1, qt::cat("c", i - 1, ".qed"),
                   "qed");
  for (int i = 0; i <= 10; i++) {
    auto img = qt::open_path(dir.file(qt::cat("c", i, ".qed")), qt::rw_options());
    write_ok(*img, model, uint64_t(i) * 65536 + 3, bytes_of(7, uint8_t(i + 1)));
    REQUIRE(img->close().is_ok());
  }
  auto img = qt::open_path(dir.file("c10.qed"), ro_options());
  QT_CHECK_SAME(qt::read_all(*img), model);
}

TEST_CASE("qcow2 and other formats are refused as backing files") {
  qt::TempDir dir;
  std::vector<uint8_t> q(65536, 0);
  std::memcpy(q.data(), "QFI\xfb", 4);
  qt::write_whole_file(dir.file("q.qcow2"), q);

  SUBCASE("at create") {
    qed::CreateOptions o;
    o.size = MiB;
    o.backing_file = "q.qcow2";
    const Status s = qed::create_image(dir.file("t.qed"), o);
    CHECK(!s.is_ok());
    CHECK(s.code() == Code::kNotSupported);
    CHECK(s.message().find("qcow2") != std::string::npos);
    CHECK(!std::filesystem::exists(dir.file("t.qed")));
  }
  SUBCASE("at open, when the backing file changed format") {
    qt::make_image(dir.file("b.qed"), MiB, 65536, 4);
    qt::make_image(dir.file("t.qed"), MiB, 65536, 4, "b.qed", "qed");
    qt::write_whole_file(dir.file("b.qed"), q);
    auto r = Image::open(dir.file("t.qed"), ro_options());
    REQUIRE(!r.is_ok());
    INFO(r.status().message());
    CHECK(r.status().code() == Code::kNotSupported);
    CHECK(r.status().message().find("qcow2") != std::string::npos);
  }
  SUBCASE("probe_format names formats") {
    auto probe = [](const std::string &head, size_t at = 0) {
      std::vector<uint8_t> b(512, 0);
      std::memcpy(b.data() + at, head.data(), head.size());
      return qed::probe_format(b.data(), b.size());
    };
    CHECK(probe(std::string("QED\0", 4)) == "qed");
    CHECK(probe("QFI\xfb") == "qcow2");
    CHECK(probe("KDMV") == "vmdk");
    CHECK(probe("conectix") == "vpc");
    CHECK(probe("vhdxfile") == "vhdx");
    CHECK(probe("\x7f\x10\xda\xbe", 64) == "vdi");
    CHECK(probe("hello") == "raw");
  }
}

TEST_CASE("allow_backing=false refuses images with a backing file") {
  qt::TempDir dir;
  qt::write_whole_file(dir.file("r.raw"), std::vector<uint8_t>(MiB, 7));
  qt::make_image(dir.file("t.qed"), MiB, 65536, 4, "r.raw", "raw");
  qed::OpenOptions o;
  o.allow_backing = false;
  auto r = Image::open(dir.file("t.qed"), o);
  REQUIRE(!r.is_ok());
  CHECK(r.status().code() == Code::kNotSupported);
  CHECK(r.status().message().find("backing") != std::string::npos);
  // And an image without one opens.
  qt::make_image(dir.file("plain.qed"), MiB, 65536, 4);
  CHECK(Image::open(dir.file("plain.qed"), o).is_ok());
}

TEST_CASE("a missing backing file and a name with a NUL byte are errors") {
  qt::TempDir dir;
  qt::write_whole_file(dir.file("r.raw"), std::vector<uint8_t>(MiB, 7));
  qt::make_image(dir.file("t.qed"), MiB, 65536, 4, "r.raw", "raw");
  SUBCASE("missing") {
    std::filesystem::remove(dir.file("r.raw"));
    auto r = Image::open(dir.file("t.qed"), ro_options());
    REQUIRE(!r.is_ok());
    CHECK(r.status().message().find("r.raw") != std::string::npos);
  }
  SUBCASE("NUL") {
    const char name[5] = {'r', '.', 0, 'a', 'w'};
    qt::patch_file(dir.file("t.qed"), 64, name, 5);
    auto r = Image::open(dir.file("t.qed"), ro_options());
    REQUIRE(!r.is_ok());
    CHECK(r.status().code() == Code::kCorruption);
  }
  SUBCASE("resolve_backing_path") {
    CHECK(qed::resolve_backing_path("/a/b/c.qed", "d.raw") == "/a/b/d.raw");
    CHECK(qed::resolve_backing_path("/a/b/c.qed", "/x/d.raw") == "/x/d.raw");
    CHECK(qed::resolve_backing_path("c.qed", "d.raw") == "d.raw");
    CHECK(qed::resolve_backing_path("/a/b/c.qed", "../d.raw") == "/a/b/../d.raw");
  }
}

// The filter's situation: the image comes from somewhere that is not a folder
// (a MemoryFile named like no path), so the base is named by the caller.
TEST_CASE("a backing override replaces the name the image stores, for that level only") {
  using Format = qed::BackingOverride::Format;
  qt::TempDir dir;
  qt::TempDir other;
  // The stored name "base.raw" exists nowhere; the override is other/b.qed,
  // a QED image whose own relative backing name resolves beside it.
  std::vector<uint8_t> raw(MiB);
  qt::fill_pattern(raw.data(), raw.size(), 7);
  qt::write_whole_file(other.file("under.raw"), raw);
  qt::make_image(other.file("b.qed"), 2 * MiB, 4096, 4, "under.raw", "raw");
  // t.qed names base.raw, which is gone by the time the image is opened;
  // `format` "raw" sets the image's no-probe flag, "qed" leaves it clear.
  auto make_top = [&](const std::string &format) {
    if (format == "raw")
      qt::write_whole_file(dir.file("base.raw"), std::vector<uint8_t>(4096, 1));
    else
      qt::make_image(dir.file("base.raw"), MiB, 4096, 4);
    std::filesystem::remove(dir.file("t.qed"));
    qt::make_image(dir.file("t.qed"), 2 * MiB, 65536, 4, "base.raw", format);
    std::filesystem::remove(dir.file("base.raw"));
  };
  make_top("raw");
  auto top_file = [&] {
    return std::make_unique<qt::SharedFile>(
        std::make_shared<qed::MemoryFile>(qt::read_whole_file(dir.file("t.qed")), "<plugin>"));
  };
  auto open_with = [&](std::optional<qed::BackingOverride> base) {
    qed::OpenOptions o;
    o.backing_override = std::move(base);
    qed::ChainState chain;
    return Image::open_file("<plugin>", top_file(), o, chain);
  };

  SUBCASE("without the override the stored name fails") {
    auto r = open_with(std::nullopt);
    REQUIRE(!r.is_ok());
    CHECK(r.status().message().find("base.raw") != std::string::npos);
  }
  // Were the override passed down, b.qed's own backing file would be b.qed:
  // a loop, not under.raw.
  SUBCASE("a QED base, forced or probed; its own backing file as usual") {
    for (Format f : {Format::kQed, Format::kAsImageSays}) {
      // kAsImageSays would read the base raw here (the image says raw), so
      // the probed case uses a top without the raw flag.
      if (f == Format::kAsImageSays)
        make_top("qed");
      CAPTURE(int(f));
      auto r = open_with(qed::BackingOverride{other.file("b.qed"), f});
      INFO(r.status().message());
      REQUIRE(r.is_ok());
      std::vector<uint8_t> want(2 * MiB, 0);
      std::copy(raw.begin(), raw.end(), want.begin());
      QT_CHECK_SAME(qt::read_all(**r), want);
      CHECK((*r)->description().find(other.file("b.qed")) != std::string::npos);
      CHECK((*r)->description().find(other.file("under.raw")) != std::string::npos);
    }
  }
  SUBCASE("a raw base, as the image says or forced over a QED file") {
    auto r = open_with(qed::BackingOverride{other.file("under.raw"), Format::kAsImageSays});
    INFO(r.status().message());
    REQUIRE(r.is_ok());
    std::vector<uint8_t> want(2 * MiB, 0);
    std::copy(raw.begin(), raw.end(), want.begin());
    QT_CHECK_SAME(qt::read_all(**r), want);

    make_top("qed");
    auto forced = open_with(qed::BackingOverride{other.file("b.qed"), Format::kRaw});
    INFO(forced.status().message());
    REQUIRE(forced.is_ok());
    const auto bytes = qt::read_whole_file(other.file("b.qed"));
    const auto got = qt::read_all(**forced);
    REQUIRE(got.size() == 2 * MiB);
    CHECK(std::equal(bytes.begin(), bytes.end(), got.begin()));
  }
  SUBCASE("forcing qed on a raw file fails, naming both names") {
    auto r = open_with(qed::BackingOverride{other.file("under.raw"), Format::kQed});
    REQUIRE(!r.is_ok());
    CHECK(r.status().message().find("\"base.raw\"") != std::string::npos);
    CHECK(r.status().message().find(other.file("under.raw")) != std::string::npos);
  }
  SUBCASE("a missing base fails, naming it") {
    auto r = open_with(qed::BackingOverride{other.file("gone.qed"), Format::kAsImageSays});
    REQUIRE(!r.is_ok());
    CHECK(r.status().message().find(other.file("gone.qed")) != std::string::npos);
  }
  SUBCASE("an image without a backing file refuses an override") {
    std::filesystem::remove(dir.file("t.qed"));
    qt::make_image(dir.file("t.qed"), 2 * MiB, 65536, 4);
    auto r = open_with(qed::BackingOverride{other.file("b.qed"), Format::kQed});
    REQUIRE(!r.is_ok());
    CHECK(r.status().code() == Code::kInvalidArgument);
    CHECK(r.status().message().find(other.file("b.qed")) != std::string::npos);
  }
}

TEST_SUITE_END();
