// create_image: layout, rounding and the options it refuses.
#include <doctest/doctest.h>

#include <algorithm>

#include "lib/create.h"
#include "tests/unit/test_util.h"

using qed::Status;
using Code = qed::Status::Code;

TEST_SUITE_BEGIN("create");

TEST_CASE("create_image lays the file out as qemu-img does") {
  qt::TempDir dir;
  for (uint32_t ts : {1u, 4u, 16u}) {
    CAPTURE(ts);
    const std::string path = dir.file(qt::cat("c", ts, ".qed"));
    qt::make_image(path, 1000, 4096, ts);  // 1000 rounds up to 1024
    const auto f = qt::read_whole_file(path);
    CHECK(f.size() == uint64_t(1 + ts) * 4096);
    CHECK(f[0] == 'Q');
    CHECK(f[1] == 'E');
    CHECK(f[2] == 'D');
    CHECK(f[3] == 0);
    CHECK(qt::get_le32(&f[4]) == 4096);
    CHECK(qt::get_le32(&f[8]) == ts);
    CHECK(qt::get_le32(&f[12]) == 1);
    CHECK(qt::get_le64(&f[16]) == 0);
    CHECK(qt::get_le64(&f[40]) == 4096);
    CHECK(qt::get_le64(&f[48]) == 1024);
    CHECK(std::all_of(f.begin() + 64, f.end(), [](uint8_t b) { return b == 0; }));
    auto img = qt::open_path(path, qed::OpenOptions{});
    CHECK(img->size() == 1024);
  }
}

TEST_CASE("create_image with a backing file records its name and format") {
  qt::TempDir dir;
  qt::write_whole_file(dir.file("b.raw"), std::vector<uint8_t>(5000, 3));
  qt::make_image(dir.file("t.qed"), 0, 65536, 4, "b.raw", "raw");  // size from the backing file
  const auto f = qt::read_whole_file(dir.file("t.qed"));
  CHECK(qt::get_le64(&f[16]) == (qed::kFeatureBackingFile | qed::kFeatureBackingNoProbe));
  CHECK(qt::get_le32(&f[56]) == 64);
  CHECK(qt::get_le32(&f[60]) == 5);
  CHECK(std::string(f.begin() + 64, f.begin() + 69) == "b.raw");
  CHECK(qt::get_le64(&f[48]) == 5120);  // 5000 rounded up to 512
  // Probed (no format given): raw, but not recorded as raw.
  qt::make_image(dir.file("p.qed"), 0, 65536, 4, "b.raw", "");
  const auto p = qt::read_whole_file(dir.file("p.qed"));
  CHECK(qt::get_le64(&p[16]) == (qed::kFeatureBackingFile | qed::kFeatureBackingNoProbe));
  // A qed backing file gives its virtual size.
  qt::make_image(dir.file("q.qed"), 0, 65536, 4, "t.qed", "qed");
  const auto q = qt::read_whole_file(dir.file("q.qed"));
  CHECK(qt::get_le64(&q[16]) == qed::kFeatureBackingFile);
  CHECK(qt::get_le64(&q[48]) == 5120);
  auto img = qt::open_path(dir.file("q.qed"), qed::OpenOptions{});
  std::vector<uint8_t> all = qt::read_all(*img);
  CHECK(std::count(all.begin(), all.end(), 3) == 5000);
}

