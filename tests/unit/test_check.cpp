// The consistency check and repair: one test per invariant, each on an image
// made by the engine and then damaged byte by byte.
#include <doctest/doctest.h>

#include <cstring>
#include <filesystem>
#include <string>

#include "lib/check.h"
#include "lib/create.h"
#include "lib/byte_order.h"
#include "tests/support/fault_file.h"
#include "lib/image.h"

namespace {

constexpr uint32_t kCs = 4096;
constexpr uint32_t kTs = 2;

struct Damaged {
  std::vector<uint8_t> bytes;
  qed::Header header;

  uint64_t get(uint64_t off) const { return qed::load_le64(&bytes[off]); }
  void put(uint64_t off, uint64_t v) { qed::store_le64(&bytes[off], v); }
  uint64_t l1_entry_at(uint64_t i) const { return header.l1_table_offset + 8 * i; }
  uint64_t l2_entry_at(uint64_t l1, uint64_t j) const { return get(l1_entry_at(l1)) + 8 * j; }
};

std::unique_ptr<qed::Image> open_memory(std::vector<uint8_t> bytes, bool read_only,
                                        qed::MemoryFile **raw,
                                        qed::CheckPolicy check = qed::CheckPolicy::kAuto) {
  auto file = std::make_unique<qed::MemoryFile>(std::move(bytes), "/tmp/check-test.qed");
  *raw = file.get();
  qed::OpenOptions o;
  o.read_only = read_only;
  o.check = check;
  qed::ChainState chain;
  auto image = qed::Image::open_file("/tmp/check-test.qed", std::move(file), o, chain);
  REQUIRE_MESSAGE(image.is_ok(), image.status().message());
  return std::move(*image);
}

// An image with data in virtual clusters 0, 1 and 5 (one L2 table) and 300
// (a second table: 4 KiB clusters and 2-cluster tables give 1024 entries per
// table, so cluster 1100 is in the second), closed cleanly.
Damaged make_image() {
  char tmpl[] = "/tmp/qed-check-XXXXXX";
  REQUIRE(mkdtemp(tmpl));
  const std::string path = std::string(tmpl) + "/t.qed";
  qed::CreateOptions co;
  co.size = 8 << 20;
  co.cluster_size = kCs;
  co.table_size = kTs;
  REQUIRE(qed::create_image(path, co).is_ok());
  std::vector<uint8_t> bytes(std::filesystem::file_size(path));
  FILE *f = std::fopen(path.c_str(), "rb");
  REQUIRE(std::fread(bytes.data(), 1, bytes.size(), f) == bytes.size());
  std::fclose(f);
  std::filesystem::remove_all(tmpl);

  qed::MemoryFile *raw = nullptr;
  auto image = open_memory(std::move(bytes), false, &raw);
  for (uint64_t c : {0, 1, 5, 1100}) {
    std::vector<uint8_t> data(kCs, uint8_t(0x10 + c % 200));
    REQUIRE(image->write(data.data(), data.size(), c * kCs, false).is_ok());
  }
  REQUIRE(image->close().is_ok());
  Damaged d;
  d.bytes = raw->contents();
  qed::HeaderBytes hb;
  std::memcpy(hb.data(), d.bytes.data(), hb.size());
  d.header = qed::decode_header(hb);
  return d;
}

qed::CheckReport check(Damaged &d, qed::CheckMode mode) {
  qed::MemoryFile file(d.bytes, "t.qed");
  auto r = qed::check_image(file, d.header, mode);
  REQUIRE(r.is_ok());
  d.bytes = file.contents();
  return *r;
}

// Repairs, then a second check must find nothing but (punched) leaks.
qed::CheckReport repair_and_recheck(Damaged &d) {
  qed::CheckReport r = check(d, qed::CheckMode::kRepair);
  qed::CheckReport again = check(d, qed::CheckMode::kReport);
  CHECK(again.clean());
  CHECK(again.invalid_entries == 0);
  CHECK(again.duplicate_refs == 0);
  return r;
}

bool cluster_reads(Damaged &d, uint64_t cluster, uint8_t value) {
  qed::MemoryFile *raw = nullptr;
  auto image = open_memory(d.bytes, true, &raw, qed::CheckPolicy::kOff);
  std::vector<uint8_t> buf(kCs);
  REQUIRE(image->read(buf.data(), buf.size(), cluster * kCs).is_ok());
  for (uint8_t b : buf)
    if (b != value)
      return false;
  return true;
}

}  // namespace

