// Failed writes give their space back (a full file system must not make the
// image grow with every failed attempt, nor leave leaks behind a clean
// close), and FAST_ZERO answers honestly both ways.
#include <doctest/doctest.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <cstring>
#include <thread>

#include "lib/byte_order.h"
#include "lib/check.h"
#include "lib/image.h"
#include "tests/unit/test_util.h"

using qed::FileOp;

TEST_SUITE_BEGIN("failures");

namespace {

constexpr uint32_t kCs = 65536;
constexpr uint64_t kSize = 128ull << 20;  // 400 writes of 4 clusters fit

uint64_t file_size(qed::File &f) {
  auto s = f.size();
  REQUIRE(s.is_ok());
  return *s;
}

qed::CheckReport check_of(qed::MemoryFile &mem) {
  qed::HeaderBytes hb;
  REQUIRE(mem.pread(hb.data(), hb.size(), 0).is_ok());
  auto r = qed::check_image(mem, qed::decode_header(hb), qed::CheckMode::kReport);
  REQUIRE(r.is_ok());
  return *r;
}

bool needs_check(qed::MemoryFile &mem) {
  uint8_t b[24];
  REQUIRE(mem.pread(b, sizeof b, 0).is_ok());
  return qed::load_le64(b + 16) & qed::kFeatureNeedCheck;
}

// Writes half of what it is asked, then fails with ENOSPC, while armed.
class HalfWriteFile final : public qt::SharedFile {
public:
  using SharedFile::SharedFile;
  std::atomic<bool> armed{false};
  qed::Status pwrite(const void *buf, size_t count, uint64_t offset) override {
    if (!armed)
      return inner_->pwrite(buf, count, offset);
    QED_RETURN_IF_ERROR(inner_->pwrite(buf, count / 2, offset));
    return qed::Status::io_error(name() + ": write: No space left on device", ENOSPC);
  }
};

}  // namespace

TEST_CASE("ENOSPC: failed allocating writes do not grow the file, and a clean close leaves no leak") {
  qt::TempDir dir;
  qt::MemImage mi = qt::MemImage::create(dir, "full.qed", kSize, kCs, 4);
  auto img = qt::open_mem(mi, qt::rw_options());
  std::vector<uint8_t> buf(kCs, 0x3c);
  REQUIRE(img->write(buf.data(), buf.size(), 0, false).is_ok());
  REQUIRE(img->flush().is_ok());
  const uint64_t before = file_size(*mi.mem);
  mi.last_fault->fail_one_in(FileOp::kWrite, 1, 1, ENOSPC);
  for (int i = 1; i < 200; i++) {
    const qed::Status s = img->write(buf.data(), buf.size(), uint64_t(i % 900) * kCs, false);
    CHECK(s.errno_value() == ENOSPC);
  }
  mi.last_fault->clear_failures();
  CHECK(file_size(*mi.mem) <= before);
  REQUIRE(img->write(buf.data(), buf.size(), 5 * kCs, false).is_ok());
  REQUIRE(img->close().is_ok());
  const qed::CheckReport r = check_of(*mi.mem);
  CHECK(r.leaked_clusters == 0);
  CHECK(r.clean());
  CHECK(!needs_check(*mi.mem));
}

TEST_CASE("ENOSPC from many threads at once: every failed reservation goes back") {
  qt::TempDir dir;
  qt::MemImage mi = qt::MemImage::create(dir, "threads.qed", kSize, kCs, 4);
  auto img = qt::open_mem(mi, qt::rw_options());
  const uint64_t before = file_size(*mi.mem);
  mi.last_fault->fail_one_in(FileOp::kWrite, 1, 1, ENOSPC);
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; t++)
    threads.emplace_back([&, t] {
      std::vector<uint8_t> b(3 * kCs + 100, uint8_t(t + 1));
      for (int i = 0; i < 50; i++)
        CHECK(!img->write(b.data(), b.size(), uint64_t(t * 50 + i) * 4 * kCs + 7, false).is_ok());
    });
  for (auto &t : threads)
    t.join();
  mi.last_fault->clear_failures();
  REQUIRE(img->close().is_ok());
  // The L2 table the writes created stays (L1 points at it); nothing else.
  CHECK(file_size(*mi.mem) <= before + 4 * kCs);
  CHECK(check_of(*mi.mem).leaked_clusters == 0);
  CHECK(!needs_check(*mi.mem));
}

