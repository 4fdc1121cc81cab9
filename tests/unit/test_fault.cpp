// Fault injection: failing writes, syncs and extends during write() and
// flush(), and crashes simulated by replaying a prefix of the recorded
// operations (dropping any unsynced subset).
#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <random>

#include "tests/support/crash_model.h"
#include "lib/image.h"
#include "tests/unit/test_util.h"

using qed::FileOp;
using qed::Image;
using qed::Status;

TEST_SUITE_BEGIN("fault");

namespace {

constexpr uint32_t kCs = 4096;
constexpr uint32_t kTs = 1;
constexpr uint64_t kSpan = uint64_t(kTs) * kCs / 8 * kCs;  // 2 MiB
constexpr uint64_t kSize = kSpan + kSpan / 2;               // two L2 tables

// Bytes whose value the test knows, and that value.
struct Model {
  std::vector<uint8_t> bytes = std::vector<uint8_t>(kSize, 0);
  std::vector<uint8_t> known = std::vector<uint8_t>(kSize, 1);

  void set(uint64_t pos, const uint8_t *p, uint64_t n) {
    std::memcpy(bytes.data() + pos, p, n);
    std::fill_n(known.begin() + int64_t(pos), n, 1);
  }
  void zero(uint64_t pos, uint64_t n) {
    std::memset(bytes.data() + pos, 0, n);
    std::fill_n(known.begin() + int64_t(pos), n, 1);
  }
  void forget(uint64_t pos, uint64_t n) { std::fill_n(known.begin() + int64_t(pos), n, 0); }

  // First known byte that differs, or -1.
  int64_t mismatch(const std::vector<uint8_t> &got) const {
    if (got.size() != bytes.size())
      return 0;
    for (size_t at = 0; at < got.size(); at += 4096) {
      const size_t n = std::min<size_t>(4096, got.size() - at);
      if (std::memcmp(got.data() + at, bytes.data() + at, n) == 0)
        continue;
      for (size_t i = at; i < at + n; i++)
        if (known[i] && got[i] != bytes[i])
          return int64_t(i);
    }
    return -1;
  }
};

struct Op {
  enum Kind { kWrite, kZero, kFlush } kind;
  uint64_t pos, len, seed;
};

// A workload: allocating and in-place writes across both tables, zeroes and
// flushes.
std::vector<Op> workload(uint64_t seed, int n) {
  qt::Rng r(seed);
  std::vector<Op> ops;
  for (int i = 0; i < n; i++) {
    const unsigned k = unsigned(r.below(10));
    if (k < 2) {
      ops.push_back({Op::kFlush, 0, 0, 0});
      continue;
    }
    uint64_t pos = r.chance(30) ? kSpan - r.below(3 * kCs) : r.below(kSize - 1);
    const uint64_t len = std::min<uint64_t>(r.range(1, 3 * kCs), kSize - pos);
    ops.push_back({k < 8 ? Op::kWrite : Op::kZero, pos, len, r.next()});
  }
  return ops;
}

// Runs `op`, updating `m` for what was acknowledged and forgetting what a
// failed call may have half done.
Status apply(Image &img, Model &m, const Op &op) {
  if (op.kind == Op::kFlush)
    return img.flush();
  if (op.kind == Op::kWrite) {
    std::vector<uint8_t> buf(op.len);
    qt::fill_pattern(buf.data(), op.len, op.seed);
    Status s = img.write(buf.data(), op.len, op.pos, false);
    if (s.is_ok())
      m.set(op.pos, buf.data(), op.len);
    else
      m.forget(op.pos, op.len);
    return s;
  }
  qed::ZeroFlags f;
  f.may_trim = op.seed & 1;
  Status s = img.zero(op.pos, op.len, f);
  if (s.is_ok())
    m.zero(op.pos, op.len);
  else
    m.forget(op.pos, op.len);
  return s;
}

std::shared_ptr<qed::MemoryFile> copy_of(qed::MemoryFile &f, const std::string &name) {
  return std::make_shared<qed::MemoryFile>(f.contents(), name);
}

// Opens `mem` read-only and returns every byte of the disk.
std::vector<uint8_t> read_image(const std::string &path, std::shared_ptr<qed::File> mem,
                                bool read_only = true) {
  qed::OpenOptions o;
  o.read_only = read_only;
  auto img = qt::open_on(path, std::make_unique<qt::SharedFile>(std::move(mem)), o);
  return qt::read_all(*img);
}


// What was durable at the last flush that succeeded, and which bytes changed
// (or may have) since: after a refusal, only the others must read back so.
struct Flushed {
  Model at_flush;
  std::vector<uint8_t> touched = std::vector<uint8_t>(kSize, 0);

