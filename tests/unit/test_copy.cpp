// Copy-on-read and the stream (lib/image_copy.cpp, lib/stream.*): what they
// copy, that a client write always wins over a copy (deterministic races,
// with a gate on the backing file's reads), that a failed copy does not fail
// the read, and stream-and-detach with stop, resume and a failing base.
#include <doctest/doctest.h>

#include <cstring>
#include <thread>

#include "tests/support/gate_file.h"
#include "lib/stream.h"
#include "tests/unit/test_util.h"

using qed::Image;
using qed::Run;
using qed::Status;

TEST_SUITE_BEGIN("copy");

namespace {

constexpr uint64_t KiB = 1024, MiB = 1 << 20;

// Opens local backing files through a GateFile, kept in `gate`.
class GateStore final : public qed::BackingStore {
public:
  std::shared_ptr<qt::GateFile> gate;
  qed::Result<std::string> identity(const std::string &name) override {
    return posix.identity(name);
  }
  qed::Result<std::unique_ptr<qed::File>> open(const std::string &name,
                                               const qed::BackingPlace &place) override {
    auto f = posix.open(name, place);
    if (!f)
      return f.status();
    gate = std::make_shared<qt::GateFile>(std::shared_ptr<qed::File>(std::move(*f)));
    return std::unique_ptr<qed::File>(std::make_unique<qt::SharedFile>(gate));
  }

private:
  qed::PosixBackingStore posix;
};

// base.raw: a pattern, with a hole (never written) in [size/4, size/2); and
// top.qed over it, empty.
struct Chain {
  qt::TempDir dir;
  std::vector<uint8_t> base;
  std::string top;
  std::shared_ptr<GateStore> store = std::make_shared<GateStore>();

  Chain(uint64_t size, uint32_t cs) : base(size, 0) {
    qt::fill_pattern(base.data(), size / 4, 1);
    qt::fill_pattern(base.data() + size / 2, size / 2, 2);
    {
      std::ofstream out(dir.file("base.raw"), std::ios::binary);
      out.write(reinterpret_cast<const char *>(base.data()), std::streamsize(size / 4));
      out.seekp(std::streamoff(size / 2));
      out.write(reinterpret_cast<const char *>(base.data() + size / 2), std::streamsize(size / 2));
      REQUIRE(out.good());
    }
    top = dir.file("top.qed");
    qt::make_image(top, size, cs, 4, "base.raw", "raw");
  }

  std::unique_ptr<Image> open(bool copy_on_read,
                              std::function<void(const Status &)> on_failure = {}) {
    qed::OpenOptions o = qt::rw_options();
    o.copy_on_read = copy_on_read;
    o.on_copy_failure = std::move(on_failure);
    o.backing_stores.local = store;
    return qt::open_path(top, o);
  }
  qt::GateFile &gate() { return *store->gate; }
};

std::vector<uint8_t> read_at(Image &img, uint64_t pos, size_t n) {
  std::vector<uint8_t> out(n);
  const Status s = img.read(out.data(), n, pos);
  INFO(s.message());
  REQUIRE(s.is_ok());
  return out;
}

Run::Kind kind_at(Image &img, uint64_t pos) {
  auto r = img.lookup(pos, 1);
  REQUIRE(r.is_ok());
  return r->kind;
}

std::vector<uint8_t> slice(const std::vector<uint8_t> &v, uint64_t pos, size_t n) {
  return std::vector<uint8_t>(v.begin() + long(pos), v.begin() + long(pos + n));
}

}  // namespace

