// Allocation failure at every allocation of the write, zero, trim, flush and
// read paths. This binary replaces the global operator new: armed, the Nth
// allocation of the arming thread throws std::bad_alloc. For each N the
// operation fails (a Status or the exception, which the plugin turns into
// ENOMEM) or completes; either way the engine must be as it was or as after
// the operation: no reservation left behind (a retry would wait forever), no
// lost metadata, the data right after a reopen, the check clean but for leaks.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>

#include "lib/image.h"
#include "tests/unit/test_util.h"

namespace alloc_hook {

thread_local uint64_t countdown = 0;  // 0: off; else the allocation that fails
thread_local bool fired = false;
thread_local bool measuring = false;
thread_local size_t largest = 0;       // while measuring

void *allocate(size_t n) {
  if (countdown && --countdown == 0) {
    fired = true;
    throw std::bad_alloc();
  }
  if (measuring && n > largest)
    largest = n;
  if (void *p = std::malloc(n ? n : 1))
    return p;
  throw std::bad_alloc();
}

}  // namespace alloc_hook

void *operator new(size_t n) { return alloc_hook::allocate(n); }
void *operator new[](size_t n) { return alloc_hook::allocate(n); }
void *operator new(size_t n, const std::nothrow_t &) noexcept {
  try {
    return alloc_hook::allocate(n);
  } catch (...) {
    return nullptr;
  }
}
void *operator new[](size_t n, const std::nothrow_t &) noexcept {
  try {
    return alloc_hook::allocate(n);
  } catch (...) {
    return nullptr;
  }
}
void operator delete(void *p) noexcept { std::free(p); }
void operator delete[](void *p) noexcept { std::free(p); }
void operator delete(void *p, size_t) noexcept { std::free(p); }
void operator delete[](void *p, size_t) noexcept { std::free(p); }
void operator delete(void *p, const std::nothrow_t &) noexcept { std::free(p); }
void operator delete[](void *p, const std::nothrow_t &) noexcept { std::free(p); }

TEST_SUITE_BEGIN("alloc");

namespace {

constexpr uint32_t kCs = 65536;
constexpr uint64_t kSize = 64ull << 20;
constexpr uint64_t kBackingBytes = 8ull << 20;

// An image over a raw backing file, in memory, with some data already
// written and flushed; and the model of its disk.
struct Fixture {
  qt::TempDir dir;
  qt::MemImage mi;
  std::vector<uint8_t> fresh;
  std::vector<uint8_t> model;

  Fixture() {
    std::vector<uint8_t> base(kBackingBytes);
    qt::fill_pattern(base.data(), base.size(), 99);
    qt::write_whole_file(dir.file("base.raw"), base);
    qt::make_image(dir.file("a.qed"), kSize, kCs, 1, "base.raw", "raw");
    mi.path = dir.file("a.qed");
    mi.mem = std::make_shared<qed::MemoryFile>(qt::read_whole_file(mi.path), mi.path);
    model.assign(kSize, 0);
    std::copy(base.begin(), base.end(), model.begin());
    // Some allocated clusters, flushed, and a table far away not cached.
    auto img = qt::open_mem(mi, qt::rw_options(256 * 1024));
    write(*img, 3 * kCs + 100, 5000, 1);
    write(*img, 40ull << 20, 3 * kCs, 2);
    REQUIRE(img->close().is_ok());
    fresh = mi.mem->contents();
  }

  void write(qed::Image &img, uint64_t pos, size_t n, uint64_t seed) {
    std::vector<uint8_t> buf(n);
    qt::fill_pattern(buf.data(), n, seed);
    REQUIRE(img.write(buf.data(), n, pos, false).is_ok());
    std::memcpy(model.data() + pos, buf.data(), n);
  }
};

struct Outcome {
  bool threw = false;
  qed::Status status;
};

template <typename Fn>
Outcome run_failing(uint64_t nth, Fn &&fn) {
  Outcome o;
  alloc_hook::fired = false;
  alloc_hook::countdown = nth;
  try {
    o.status = fn();
  } catch (const std::bad_alloc &) {
    o.threw = true;
  }
  alloc_hook::countdown = 0;
  return o;
}

// For N = 1, 2, ...: a fresh image; `op` with its Nth allocation failing;
// then `op` again without failures (it must not wait on anything the failure
// left), a flush, and checks. `apply` updates the model for one successful op.
template <typename Op, typename Apply>
void every_allocation_fails(const char *what, Op &&op, Apply &&apply) {
  CAPTURE(what);
  Fixture fx;
  const std::vector<uint8_t> start_model = fx.model;
  uint64_t nth = 1;
  for (;; nth++) {
    CAPTURE(nth);
    fx.mi.mem = std::make_shared<qed::MemoryFile>(fx.fresh, fx.mi.path);
    std::vector<uint8_t> model = start_model;
    auto img = qt::open_mem(fx.mi, qt::rw_options(256 * 1024));
    const Outcome o = run_failing(nth, [&] { return op(*img); });
    if (!alloc_hook::fired) {
      INFO(o.status.message());
      REQUIRE(o.status.is_ok());
      break;  // every allocation of the operation has failed once
    }
    if (!o.threw && !o.status.is_ok())
      CHECK((o.status.errno_value() == ENOMEM || o.status.errno_value() == EIO));
    // Whatever it did or not, the operation again, then a flush.
    const qed::Status again = op(*img);
    INFO(again.message());
    REQUIRE(again.is_ok());
    apply(model);
    REQUIRE(img->flush().is_ok());
    QT_CHECK_SAME(qt::read_all(*img), model);
    REQUIRE(img->close().is_ok());
    img.reset();
    CHECK(qt::check_structure(fx.mi.mem->contents()).empty());
    auto re = qt::open_mem(fx.mi, qt::rw_options());
    QT_CHECK_SAME(qt::read_all(*re), model);
  }
  CHECK(nth > 3);  // the operation allocates, and each allocation was tried
}

std::vector<uint8_t> pattern(size_t n, uint64_t seed) {
  std::vector<uint8_t> b(n);
  qt::fill_pattern(b.data(), n, seed);
  return b;
}

}  // namespace