  void flushed(const Model &m) {
    at_flush = m;
    std::fill(touched.begin(), touched.end(), 0);
  }
  void touch(const Op &op) {
    if (op.kind != Op::kFlush)
      std::fill_n(touched.begin() + int64_t(op.pos), op.len, 1);
  }
  // First byte, durable at the last good flush and not touched since, that
  // reads back otherwise; or -1.
  int64_t mismatch(const std::vector<uint8_t> &got) const {
    for (size_t i = 0; i < got.size(); i++)
      if (!touched[i] && at_flush.known[i] && got[i] != at_flush.bytes[i])
        return int64_t(i);
    return -1;
  }
};

bool is_refusal(const Status &s) {
  return !s.is_ok() && s.errno_value() == EIO &&
         s.message().find("refused since a flush failed") != std::string::npos;
}

// After a flush failed in a sync or a metadata write: writes, zeroes, trims
// and flushes are refused, reads still see every acknowledged byte, and the
// file, reopened (repaired), holds everything the last good flush made durable.
void check_refusing(qt::MemImage &mi, std::unique_ptr<Image> &img, const Model &m,
                    const Flushed &f) {
  std::vector<uint8_t> b(100, 0x5a);
  CHECK(is_refusal(img->write(b.data(), b.size(), 3 * kCs, false)));
  CHECK(is_refusal(img->zero(0, kCs, qed::ZeroFlags{})));
  CHECK(is_refusal(img->trim(0, kCs, false)));
  CHECK(is_refusal(img->flush()));
  CHECK(m.mismatch(qt::read_all(*img)) == -1);
  mi.last_fault->clear_failures();
  CHECK(is_refusal(img->close()));  // writes nothing: NEED_CHECK stays set
  img.reset();
  auto re = qt::open_mem(mi, qt::rw_options());  // repairs
  CHECK(qt::check_structure(mi.mem->contents()).empty());
  const int64_t bad = f.mismatch(qt::read_all(*re));
  INFO("first byte lost from the last good flush: " << bad);
  CHECK(bad == -1);
}

// Runs the workload, keeping `f` up to date; returns the failures seen and
// sets `refusing` once the image refuses writes.
int run_workload(Image &img, Model &m, Flushed &f, const std::vector<Op> &ops, bool &refusing) {
  int failures = 0;
  for (const Op &op : ops) {
    f.touch(op);
    const Status s = apply(img, m, op);
    if (s.is_ok()) {
      CHECK(!refusing);
      if (op.kind == Op::kFlush)
        f.flushed(m);
      continue;
    }
    failures++;
    INFO(s.message());
    if (refusing) {
      CHECK(is_refusal(s));
    } else {
      CHECK((s.errno_value() == EIO || s.errno_value() == ENOSPC));
      CHECK(s.message().find("injected") != std::string::npos);
      refusing = is_refusal(img.flush());
    }
  }
  return failures;
}
}  // namespace

