// The flush protocol at its physical limit: how many syncs and extensions a
// flush costs, and the one ordering it keeps without a backing file (NEED_CHECK
// durable before the first metadata write). What a crash can leave is tested
// by tests/crash/crash_states.cpp.
#include <doctest/doctest.h>

#include <algorithm>

#include "lib/byte_order.h"
#include "lib/image.h"
#include "tests/unit/test_util.h"

using qed::FileOp;

TEST_SUITE_BEGIN("flush");

namespace {

constexpr uint32_t kCs = 65536;
constexpr uint64_t kSize = 256ull << 20;

// Extensions that grew the file (FaultFile records only those).
uint64_t growths(qed::FaultFile &f) {
  const auto log = f.records();
  return uint64_t(std::count_if(log.begin(), log.end(),
                                [](const auto &r) { return r.kind == crash::Kind::kExtend; }));
}

// One 4 KiB write into a cluster never written before, at a random offset in
// it: the allocation does not reach the end of its cluster.
void allocating_write(qed::Image &img, qt::Rng &r, uint64_t &next_cluster) {
  std::vector<uint8_t> buf(4096);
  qt::fill_pattern(buf.data(), buf.size(), r.next());
  const uint64_t pos = next_cluster++ * kCs + r.below(kCs / 4096 - 1) * 4096;
  REQUIRE(img.write(buf.data(), buf.size(), pos, false).is_ok());
}

// Syncs per flush over a run of allocating writes each followed by a flush,
// after a first write and flush (which may pay for NEED_CHECK).
std::vector<uint64_t> syncs_per_flush(qed::Image &img, qed::FaultFile &f, int flushes,
                                      uint64_t *extends = nullptr) {
  qt::Rng r(7);
  uint64_t next = 1;
  allocating_write(img, r, next);
  REQUIRE(img.flush().is_ok());
  std::vector<uint64_t> out;
  f.set_recording(true);
  for (int i = 0; i < flushes; i++) {
    allocating_write(img, r, next);
    const uint64_t before = f.calls(FileOp::kSync);
    REQUIRE(img.flush().is_ok());
    out.push_back(f.calls(FileOp::kSync) - before);
  }
  f.set_recording(false);
  if (extends)
    *extends = growths(f);
  return out;
}

}  // namespace

TEST_CASE("without a backing file: the first flush pays for NEED_CHECK, then one sync per flush") {
  qt::TempDir dir;
  qt::MemImage mi = qt::MemImage::create(dir, "s.qed", kSize, kCs, 4);
  auto img = qt::open_mem(mi, qt::rw_options());
  qed::FaultFile &f = *mi.last_fault;
  qt::Rng r(1);
  uint64_t next = 1;
  allocating_write(*img, r, next);
  uint64_t before = f.calls(FileOp::kSync);
  REQUIRE(img->flush().is_ok());
  CHECK(f.calls(FileOp::kSync) - before == 2);  // NEED_CHECK, then everything
  uint64_t extends = 0;
  for (uint64_t n : syncs_per_flush(*img, f, 40, &extends))
    CHECK(n == 1);
  // The file grows with headroom: most flushes find it long enough.
  CHECK(extends <= 40 / 8);
  REQUIRE(img->close().is_ok());
}

TEST_CASE("with a backing file: two syncs per flush, data before the entries") {
  qt::TempDir dir;
  qt::write_whole_file(dir.file("base.raw"), std::vector<uint8_t>(1 << 20, 0xab));
  qt::make_image(dir.file("t.qed"), kSize, kCs, 4, "base.raw", "raw");
  qt::MemImage mi;
  mi.path = dir.file("t.qed");
  mi.mem = std::make_shared<qed::MemoryFile>(qt::read_whole_file(mi.path), mi.path);
  auto img = qt::open_mem(mi, qt::rw_options());
  for (uint64_t n : syncs_per_flush(*img, *mi.last_fault, 20))
    CHECK(n == 2);
  REQUIRE(img->close().is_ok());
}