TEST_CASE("a failed write's bytes never show through the allocation that reuses its space") {
  qt::TempDir dir;
  qt::MemImage mi = qt::MemImage::create(dir, "half.qed", kSize, kCs, 4);
  auto half = std::make_unique<HalfWriteFile>(mi.mem);
  HalfWriteFile *hw = half.get();
  auto img = qt::open_on(mi.path, std::move(half), qt::rw_options());
  std::vector<uint8_t> a(16384, 0xaa);
  hw->armed = true;
  CHECK(img->write(a.data(), a.size(), 3 * kCs + 8192, false).errno_value() == ENOSPC);
  hw->armed = false;
  std::vector<uint8_t> b(4096, 0xbb);
  REQUIRE(img->write(b.data(), b.size(), 7 * kCs, false).is_ok());
  std::vector<uint8_t> got(kCs);
  REQUIRE(img->read(got.data(), got.size(), 7 * kCs).is_ok());
  std::vector<uint8_t> want(kCs, 0);
  std::memcpy(want.data(), b.data(), b.size());
  CHECK(got == want);
  REQUIRE(img->read(got.data(), got.size(), 3 * kCs).is_ok());
  CHECK(got == std::vector<uint8_t>(kCs, 0));
  REQUIRE(img->close().is_ok());
  CHECK(check_of(*mi.mem).clean());
}

TEST_CASE("a failed write below a successful one stays a leak, and the image asks for a check") {
  // Writes of exactly 12 KiB wait until released, then fail.
  class SlowFailFile final : public qt::SharedFile {
  public:
    using SharedFile::SharedFile;
    std::mutex mu;
    std::condition_variable cv;
    bool waiting = false, released = false;
    qed::Status pwrite(const void *buf, size_t count, uint64_t offset) override {
      if (count != 12288)
        return inner_->pwrite(buf, count, offset);
      std::unique_lock lock(mu);
      waiting = true;
      cv.notify_all();
      cv.wait(lock, [&] { return released; });
      return qed::Status::io_error(name() + ": write: Input/output error", EIO);
    }
  };
  qt::TempDir dir;
  qt::MemImage mi = qt::MemImage::create(dir, "inner.qed", kSize, kCs, 4);
  auto slow = std::make_unique<SlowFailFile>(mi.mem);
  SlowFailFile *sf = slow.get();
  auto img = qt::open_on(mi.path, std::move(slow), qt::rw_options());
  std::vector<uint8_t> a(12288, 0x1a), b(4096, 0x1b);
  qed::Status failed;
  std::thread t([&] { failed = img->write(a.data(), a.size(), 10 * kCs, false); });
  {
    std::unique_lock lock(sf->mu);
    sf->cv.wait(lock, [&] { return sf->waiting; });
  }
  REQUIRE(img->write(b.data(), b.size(), 20 * kCs, false).is_ok());  // reserved after it
  {
    std::lock_guard lock(sf->mu);
    sf->released = true;
    sf->cv.notify_all();
  }
  t.join();
  CHECK(failed.errno_value() == EIO);
  REQUIRE(img->close().is_ok());
  img.reset();
  CHECK(check_of(*mi.mem).leaked_clusters == 1);
  CHECK(needs_check(*mi.mem));  // so that the next open gives it back
  auto re = qt::open_mem(mi, qt::rw_options());
  REQUIRE(re->check_report().has_value());
  CHECK(re->check_report()->leaked_clusters == 1);
  std::vector<uint8_t> got(4096);
  REQUIRE(re->read(got.data(), got.size(), 20 * kCs).is_ok());
  CHECK(got == b);
  REQUIRE(re->close().is_ok());
  CHECK(!needs_check(*mi.mem));
}