TEST_CASE("the Nth write, sync or extend fails: that request fails; a failed flush makes the image refuse writes until reopened") {
  const auto ops = workload(1, 30);
  qt::TempDir dir;
  qt::MemImage mi = qt::MemImage::create(dir, "f.qed", kSize, kCs, kTs);
  const std::vector<uint8_t> fresh = mi.mem->contents();
  for (FileOp failing : {FileOp::kWrite, FileOp::kSync, FileOp::kExtend}) {
    int runs_with_a_failure = 0, runs_refusing = 0;
    for (uint64_t nth = 1; nth <= 40; nth++) {
      CAPTURE(int(failing));
      CAPTURE(nth);
      mi.mem = std::make_shared<qed::MemoryFile>(fresh, mi.path);
      Model m;
      Flushed f;
      auto img = qt::open_mem(mi, qt::rw_options());
      mi.last_fault->fail_nth(failing, nth, failing == FileOp::kExtend ? ENOSPC : EIO);
      bool refusing = false;
      const int failures = run_workload(*img, m, f, ops, refusing);
      CHECK(failures <= (refusing ? 30 : 1));
      runs_with_a_failure += failures > 0;
      if (failing == FileOp::kSync && failures > 0)
        CHECK(refusing);  // a failed sync always ends in refusal
      if (failing == FileOp::kExtend)
        CHECK(!refusing);  // nothing reached the disk: later flushes may work
      if (refusing) {
        runs_refusing++;
        check_refusing(mi, img, m, f);
        continue;
      }
      mi.last_fault->clear_failures();
      const Status fs = img->flush();
      INFO(fs.message());
      REQUIRE(fs.is_ok());
      // Everything acknowledged is durable now, even without close().
      {
        auto snapshot = copy_of(*mi.mem, mi.path);
        const std::string problem = qt::check_structure(snapshot->contents());
        INFO(problem);
        CHECK(problem.empty());
        const auto got = read_image(mi.path, snapshot);
        const int64_t bad = m.mismatch(got);
        INFO("first lost byte " << bad);
        CHECK(bad == -1);
      }
      REQUIRE(img->close().is_ok());
      img.reset();
      auto re = qt::open_mem(mi, qt::rw_options());
      CHECK(!re->header().needs_check());
      CHECK(m.mismatch(qt::read_all(*re)) == -1);
      if (failures == 0 && nth > 1)
        break;  // the workload made fewer calls than nth: later nth change nothing
    }
    CAPTURE(int(failing));
    CHECK(runs_with_a_failure >= (failing == FileOp::kExtend ? 2 : 5));
    if (failing != FileOp::kExtend)
      CHECK(runs_refusing >= 2);
  }
}

TEST_CASE("random failures of writes, syncs and extends: acknowledged data survives, refused or not") {
  qt::TempDir dir;
  qt::MemImage mi = qt::MemImage::create(dir, "r.qed", kSize, kCs, kTs);
  const std::vector<uint8_t> fresh = mi.mem->contents();
  int refused = 0;
  for (uint64_t seed = 1; seed <= 16; seed++) {
    CAPTURE(seed);
    mi.mem = std::make_shared<qed::MemoryFile>(fresh, mi.path);
    Model m;
    Flushed f;
    auto img = qt::open_mem(mi, qt::rw_options());
    mi.last_fault->fail_one_in(FileOp::kWrite, 7, seed, EIO);
    mi.last_fault->fail_one_in(FileOp::kSync, 9, seed * 3, EIO);
    mi.last_fault->fail_one_in(FileOp::kExtend, 5, seed * 7, ENOSPC);
    bool refusing = false;
    const int failures = run_workload(*img, m, f, workload(seed + 100, 60), refusing);
    CHECK(failures > 0);  // the test exercises something
    if (refusing) {
      refused++;
      check_refusing(mi, img, m, f);
      continue;
    }
    mi.last_fault->clear_failures();
    const Status fs = img->flush();
    INFO(fs.message());
    REQUIRE(fs.is_ok());
    // Acknowledged data reads back while still open, and after a crash now.
    CHECK(m.mismatch(qt::read_all(*img)) == -1);
    auto snapshot = copy_of(*mi.mem, mi.path);
    CHECK(qt::check_structure(snapshot->contents()).empty());
    CHECK(m.mismatch(read_image(mi.path, snapshot)) == -1);
    REQUIRE(img->close().is_ok());
    img.reset();
    auto re = qt::open_mem(mi, qt::rw_options());
    CHECK(m.mismatch(qt::read_all(*re)) == -1);
  }
  CHECK(refused > 0);
}