TEST_CASE("create_image refuses bad options and leaves nothing behind") {
  qt::TempDir dir;
  const std::string path = dir.file("bad.qed");
  auto refuse = [&](qed::CreateOptions o, Code code, const std::string &needle) {
    const Status s = qed::create_image(path, o);
    INFO(s.message());
    CHECK(!s.is_ok());
    CHECK(s.code() == code);
    CHECK(s.message().find(needle) != std::string::npos);
    CHECK(!std::filesystem::exists(path));
  };
  qed::CreateOptions o;
  o.size = 1 << 20;
  SUBCASE("cluster size") {
    o.cluster_size = 3 * 4096;
    refuse(o, Code::kInvalidArgument, "cluster size");
  }
  SUBCASE("table size") {
    o.table_size = 32;
    refuse(o, Code::kInvalidArgument, "table size");
  }
  SUBCASE("too large") {
    o.cluster_size = 4096;
    o.table_size = 4;
    o.size = (16ull << 30) + 512;
    refuse(o, Code::kInvalidArgument, "maximum");
  }
  SUBCASE("backing name that does not fit the header cluster") {
    // QEMU accepts a 4040-byte name with 4 KiB clusters and the L1 table
    // then overwrites its tail. The name must resolve to a real file.
    qt::write_whole_file(dir.file("b.raw"), std::vector<uint8_t>(512, 1));
    std::string name;
    while (name.size() + 5 < 4040)
      name += "./";
    name += "b.raw";
    o.cluster_size = 4096;
    o.backing_file = name;
    o.backing_format = "raw";
    refuse(o, Code::kInvalidArgument, "header");
    o.backing_file = name.substr(name.size() - 4031);  // "././...b.raw": 64 + 4031 fits
    REQUIRE(o.backing_file.substr(o.backing_file.size() - 5) == "b.raw");
    const Status s = qed::create_image(path, o);
    INFO(s.message());
    CHECK(s.is_ok());
    auto img = qt::open_path(path, qed::OpenOptions{});
    CHECK(img->has_backing());
  }
  SUBCASE("unknown backing format") {
    qt::write_whole_file(dir.file("b.raw"), std::vector<uint8_t>(512, 1));
    o.backing_file = "b.raw";
    o.backing_format = "vmdk";
    const Status s = qed::create_image(path, o);
    CHECK(!s.is_ok());
    CHECK((s.code() == Code::kInvalidArgument || s.code() == Code::kNotSupported));
    CHECK(s.message().find("vmdk") != std::string::npos);
    CHECK(!std::filesystem::exists(path));
  }
  SUBCASE("qed format for a raw file") {
    qt::write_whole_file(dir.file("b.raw"), std::vector<uint8_t>(512, 1));
    o.backing_file = "b.raw";
    o.backing_format = "qed";
    refuse(o, Code::kInvalidArgument, "not a QED image");
  }
  SUBCASE("missing backing file") {
    o.backing_file = "nope.raw";
    o.backing_format = "raw";
    const Status s = qed::create_image(path, o);
    CHECK(!s.is_ok());
    CHECK(!std::filesystem::exists(path));
  }
}

TEST_CASE("create_image refuses to overwrite unless asked") {
  qt::TempDir dir;
  const std::string path = dir.file("x.qed");
  qt::make_image(path, 1 << 20, 65536, 4);
  qed::CreateOptions o;
  o.size = 2 << 20;
  const Status s = qed::create_image(path, o);
  CHECK(s.code() == Code::kInvalidArgument);
  CHECK(s.message().find("exists") != std::string::npos);
  CHECK(qt::get_le64(&qt::read_whole_file(path)[48]) == 1 << 20);
  o.overwrite = true;
  REQUIRE(qed::create_image(path, o).is_ok());
  CHECK(qt::get_le64(&qt::read_whole_file(path)[48]) == 2 << 20);
}

TEST_CASE("the largest cluster and table sizes create and open") {
  qt::TempDir dir;
  const std::string path = dir.file("big.qed");
  qed::CreateOptions o;
  o.size = ~uint64_t(511);  // 2^64 - 512: addressable with 64 MiB clusters and 16-cluster tables
  o.cluster_size = 64u << 20;
  o.table_size = 16;
  const Status s = qed::create_image(path, o);
  INFO(s.message());
  REQUIRE(s.is_ok());
  auto img = qt::open_path(path, qed::OpenOptions{});
  CHECK(img->size() == ~uint64_t(511));
  uint8_t buf[512];
  REQUIRE(img->read(buf, 512, img->size() - 512).is_ok());
  CHECK(std::all_of(buf, buf + 512, [](uint8_t b) { return b == 0; }));
}

TEST_SUITE_END();