TEST_SUITE("check") {
  TEST_CASE("a clean image has no problems and no leaks") {
    Damaged d = make_image();
    auto before = d.bytes;
    qed::CheckReport r = check(d, qed::CheckMode::kRepair);
    CHECK(r.problems.empty());
    CHECK(r.l2_tables == 2);
    CHECK(r.data_clusters == 4);
    CHECK(d.bytes == before);
  }

  TEST_CASE("report mode never writes") {
    Damaged d = make_image();
    d.put(d.l2_entry_at(0, 7), d.bytes.size() + 10 * kCs);
    auto before = d.bytes;
    qed::CheckReport r = check(d, qed::CheckMode::kReport);
    CHECK(r.interrupted_entries == 1);
    CHECK(r.consistent());
    CHECK(!r.clean());
    CHECK(r.repaired == 0);
    CHECK(d.bytes == before);
  }

  TEST_CASE("a table of garbage: every entry counted and cleared, a bounded list of lines") {
    // One line per bad entry would make the check's memory grow with the
    // entries of a hostile file, not with its clusters.
    Damaged d = make_image();
    const uint64_t entries = uint64_t(kCs) * kTs / 8;
    for (uint64_t l1 : {0, 1})
      for (uint64_t j = 0; j < entries; j++)
        d.put(d.l2_entry_at(l1, j), 3);  // misaligned
    qed::CheckReport r = repair_and_recheck(d);
    CHECK(r.invalid_entries == 2 * entries);
    CHECK(r.repaired == 2 * entries + 1);  // and the leaked data clusters
    REQUIRE(r.problems.size() == 22);      // 20, the rest counted, the leaks
    CHECK(r.problems[20] == "and " + std::to_string(2 * entries - 20) +
                                " more problems like these");
    CHECK(r.problems[21].find("leaked clusters") != std::string::npos);
    for (uint64_t j : {0, 7, 1023})
      CHECK(d.get(d.l2_entry_at(0, j)) == 0);
  }

  TEST_CASE("an L2 entry past the end of the file is cleared") {
    Damaged d = make_image();
    d.put(d.l2_entry_at(0, 7), (d.bytes.size() / kCs + 3) * kCs);
    qed::CheckReport r = repair_and_recheck(d);
    CHECK(r.interrupted_entries == 1);
    CHECK(d.get(d.l2_entry_at(0, 7)) == 0);
    CHECK(cluster_reads(d, 7, 0));
    CHECK(cluster_reads(d, 5, 0x15));
  }

  TEST_CASE("misaligned L2 entries are cleared") {
    Damaged d = make_image();
    d.put(d.l2_entry_at(0, 8), d.get(d.l2_entry_at(0, 5)) + 512);
    d.put(d.l2_entry_at(0, 10), 2);  // neither 0, 1 nor aligned
    qed::CheckReport r = repair_and_recheck(d);
    CHECK(r.invalid_entries == 2);
    CHECK(d.get(d.l2_entry_at(0, 8)) == 0);
    CHECK(d.get(d.l2_entry_at(0, 10)) == 0);
  }

  TEST_CASE("L2 entries pointing at the L1 table or at their own table are cleared") {
    Damaged d = make_image();
    d.put(d.l2_entry_at(0, 20), d.header.l1_table_offset);
    d.put(d.l2_entry_at(0, 21), d.get(d.l1_entry_at(0)));
    qed::CheckReport r = repair_and_recheck(d);
    CHECK(r.duplicate_refs == 2);
    CHECK(d.get(d.l2_entry_at(0, 20)) == 0);
    CHECK(d.get(d.l2_entry_at(0, 21)) == 0);
    CHECK(cluster_reads(d, 0, 0x10));
  }

  TEST_CASE("a data cluster shared by two entries gets a private copy") {
    Damaged d = make_image();
    const uint64_t shared = d.get(d.l2_entry_at(0, 5));
    d.put(d.l2_entry_at(0, 30), shared);
    qed::CheckReport r = repair_and_recheck(d);
    CHECK(r.duplicate_refs == 1);
    CHECK(d.get(d.l2_entry_at(0, 30)) != shared);
    CHECK(cluster_reads(d, 30, 0x15));
    CHECK(cluster_reads(d, 5, 0x15));
    // They are independent now.
    qed::MemoryFile *raw = nullptr;
    auto image = open_memory(d.bytes, false, &raw);
    std::vector<uint8_t> data(kCs, 0x99);
    REQUIRE(image->write(data.data(), data.size(), 30 * kCs, false).is_ok());
    REQUIRE(image->close().is_ok());
    d.bytes = raw->contents();
    CHECK(cluster_reads(d, 30, 0x99));
    CHECK(cluster_reads(d, 5, 0x15));
  }

  TEST_CASE("invalid L1 entries are cleared") {
    Damaged d = make_image();
    d.put(d.l1_entry_at(3), 12345);                                 // misaligned
    d.put(d.l1_entry_at(4), (d.bytes.size() / kCs) * kCs - kCs);    // table past the end
    qed::CheckReport r = repair_and_recheck(d);
    CHECK(r.invalid_entries == 1);
    CHECK(r.interrupted_entries == 1);
    CHECK(d.get(d.l1_entry_at(3)) == 0);
    CHECK(d.get(d.l1_entry_at(4)) == 0);
  }

  TEST_CASE("two L1 entries sharing one table: the second is cleared") {
    Damaged d = make_image();
    d.put(d.l1_entry_at(2), d.get(d.l1_entry_at(0)));
    qed::CheckReport r = repair_and_recheck(d);
    CHECK(r.duplicate_refs == 1);
    CHECK(d.get(d.l1_entry_at(2)) == 0);
    CHECK(cluster_reads(d, 5, 0x15));
  }

  TEST_CASE("leaks at the end are cut off, leaks inside become holes") {
    Damaged d = make_image();
    const uint64_t size = d.bytes.size();
    d.bytes.resize(size + 3 * kCs, 0xee);  // three leaked clusters at the tail
    const uint64_t inside = d.l2_entry_at(0, 1);
    const uint64_t leaked = d.get(inside);
    d.put(inside, 0);  // cluster 1's data is now leaked, inside the file
    qed::CheckReport r = check(d, qed::CheckMode::kRepair);
    CHECK(r.leaked_clusters == 4);
    CHECK(r.reclaimed_bytes == 4 * kCs);
    CHECK(d.bytes.size() == size);
    for (uint64_t i = 0; i < kCs; i++)
      REQUIRE(d.bytes[leaked + i] == 0);
  }

  TEST_CASE("a dirty image is repaired at a read-write open and marked clean") {
    Damaged d = make_image();
    d.put(d.l2_entry_at(0, 7), (d.bytes.size() / kCs + 3) * kCs);
    d.put(16, d.get(16) | qed::kFeatureNeedCheck);
    qed::MemoryFile *raw = nullptr;
    auto image = open_memory(d.bytes, false, &raw);
    REQUIRE(image->check_report().has_value());
    CHECK(image->check_report()->interrupted_entries == 1);
    CHECK((qed::load_le64(&raw->contents()[16]) & qed::kFeatureNeedCheck) == 0);
  }

  TEST_CASE("a dirty image opened read-only is served without writing") {
    Damaged d = make_image();
    d.put(d.l2_entry_at(0, 7), 3);  // invalid: reads as unallocated when dirty
    d.put(16, d.get(16) | qed::kFeatureNeedCheck);
    const auto before = d.bytes;
    qed::MemoryFile *raw = nullptr;
    auto image = open_memory(d.bytes, true, &raw);
    std::vector<uint8_t> buf(kCs, 0xff);
    REQUIRE(image->read(buf.data(), buf.size(), 7 * kCs).is_ok());
    CHECK(buf == std::vector<uint8_t>(kCs, 0));
    CHECK(image->close().is_ok());
    CHECK(raw->contents() == before);
  }

  TEST_CASE("check=off leaves a dirty image dirty") {
    Damaged d = make_image();
    d.put(16, d.get(16) | qed::kFeatureNeedCheck);
    qed::MemoryFile *raw = nullptr;
    auto image = open_memory(d.bytes, false, &raw, qed::CheckPolicy::kOff);
    CHECK(!image->check_report().has_value());
    REQUIRE(image->close().is_ok());
    CHECK((qed::load_le64(&raw->contents()[16]) & qed::kFeatureNeedCheck) != 0);
  }
}