TEST_CASE("a failed metadata write: later writes and flushes fail with EIO, reads go on, a reopen repairs") {
  // Before this rule, a later flush that worked wrote L2 entries pointing at
  // data whose failed sync may have dropped it (fsyncgate).
  qt::TempDir dir;
  qt::MemImage mi = qt::MemImage::create(dir, "ff.qed", kSize, kCs, kTs);
  Model m;
  Flushed f;
  auto img = qt::open_mem(mi, qt::rw_options());
  std::vector<uint8_t> a(3 * kCs, 0x11);
  REQUIRE(img->write(a.data(), a.size(), kSpan - kCs, false).is_ok());
  m.set(kSpan - kCs, a.data(), a.size());
  REQUIRE(img->flush().is_ok());
  f.flushed(m);
  std::vector<uint8_t> b(5000, 0x22);
  REQUIRE(img->write(b.data(), b.size(), 50, false).is_ok());
  m.set(50, b.data(), b.size());
  f.touch({Op::kWrite, 50, b.size(), 0});
  // Every metadata write fails: the flush reports it.
  mi.last_fault->fail_one_in(FileOp::kWrite, 1, 1, EIO);
  const Status s = img->flush();
  CHECK(!s.is_ok());
  CHECK(s.errno_value() == EIO);
  CHECK(s.message().find("injected") != std::string::npos);
  mi.last_fault->clear_failures();
  check_refusing(mi, img, m, f);
}

TEST_CASE("a failed sync: the same, even though the next sync would succeed") {
  qt::TempDir dir;
  qt::MemImage mi = qt::MemImage::create(dir, "fs.qed", kSize, kCs, kTs);
  Model m;
  Flushed f;
  auto img = qt::open_mem(mi, qt::rw_options());
  std::vector<uint8_t> a(kCs, 0x33);
  REQUIRE(img->write(a.data(), a.size(), 7 * kCs, false).is_ok());
  m.set(7 * kCs, a.data(), a.size());
  f.touch({Op::kWrite, 7 * kCs, a.size(), 0});
  mi.last_fault->fail_nth(FileOp::kSync, 1, EIO);
  CHECK(!img->flush().is_ok());
  check_refusing(mi, img, m, f);
}

TEST_CASE("a failed extension (ENOSPC) fails the flush only: the image keeps working") {
  qt::TempDir dir;
  qt::MemImage mi = qt::MemImage::create(dir, "fe.qed", kSize, kCs, kTs);
  Model m;
  auto img = qt::open_mem(mi, qt::rw_options());
  std::vector<uint8_t> a(100, 0x44);
  REQUIRE(img->write(a.data(), a.size(), 9 * kCs, false).is_ok());
  m.set(9 * kCs, a.data(), a.size());
  mi.last_fault->fail_nth(FileOp::kExtend, 1, ENOSPC);
  const Status s = img->flush();
  CHECK(s.errno_value() == ENOSPC);
  REQUIRE(img->write(a.data(), a.size(), 11 * kCs, false).is_ok());
  m.set(11 * kCs, a.data(), a.size());
  REQUIRE(img->flush().is_ok());
  auto snapshot = copy_of(*mi.mem, mi.path);
  CHECK(m.mismatch(read_image(mi.path, snapshot)) == -1);
}

TEST_CASE("fua writes are durable when they return") {
  qt::TempDir dir;
  qt::MemImage mi = qt::MemImage::create(dir, "fua.qed", kSize, kCs, kTs);
  Model m;
  auto img = qt::open_mem(mi, qt::rw_options());
  qt::Rng r(4);
  for (int i = 0; i < 20; i++) {
    const uint64_t pos = r.below(kSize - 3 * kCs);
    std::vector<uint8_t> buf(r.range(1, 3 * kCs));
    qt::fill_pattern(buf.data(), buf.size(), r.next());
    REQUIRE(img->write(buf.data(), buf.size(), pos, true).is_ok());
    m.set(pos, buf.data(), buf.size());
    auto snapshot = copy_of(*mi.mem, mi.path);
    CHECK(m.mismatch(read_image(mi.path, snapshot)) == -1);
  }
}

TEST_CASE("a fua write into a cluster allocated since the last flush is durable") {
  // The first write allocates the cluster (its L2 entry is only in memory);
  // the second, with FUA, overwrites it in place. When the FUA write
  // returns, a crash must not lose it, so the L2 entry must be on disk too.
  qt::TempDir dir;
  qt::MemImage mi = qt::MemImage::create(dir, "fua2.qed", kSize, kCs, kTs);
  auto img = qt::open_mem(mi, qt::rw_options());
  std::vector<uint8_t> a(kCs, 0x31), b(100, 0x32);
  REQUIRE(img->write(a.data(), a.size(), 5 * kCs, false).is_ok());
  REQUIRE(img->write(b.data(), b.size(), 5 * kCs + 10, true).is_ok());
  auto snapshot = copy_of(*mi.mem, mi.path);  // a crash now
  const auto got = read_image(mi.path, snapshot);
  CHECK(got[5 * kCs + 10] == 0x32);
  CHECK(got[5 * kCs + 109] == 0x32);
  CHECK(got[5 * kCs] == 0x31);  // the FUA write needs the allocation durable
}