TEST_CASE("copy-on-read copies whole clusters once, at every cluster size") {
  for (uint32_t cs : {4096u, 65536u, 1u << 20}) {
    CAPTURE(cs);
    const uint64_t size = 16 * uint64_t(cs);
    Chain c(size, cs);
    {
      auto img = c.open(true);
      // Across a cluster boundary, starting and ending inside clusters.
      const uint64_t pos = cs + cs / 2, n = cs;
      CHECK(read_at(*img, pos, n) == slice(c.base, pos, n));
      CHECK(kind_at(*img, cs) == Run::kData);
      CHECK(kind_at(*img, 2 * cs) == Run::kData);
      CHECK(kind_at(*img, 0) == Run::kUnallocated);
      CHECK(kind_at(*img, 3 * cs) == Run::kUnallocated);
      // Fetched once: the read's bytes, and the rest of the two clusters.
      CHECK(c.gate().bytes_read() == 2 * cs);
      const uint64_t reads = c.gate().reads();
      CHECK(read_at(*img, cs, 2 * cs) == slice(c.base, cs, 2 * cs));
      CHECK(c.gate().reads() == reads);
      REQUIRE(img->close().is_ok());
    }
    // The copies are in the image: with the base failing, they still read.
    auto img = c.open(false);
    c.gate().fail_reads(true);
    CHECK(read_at(*img, cs, 2 * cs) == slice(c.base, cs, 2 * cs));
    std::vector<uint8_t> buf(cs);
    CHECK(!img->read(buf.data(), cs, 0).is_ok());
  }
}

TEST_CASE("without copy-on-read, reads copy nothing") {
  Chain c(16 * 65536, 65536);
  auto img = c.open(false);
  CHECK(read_at(*img, 65536, 65536) == slice(c.base, 65536, 65536));
  CHECK(kind_at(*img, 65536) == Run::kUnallocated);
}