TEST_CASE("allocating write over a backing file (copy-on-write of two clusters)") {
  const auto data = pattern(kCs, 5);
  const uint64_t pos = 6 * kCs + kCs / 2;
  every_allocation_fails(
      "cow write", [&](qed::Image &img) { return img.write(data.data(), data.size(), pos, false); },
      [&](std::vector<uint8_t> &m) { std::memcpy(m.data() + pos, data.data(), data.size()); });
}

TEST_CASE("write into a new L2 table, past the backing file") {
  const auto data = pattern(10000, 6);
  const uint64_t pos = (20ull << 20) + 333;
  every_allocation_fails(
      "new table", [&](qed::Image &img) { return img.write(data.data(), data.size(), pos, false); },
      [&](std::vector<uint8_t> &m) { std::memcpy(m.data() + pos, data.data(), data.size()); });
}

TEST_CASE("FUA write: allocation and flush in one request") {
  const auto data = pattern(3000, 7);
  const uint64_t pos = 12 * kCs + 10;
  every_allocation_fails(
      "fua", [&](qed::Image &img) { return img.write(data.data(), data.size(), pos, true); },
      [&](std::vector<uint8_t> &m) { std::memcpy(m.data() + pos, data.data(), data.size()); });
}

TEST_CASE("write through a table that is not cached (a load on the way)") {
  const auto data = pattern(4096, 8);
  const uint64_t pos = (40ull << 20) + 4096;
  every_allocation_fails(
      "uncached", [&](qed::Image &img) { return img.write(data.data(), data.size(), pos, false); },
      [&](std::vector<uint8_t> &m) { std::memcpy(m.data() + pos, data.data(), data.size()); });
}

TEST_CASE("zero: partial clusters over the backing file, whole ones, and data") {
  const uint64_t pos = 2 * kCs + 7, len = 4 * kCs;
  every_allocation_fails(
      "zero", [&](qed::Image &img) { return img.zero(pos, len, qed::ZeroFlags{}); },
      [&](std::vector<uint8_t> &m) { std::memset(m.data() + pos, 0, len); });
}

TEST_CASE("trim of data clusters") {
  const uint64_t pos = 40ull << 20, len = 2 * kCs;
  every_allocation_fails(
      "trim", [&](qed::Image &img) { return img.trim(pos, len, false); },
      [&](std::vector<uint8_t> &m) { std::memset(m.data() + pos, 0, len); });
}

TEST_CASE("flush of dirty metadata") {
  // Several writes dirty several tables; the failing operation is the flush.
  static const uint64_t kAt[] = {9 * kCs + 1, (17ull << 20) + 5, (33ull << 20) + 77};
  every_allocation_fails(
      "flush",
      [&](qed::Image &img) {
        static const auto a = pattern(5000, 9);
        for (uint64_t pos : kAt)
          QED_RETURN_IF_ERROR(img.write(a.data(), a.size(), pos, false));
        return img.flush();
      },
      [&](std::vector<uint8_t> &m) {
        static const auto a = pattern(5000, 9);
        for (uint64_t pos : kAt)
          std::memcpy(m.data() + pos, a.data(), a.size());
      });
}

TEST_CASE("read through a table that is not cached") {
  std::vector<uint8_t> buf(8192);
  every_allocation_fails(
      "read", [&](qed::Image &img) { return img.read(buf.data(), buf.size(), 40ull << 20); },
      [](std::vector<uint8_t> &) {});
}

TEST_CASE("copy-on-write memory is bounded: two 64 MiB clusters over a backing file") {
  // Before, the buffer was the whole allocation: 128 MiB for this write.
  qt::TempDir dir;
  std::vector<uint8_t> base(1 << 20);
  qt::fill_pattern(base.data(), base.size(), 3);
  qt::write_whole_file(dir.file("b.raw"), base);
  const uint64_t cs = 64ull << 20;
  qt::make_image(dir.file("big.qed"), 4 * cs, uint32_t(cs), 1, "b.raw", "raw");
  auto img = qt::open_path(dir.file("big.qed"), qt::rw_options());
  const auto data = pattern(8192, 4);
  alloc_hook::largest = 0;
  alloc_hook::measuring = true;
  const qed::Status s = img->write(data.data(), data.size(), cs - 4096, false);
  alloc_hook::measuring = false;
  REQUIRE(s.is_ok());
  CHECK(alloc_hook::largest <= (4u << 20));
  std::vector<uint8_t> back(base.size());
  REQUIRE(img->read(back.data(), back.size(), 0).is_ok());
  CHECK(back == base);  // the head of the first cluster came from below
  REQUIRE(img->read(back.data(), 8192, cs - 4096).is_ok());
  CHECK(std::memcmp(back.data(), data.data(), 8192) == 0);
  REQUIRE(img->close().is_ok());
}