TEST_CASE("a flush with nothing written since the last costs no sync; one after an overwrite costs one") {
  qt::TempDir dir;
  qt::MemImage mi = qt::MemImage::create(dir, "n.qed", kSize, kCs, 4);
  auto img = qt::open_mem(mi, qt::rw_options());
  qed::FaultFile &f = *mi.last_fault;
  std::vector<uint8_t> buf(4096, 0x11);
  REQUIRE(img->write(buf.data(), buf.size(), 0, false).is_ok());
  REQUIRE(img->flush().is_ok());
  uint64_t before = f.calls(FileOp::kSync);
  for (int i = 0; i < 5; i++)
    REQUIRE(img->flush().is_ok());
  CHECK(f.calls(FileOp::kSync) == before);
  // Reads write nothing either.
  REQUIRE(img->read(buf.data(), buf.size(), 0).is_ok());
  REQUIRE(img->flush().is_ok());
  CHECK(f.calls(FileOp::kSync) == before);
  // An overwrite in place: no metadata, one sync.
  REQUIRE(img->write(buf.data(), buf.size(), 8192, false).is_ok());
  REQUIRE(img->flush().is_ok());
  CHECK(f.calls(FileOp::kSync) == before + 1);
  REQUIRE(img->flush().is_ok());
  CHECK(f.calls(FileOp::kSync) == before + 1);
  // A trim changes the file too.
  REQUIRE(img->trim(0, kCs, false).is_ok());
  REQUIRE(img->flush().is_ok());
  CHECK(f.calls(FileOp::kSync) == before + 2);
}

TEST_CASE("NEED_CHECK is on disk before any table is written") {
  qt::TempDir dir;
  qt::MemImage mi = qt::MemImage::create(dir, "o.qed", kSize, kCs, 4);
  auto img = qt::open_mem(mi, qt::rw_options());
  mi.last_fault->set_recording(true);
  qt::Rng r(3);
  uint64_t next = 1;
  for (int i = 0; i < 3; i++)
    allocating_write(*img, r, next);
  REQUIRE(img->flush().is_ok());
  const auto log = mi.last_fault->records();
  bool flag_written = false, flag_durable = false, metadata = false;
  for (const auto &rec : log) {
    if (rec.kind == crash::Kind::kWrite && rec.offset == 0 && rec.bytes.size() >= 24 &&
        (qed::load_le64(&rec.bytes[16]) & qed::kFeatureNeedCheck)) {
      flag_written = true;
    } else if (rec.kind == crash::Kind::kSync) {
      flag_durable = flag_written;
    } else if (rec.kind == crash::Kind::kWrite && rec.offset != 0 &&
               std::find(rec.bytes.begin(), rec.bytes.end(), 0) != rec.bytes.end()) {
      // Table sectors: the data written here has no zero byte (fill_pattern).
      metadata = true;
      CHECK(flag_durable);
    }
  }
  CHECK(metadata);
  CHECK(flag_durable);
}

TEST_CASE("a FUA write needs the metadata that leads to it, and nothing more than a flush") {
  qt::TempDir dir;
  qt::MemImage mi = qt::MemImage::create(dir, "fua.qed", kSize, kCs, 4);
  auto img = qt::open_mem(mi, qt::rw_options());
  qed::FaultFile &f = *mi.last_fault;
  std::vector<uint8_t> buf(4096, 0x21);
  REQUIRE(img->write(buf.data(), buf.size(), 0, false).is_ok());
  REQUIRE(img->flush().is_ok());
  const uint64_t before = f.calls(FileOp::kSync);
  REQUIRE(img->write(buf.data(), buf.size(), 5 * kCs, true).is_ok());  // allocating
  CHECK(f.calls(FileOp::kSync) == before + 1);
  REQUIRE(img->write(buf.data(), buf.size(), 5 * kCs + 4096, true).is_ok());  // in place
  CHECK(f.calls(FileOp::kSync) == before + 2);
}