TEST_CASE("FAST_ZERO: ranges that already read as zeroes succeed even where holes cannot be punched") {
  qt::TempDir dir;
  qt::MemImage mi = qt::MemImage::create(dir, "fz.qed", kSize, kCs, 4);
  // No hole punching (ext2, say): the probe at open and every later punch fail.
  class NoPunchFile final : public qt::SharedFile {
  public:
    using SharedFile::SharedFile;
    qed::Status punch_hole(uint64_t, uint64_t) override {
      return qed::Status::not_supported(name() + ": punching holes is not supported");
    }
    qed::Status zero_range(uint64_t, uint64_t) override {
      return qed::Status::not_supported(name() + ": zeroing ranges is not supported");
    }
  };
  auto img = qt::open_on(mi.path, std::make_unique<NoPunchFile>(mi.mem), qt::rw_options());
  REQUIRE(!img->can_punch_holes());
  qed::ZeroFlags fast;
  fast.fast = true;
  // Unallocated, no backing file: nothing to do.
  CHECK(img->zero(100, 5 * kCs, fast).is_ok());
  // Data: zeroing would write zeroes, so it is not fast, and nothing changes.
  std::vector<uint8_t> d(kCs, 0x77);
  REQUIRE(img->write(d.data(), d.size(), 8 * kCs, false).is_ok());
  const qed::Status s = img->zero(8 * kCs + 10, 100, fast);
  CHECK(s.code() == qed::Status::Code::kNotSupported);
  std::vector<uint8_t> got(kCs);
  REQUIRE(img->read(got.data(), got.size(), 8 * kCs).is_ok());
  CHECK(got == d);
  // The slow way works.
  CHECK(img->zero(8 * kCs + 10, 100, qed::ZeroFlags{}).is_ok());
}

TEST_CASE("FAST_ZERO over a backing file: whole clusters are fast, partial ones are not") {
  qt::TempDir dir;
  qt::write_whole_file(dir.file("base.raw"), std::vector<uint8_t>(4 << 20, 0xcd));
  qt::make_image(dir.file("o.qed"), kSize, kCs, 4, "base.raw", "raw");
  auto img = qt::open_path(dir.file("o.qed"), qt::rw_options());
  qed::ZeroFlags fast;
  fast.fast = true;
  std::vector<uint8_t> got(kCs);
  // A partial cluster over backing data needs copy-on-write: refused, unchanged.
  CHECK(img->zero(kCs + 4096, 4096, fast).code() == qed::Status::Code::kNotSupported);
  REQUIRE(img->read(got.data(), got.size(), kCs).is_ok());
  CHECK(got == std::vector<uint8_t>(kCs, 0xcd));
  CHECK(img->zero(2 * kCs, 3 * kCs + 1, fast).code() == qed::Status::Code::kNotSupported);
  REQUIRE(img->read(got.data(), got.size(), 4 * kCs).is_ok());
  CHECK(got == std::vector<uint8_t>(kCs, 0xcd));
  // Whole clusters become zero clusters: fast.
  CHECK(img->zero(2 * kCs, 3 * kCs, fast).is_ok());
  REQUIRE(img->read(got.data(), got.size(), 3 * kCs).is_ok());
  CHECK(got == std::vector<uint8_t>(kCs, 0));
  // Partial clusters past the backing file read as zeroes already: fast.
  CHECK(img->zero((8ull << 20) + 5, 1000, fast).is_ok());
  REQUIRE(img->close().is_ok());
}

TEST_CASE("requests outside the disk are refused with EINVAL, whoever calls") {
  qt::TempDir dir;
  qt::MemImage mi = qt::MemImage::create(dir, "range.qed", kSize, kCs, 4);
  auto img = qt::open_mem(mi, qt::rw_options());
  std::vector<uint8_t> b(4096);
  for (uint64_t pos : {kSize - 100, kSize + 4096, UINT64_MAX - 10}) {
    CAPTURE(pos);
    CHECK(img->write(b.data(), b.size(), pos, false).errno_value() == EINVAL);
    CHECK(img->read(b.data(), b.size(), pos).errno_value() == EINVAL);
    CHECK(img->zero(pos, 4096, qed::ZeroFlags{}).errno_value() == EINVAL);
    CHECK(img->trim(pos, 4096, false).errno_value() == EINVAL);
    CHECK(img->extents(pos, 4096, 16).status().errno_value() == EINVAL);
  }
  CHECK(img->read(b.data(), 100, kSize - 100).is_ok());
  CHECK(img->read(b.data(), 0, kSize).is_ok());
}