TEST_CASE("a write to a cluster being copied waits for the copy, then overwrites it") {
  const uint32_t cs = 65536;
  Chain c(16 * cs, cs);
  auto img = c.open(true);
  // Read 1 is the client's (the middle of cluster 1), read 2 the copy's head:
  // the copy then holds cluster 1 in flight.
  c.gate().hold_read(2);
  std::vector<uint8_t> got;
  std::thread reader([&] { got = read_at(*img, cs + cs / 4, cs / 2); });
  REQUIRE(c.gate().wait_reached());
  std::vector<uint8_t> mine(512, 0xab);
  std::atomic<bool> written{false};
  std::thread writer([&] {
    CHECK(img->write(mine.data(), mine.size(), cs, false).is_ok());
    written = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK(!written.load());  // it waits for the copy's clusters
  c.gate().open_gate();
  reader.join();
  writer.join();
  CHECK(got == slice(c.base, cs + cs / 4, cs / 2));
  std::vector<uint8_t> want = slice(c.base, cs, cs);
  std::memcpy(want.data(), mine.data(), mine.size());
  CHECK(read_at(*img, cs, cs) == want);
  REQUIRE(img->flush().is_ok());
  REQUIRE(img->close().is_ok());
  img.reset();
  auto again = c.open(false);
  CHECK(read_at(*again, cs, cs) == want);
}

TEST_CASE("a copy never overwrites a write or a zero that came first") {
  const uint32_t cs = 65536;
  for (bool zero : {false, true}) {
    CAPTURE(zero);
    Chain c(16 * cs, cs);
    auto img = c.open(true);
    // The client's read of the base waits at the gate; meanwhile a write
    // (or a zero) takes the whole cluster; then the read's copy goes on.
    c.gate().hold_read(1);
    std::vector<uint8_t> got;
    std::thread reader([&] { got = read_at(*img, 2 * cs, cs); });
    REQUIRE(c.gate().wait_reached());
    std::vector<uint8_t> mine(cs, 0x5a);
    if (zero) {
      std::fill(mine.begin(), mine.end(), 0);
      REQUIRE(img->zero(2 * cs, cs, qed::ZeroFlags{}).is_ok());
    } else {
      REQUIRE(img->write(mine.data(), cs, 2 * cs, false).is_ok());
    }
    c.gate().open_gate();
    reader.join();
    CHECK(got == slice(c.base, 2 * cs, cs));  // the read began before the write
    CHECK(read_at(*img, 2 * cs, cs) == mine);
    REQUIRE(img->close().is_ok());
    img.reset();
    auto again = c.open(false);
    CHECK(read_at(*again, 2 * cs, cs) == mine);
  }
}

TEST_CASE("a copy that cannot be written does not fail the read, and is reported once") {
  const uint32_t cs = 65536;
  Chain c(16 * cs, cs);
  qt::MemImage m;
  m.path = c.top;
  m.mem = std::make_shared<qed::MemoryFile>(qt::read_whole_file(c.top), c.top);
  qed::OpenOptions o = qt::rw_options();
  o.copy_on_read = true;
  o.backing_stores.local = c.store;
  std::vector<std::string> failures;
  o.on_copy_failure = [&](const Status &s) { failures.push_back(s.message()); };
  auto img = qt::open_mem(m, o);
  m.last_fault->fail_one_in(qed::FileOp::kWrite, 1, 1, ENOSPC);
  CHECK(read_at(*img, 0, 2 * cs) == slice(c.base, 0, 2 * cs));
  CHECK(read_at(*img, 4 * cs, cs) == slice(c.base, 4 * cs, cs));
  REQUIRE(failures.size() == 1);
  CHECK(failures[0].find("copy-on-read") != std::string::npos);
  CHECK(failures[0].find(c.top) != std::string::npos);
  CHECK(kind_at(*img, 0) == Run::kUnallocated);
  m.last_fault->clear_failures();
  CHECK(img->write(c.base.data(), 512, 8 * cs, false).is_ok());  // the image still works
}

namespace {

qed::Result<bool> stream_to_end(Image &img, qed::StreamOptions o = {}) {
  qed::Stream s(img, std::move(o));
  return s.run();
}

// Reopens `path` without its backing file allowed: it must not need one.
std::unique_ptr<Image> open_standalone(const std::string &path) {
  qed::OpenOptions o = qt::rw_options();
  o.allow_backing = false;
  return qt::open_path(path, o);
}

}  // namespace

TEST_CASE("the stream copies what has data, skips holes, and detaches") {
  for (uint32_t cs : {4096u, 65536u, 1u << 20}) {
    CAPTURE(cs);
    const uint64_t size = 32 * uint64_t(cs);
    Chain c(size, cs);
    {
      auto img = c.open(false);
      std::vector<uint8_t> mine(cs / 2 + 7, 0x77);
      REQUIRE(img->write(mine.data(), mine.size(), 3 * cs + 5, false).is_ok());
      std::memcpy(c.base.data() + 3 * cs + 5, mine.data(), mine.size());
      int progress = 0;
      qed::StreamOptions o;
      o.on_progress = [&](const qed::StreamProgress &p) {
        progress++;
        CHECK(p.done == p.total);
      };
      auto r = stream_to_end(*img, o);
      INFO(r.status().message());
      REQUIRE(r.is_ok());
      CHECK(*r);
      CHECK(progress == 1);
      CHECK(img->detached());
      CHECK(!img->has_backing());
      CHECK(img->description().find("standalone") != std::string::npos);
      CHECK(!img->header().has_backing_file());
      // Holes in the base stay unallocated: no read, no allocation.
      CHECK(kind_at(*img, size / 4) == Run::kUnallocated);
      CHECK(kind_at(*img, size / 2 - 1) == Run::kUnallocated);
      CHECK(kind_at(*img, 0) == Run::kData);
      CHECK(qt::read_all(*img) == c.base);
      // Writes after the detach: nothing below any more.
      REQUIRE(img->write(mine.data(), mine.size(), size / 4 + 1, false).is_ok());
      std::memcpy(c.base.data() + size / 4 + 1, mine.data(), mine.size());
      REQUIRE(img->close().is_ok());
    }
    auto img = open_standalone(c.top);
    CHECK(qt::read_all(*img) == c.base);
    CHECK(qt::check_structure(qt::read_whole_file(c.top)).empty());
  }
}

TEST_CASE("a stopped stream keeps what it copied and a new one resumes") {
  const uint32_t cs = 65536;
  const uint64_t size = 512 * cs;  // 32 MiB: several steps
  Chain c(size, cs);
  {
    auto img = c.open(false);
    qed::Stream s(*img, {});
    c.gate().hold_read(3);
    qed::Result<bool> r = false;
    std::thread t([&] { r = s.run(); });
    REQUIRE(c.gate().wait_reached());
    s.stop();
    c.gate().open_gate();
    t.join();
    INFO(r.status().message());
    REQUIRE(r.is_ok());
    CHECK(!*r);
    CHECK(!img->detached());
    CHECK(kind_at(*img, 0) == Run::kData);
    REQUIRE(img->close().is_ok());
  }
  auto img = c.open(false);
  CHECK(img->has_backing());
  CHECK(kind_at(*img, 0) == Run::kData);
  const uint64_t before = c.gate().bytes_read();
  auto r = stream_to_end(*img);
  REQUIRE(r.is_ok());
  CHECK(*r);
  // Resumed: what the first stream copied was not fetched again.
  CHECK(c.gate().bytes_read() - before < size * 3 / 4);
  REQUIRE(img->close().is_ok());
  img.reset();
  auto standalone = open_standalone(c.top);
  CHECK(qt::read_all(*standalone) == c.base);
}

TEST_CASE("a failing base pauses the stream, which resumes when it answers") {
  const uint32_t cs = 65536;
  Chain c(64 * cs, cs);
  auto img = c.open(false);
  int pauses = 0, resumes = 0;
  qed::StreamOptions o;
  o.on_pause = [&](const Status &why) {
    pauses++;
    CHECK(why.message().find("gate file") != std::string::npos);
    // Clients that do not need the base go on meanwhile.
    std::vector<uint8_t> mine(cs, 1);  // a whole cluster: no copy-on-write
    CHECK(img->write(mine.data(), mine.size(), 63 * cs, false).is_ok());
    std::memcpy(c.base.data() + 63 * cs, mine.data(), mine.size());
    c.gate().fail_reads(false);
  };
  o.on_resume = [&] { resumes++; };
  c.gate().fail_reads(true);
  auto r = stream_to_end(*img, o);
  INFO(r.status().message());
  REQUIRE(r.is_ok());
  CHECK(*r);
  // Once per outage: workers that failed at the same time log it once (a
  // worker slow to notice may make it two outages, each ended).
  CHECK(pauses >= 1);
  CHECK(resumes == pauses);
  CHECK(qt::read_all(*img) == c.base);
}

TEST_CASE("writes racing the stream and copy-on-read end as the model says") {
  const uint32_t cs = 4096;
  const uint64_t size = 256 * cs;
  Chain c(size, cs);
  auto img = c.open(true);
  std::vector<uint8_t> model = c.base;
  std::mutex model_mu;
  qed::Stream s(*img, {});
  qed::Result<bool> r = false;
  std::thread streamer([&] { r = s.run(); });
  // Each writer owns the clusters i % 3 == w, so the model's order is the
  // order of its own writes; the readers copy-on-read everywhere.
  std::vector<std::thread> threads;
  for (int w = 0; w < 3; w++)
    threads.emplace_back([&, w] {
      qt::Rng rng(uint64_t(w) + 10);
      for (int i = 0; i < 300; i++) {
        uint64_t cluster = rng.next() % (size / cs);
        cluster -= cluster % 3;
        cluster += uint64_t(w);
        if (cluster >= size / cs)
          continue;
        const uint64_t off = rng.next() % cs, n = 1 + rng.next() % (cs - off);
        std::vector<uint8_t> data(n, uint8_t(1 + rng.next() % 255));
        REQUIRE(img->write(data.data(), n, cluster * cs + off, false).is_ok());
        std::lock_guard lock(model_mu);
        std::memcpy(model.data() + cluster * cs + off, data.data(), n);
      }
    });
  threads.emplace_back([&] {
    qt::Rng rng(99);
    std::vector<uint8_t> buf(2 * cs);
    for (int i = 0; i < 300; i++)
      CHECK(img->read(buf.data(), buf.size(), rng.next() % (size - buf.size())).is_ok());
  });
  for (auto &t : threads)
    t.join();
  streamer.join();
  REQUIRE(r.is_ok());
  CHECK(*r);
  CHECK(qt::first_diff(qt::read_all(*img), model) == -1);
  REQUIRE(img->close().is_ok());
  img.reset();
  auto standalone = open_standalone(c.top);
  CHECK(qt::first_diff(qt::read_all(*standalone), model) == -1);
}

TEST_SUITE_END();