TEST_CASE("crash at any point: the image opens and holds everything flushed before") {
  qt::TempDir dir;
  qt::MemImage mi = qt::MemImage::create(dir, "crash.qed", kSize, kCs, kTs);
  const auto ops = workload(77, 50);
  auto img = qt::open_mem(mi, qt::rw_options());
  const std::vector<uint8_t> base = mi.mem->contents();
  mi.last_fault->set_recording(true);

  // For each completed flush: the log length when it returned, and which
  // bytes it made durable with which values.
  struct Durable {
    size_t log_len;
    Model m;
  };
  std::vector<Durable> durable;
  Model m;
  for (const Op &op : ops) {
    REQUIRE(apply(*img, m, op).is_ok());
    if (op.kind == Op::kFlush) {
      durable.push_back({mi.last_fault->records().size(), m});
    } else {
      // Any later write may or may not have reached the disk: forget those
      // bytes in every earlier durable state.
      for (auto &d : durable)
        d.m.forget(op.pos, op.len);
    }
  }
  const auto log = mi.last_fault->records();
  REQUIRE(log.size() > 20);
  // Each crash keeps everything up to the last sync before the cut and a
  // random part of what followed (crash_model.h).
  crash::CrashStates states(base, log);
  std::mt19937_64 rng(123);
  std::vector<uint8_t> got;
  int checked = 0;
  for (size_t cut = 0; cut <= log.size(); cut += (cut < 40 ? 1 : 2)) {
    CAPTURE(cut);
    const auto bytes = states.state_at(cut, crash::Survival::kRandom, rng);
    // Entries may point past the end of the file (an allocation that never
    // reached it); they read as unallocated.
    const std::string problem = qt::check_structure(bytes, true);
    INFO(problem);
    CHECK(problem.empty());
    auto mem = std::make_shared<qed::MemoryFile>(bytes, mi.path);
    qed::OpenOptions ro;
    qed::ChainState chain;
    auto opened = Image::open_file(mi.path, std::make_unique<qt::SharedFile>(mem), ro, chain);
    INFO(opened.status().message());
    REQUIRE(opened.is_ok());
    qt::read_all_into(**opened, got);
    // The newest flush that had returned by the cut.
    const Durable *d = nullptr;
    for (const auto &x : durable)
      if (x.log_len <= cut)
        d = &x;
    if (d) {
      const int64_t bad = d->m.mismatch(got);
      INFO("first lost byte " << bad);
      CHECK(bad == -1);
      checked++;
    }
    // A read-write open repairs nothing but must work, and new writes must
    // not land on clusters the old tables still name.
    if (cut % 10 == 0) {
      auto rw = Image::open_file(mi.path, std::make_unique<qt::SharedFile>(mem),
                                 qt::rw_options(), chain);
      INFO(rw.status().message());
      REQUIRE(rw.is_ok());
      std::vector<uint8_t> before = qt::read_all(**rw);
      CHECK(before == got);
      std::vector<uint8_t> w(2 * kCs, 0x99);
      REQUIRE((*rw)->write(w.data(), w.size(), kSpan - kCs, false).is_ok());
      std::memcpy(before.data() + kSpan - kCs, w.data(), w.size());
      REQUIRE((*rw)->close().is_ok());
      CHECK(qt::check_structure(mem->contents()).empty());
      qed::ChainState c2;
      auto again = Image::open_file(mi.path, std::make_unique<qt::SharedFile>(mem), ro, c2);
      REQUIRE(again.is_ok());
      QT_CHECK_SAME(qt::read_all(**again), before);
    }
  }
  CHECK(checked > 10);
  REQUIRE(img->close().is_ok());
}

TEST_SUITE_END();
