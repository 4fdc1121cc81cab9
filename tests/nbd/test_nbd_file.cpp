// libqed-nbd against real NBD servers: nbdkit (data, memory, file plugins,
// with filters that limit block sizes, delay replies or turn multi-conn off)
// on Unix sockets in a private folder. Skipped when nbdkit is missing.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "nbd/nbd_file.h"
#include "nbd/nbd_store.h"
#include "tests/nbd/nbd_test_util.h"

using qed::Status;
using qed_nbd::NbdFile;
using qed_nbd::NbdOptions;
using Code = qed::Status::Code;
using namespace std::chrono_literals;
using namespace nbd_test;


TEST_SUITE_BEGIN("nbd");

TEST_CASE("check_nbd_uri takes libnbd's URIs and refuses the rest, saying why") {
  for (const char *ok : {"nbd://host", "nbd://host:10810/export", "nbds://h/e",
                         "nbd+unix:///?socket=/s", "nbds+unix:///e?socket=/s", "nbd+vsock://2",
                         "nbd+tcp://host:10809/e"}) {
    CAPTURE(ok);
    CHECK(qed_nbd::check_nbd_uri(ok).is_ok());
  }
  for (const char *bad : {"http://host/x", "file:/images/base.raw", "json:{}", "nbd:unix:/s",
                          "nbd:host:10809", "NBD://host", "nbdx://h"}) {
    CAPTURE(bad);
    const Status s = qed_nbd::check_nbd_uri(bad);
    CHECK(s.code() == Code::kNotSupported);
    CHECK(s.message().rfind(bad, 0) == 0);  // starts with the URI
    CHECK(contains(s.message(), "nbd+unix:///[EXPORT]?socket=PATH"));
  }
  CHECK(contains(qed_nbd::check_nbd_uri("nbd:unix:/s").message(), "legacy"));
  qed_nbd::NbdStore store(quick_options());
  CHECK(*store.identity("nbd://h/e") == "nbd nbd://h/e");
  CHECK(!store.identity("http://h/e").is_ok());
  CHECK(!store.open("http://h/e", qed::BackingPlace{}).is_ok());
}

TEST_CASE("reads, the size, zeroes past the end, and no writes") {
  if (!have_nbdkit())
    return;
  TempDir dir;
  const auto data = pattern(3 * MiB + 1000, 1);
  write_file(dir.file("base.raw"), data);
  Server server(dir, "file", {"file", dir.file("base.raw")});
  auto f = open_ok(server.uri());
  CHECK(f->name() == server.uri());
  CHECK(*f->size() == data.size());
  std::vector<uint8_t> buf(data.size());
  REQUIRE(f->pread(buf.data(), buf.size(), 0).is_ok());
  CHECK(buf == data);
  // Across the end: the tail reads as zeroes; wholly beyond: all zeroes.
  std::vector<uint8_t> tail(3000, 0xee);
  REQUIRE(f->pread(tail.data(), tail.size(), data.size() - 1000).is_ok());
  CHECK(std::equal(tail.begin(), tail.begin() + 1000, data.end() - 1000));
  CHECK(std::all_of(tail.begin() + 1000, tail.end(), [](uint8_t b) { return b == 0; }));
  std::fill(tail.begin(), tail.end(), 0xee);
  REQUIRE(f->pread(tail.data(), tail.size(), data.size() + 5).is_ok());
  CHECK(std::all_of(tail.begin(), tail.end(), [](uint8_t b) { return b == 0; }));
  REQUIRE(f->pread(tail.data(), 0, 0).is_ok());
  // Write side: read-only, naming the URI.
  for (const Status &s : {f->pwrite(buf.data(), 10, 0), f->sync(), f->truncate(0),
                          f->extend_to(10 * MiB), f->punch_hole(0, 4096), f->zero_range(0, 4096)}) {
    CHECK(s.code() == Code::kReadOnly);
    CHECK(s.errno_value() == EROFS);
    CHECK(s.message().rfind(server.uri(), 0) == 0);
  }
  std::vector<uint8_t> again(data.size());
  REQUIRE(f->pread(again.data(), again.size(), 0).is_ok());
  CHECK(again == data);
}

TEST_CASE("requests are split at the maximum block size and aligned to the minimum") {
  if (!have_nbdkit())
    return;
  TempDir dir;
  const auto data = pattern(2 * MiB, 2);
  write_file(dir.file("base.raw"), data);
  // The filter fails any request that breaks the limits.
  Server server(dir, "bs",
                {"--filter=blocksize-policy", "file", dir.file("base.raw"),
                 "blocksize-minimum=4096", "blocksize-maximum=65536",
                 "blocksize-error-policy=error"});
  auto f = open_ok(server.uri());
  CHECK(f->max_request_bytes() == 65536);
  CHECK(f->min_block_bytes() == 4096);
  std::vector<uint8_t> buf(data.size());
  REQUIRE(f->pread(buf.data(), buf.size(), 0).is_ok());
  CHECK(buf == data);
  for (auto [off, len] : {std::pair<uint64_t, size_t>{1, 1}, {4095, 2}, {5000, 100},
                          {65536 - 7, 65536 + 20}, {MiB - 3, 300000}, {2 * MiB - 5, 5}}) {
    CAPTURE(off);
    CAPTURE(len);
    std::vector<uint8_t> part(len);
    const Status s = f->pread(part.data(), len, off);
    INFO(s.message());
    REQUIRE(s.is_ok());
    CHECK(std::equal(part.begin(), part.end(), data.begin() + int64_t(off)));
  }
  auto run = f->probe_run(5000, 10000);
  REQUIRE(run.is_ok());
  CHECK(!run->hole);
  CHECK(run->length == 10000);

  SUBCASE("an export whose size is not a multiple of the minimum block size") {
    write_file(dir.file("odd.raw"), pattern(MiB + 100, 3));
    Server odd(dir, "odd", {"--filter=blocksize-policy", "file", dir.file("odd.raw"),
                            "blocksize-minimum=4096", "blocksize-error-policy=error"});
    auto g = open_ok(odd.uri());
    std::vector<uint8_t> part(200);
    CHECK(g->pread(part.data(), 100, MiB - 100).is_ok());
    const Status s = g->pread(part.data(), 200, MiB - 100);
    CHECK(s.errno_value() == EIO);
    CHECK(s.message() == odd.uri() + ": cannot read the last 100 bytes of the export: its size "
                                     "is not a multiple of the server's minimum block size "
                                     "(4096 bytes)");
    auto tail = g->probe_run(MiB, 100);
    REQUIRE(tail.is_ok());
    CHECK(!tail->hole);
  }
}

TEST_CASE("probe_run reports base:allocation holes and data") {
  if (!have_nbdkit())
    return;
  TempDir dir;
  // The data plugin keeps 32 KiB pages and reports a page (or the part of it
  // asked about) as a hole when it is all zeroes: data at [0,64K),
  // [1M,1M+32K) and [3M-32K,3M).
  Server server(dir, "data",
                {"data", "(1)*40000 @1048576 (2)*100 @3145600 (3)*128", "size=4M"});
  auto f = open_ok(server.uri());
  REQUIRE(f->has_block_status());
  struct Want {
    uint64_t off, limit;
    bool hole;
    uint64_t length;
  };
  for (const Want &w : std::vector<Want>{{0, 4 * MiB, false, 65536},
                                         {100, 4 * MiB, false, 65536 - 100},
                                         {100, 1000, false, 1000},
                                         {65536, 4 * MiB, true, MiB - 65536},
                                         {70000, 1000, true, 1000},
                                         {MiB, 4 * MiB, false, 32768},
                                         {3 * MiB - 32768, 4 * MiB, false, 32768},
                                         {3 * MiB, 4 * MiB, true, MiB},
                                         {4 * MiB, 512, true, 512}}) {
    CAPTURE(w.off);
    auto r = f->probe_run(w.off, w.limit);
    INFO(r.status().message());
    REQUIRE(r.is_ok());
    CHECK(r->hole == w.hole);
    CHECK(r->length == w.length);
  }
  SUBCASE("no block status (no structured replies): everything is data") {
    Server plain(dir, "nosr", {"--no-sr", "data", "1", "size=1M"});
    auto g = open_ok(plain.uri());
    CHECK(!g->has_block_status());
    auto r = g->probe_run(4096, 8192);
    REQUIRE(r.is_ok());
    CHECK(!r->hole);
    CHECK(r->length == 8192);
  }
}

namespace {

// What nbdkit's log filter says the server was asked: block status requests,
// and the extents it sent back.
struct StatusLog {
  int requests = 0;
  uint64_t extents = 0;
};

StatusLog read_status_log(const std::string &path) {
  StatusLog log;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    if (contains(line, " Extents id="))
      log.requests++;
    if (contains(line, " ...Extents id="))  // each extent: offset length "type"
      log.extents += uint64_t(std::count(line.begin(), line.end(), '"')) / 2;
  }
  return log;
}

}  // namespace

TEST_CASE("a walk over a fragmented export: every run, requests and extents linear") {
  if (!have_nbdkit())
    return;
  TempDir dir;
  // The data plugin's 32 KiB pages: data and a hole in each 64 KiB, 3000
  // extents, more than one reply keeps (StatusCache::kMaxSpans).
  const int pairs = 1500;
  Server server(dir, "frag",
                {"--filter=log", "data", "(1 @+65535)*" + std::to_string(pairs),
                 "logfile=" + dir.file("frag.log")});
  {
    auto f = open_ok(server.uri());
    REQUIRE(f->has_block_status());
    const uint64_t size = *f->size();
    REQUIRE(size == uint64_t(pairs) * 65536);
    int runs = 0;
    for (uint64_t pos = 0; pos < size;) {
      auto run = f->probe_run(pos, size - pos);
      INFO(run.status().message());
      REQUIRE(run.is_ok());
      CAPTURE(pos);
      // Runs may end early (at the end of a reply), never late.
      const uint64_t page_end = (pos / 32768 + 1) * 32768;
      REQUIRE(run->hole == (pos / 32768 % 2 == 1));
      REQUIRE(run->length <= page_end - pos);
      REQUIRE(run->length > 0);
      pos += run->length;
      runs++;
    }
    CHECK(runs >= 2 * pairs);
    CHECK(runs <= 2 * pairs + 8);
  }
  server.stop(SIGTERM);  // the log is complete
  const StatusLog log = read_status_log(dir.file("frag.log"));
  MESSAGE("3000 extents: " << log.requests << " block status requests, " << log.extents
                           << " extents sent");
  CHECK(log.requests >= 1);
  // Linear: each request answers about kMaxSpans extents (it was one request
  // per extent, and N^2/2 extents sent).
  CHECK(log.requests <= 2 * pairs / 1000 + 4);
  CHECK(log.extents <= 3 * 2 * pairs);
}

TEST_CASE("parallel reads use up to N connections with multi-conn, one without") {
  if (!have_nbdkit())
    return;
  TempDir dir;
  const auto data = pattern(8 * MiB, 3);
  write_file(dir.file("base.raw"), data);
  auto hammer = [&](NbdFile &f) {
    std::atomic<int> bad{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; t++)
      threads.emplace_back([&, t] {
        std::vector<uint8_t> buf(70000);
        for (int i = 0; i < 60; i++) {
          const uint64_t off = (uint64_t(t) * 1000003 + uint64_t(i) * 7919 * 512) % (8 * MiB - 70000);
          if (!f.pread(buf.data(), buf.size(), off).is_ok() ||
              !std::equal(buf.begin(), buf.end(), data.begin() + int64_t(off)))
            bad++;
        }
      });
    for (auto &th : threads)
      th.join();
    CHECK(bad == 0);
  };
  SUBCASE("multi-conn") {
    // Replies are delayed so that the reads overlap.
    Server server(dir, "mc", {"--filter=delay", "file", dir.file("base.raw"), "delay-read=2ms"});
    NbdOptions o = quick_options();
    o.connections = 3;
    auto f = open_ok(server.uri(), o);
    CHECK(f->max_connections() == 3);
    hammer(*f);
    CHECK(f->open_connections() == 3);
    // Block status needs a connection with structured replies: one of the
    // idle plain ones makes room for it, and reads still work afterwards.
    auto run = f->probe_run(0, MiB);
    INFO(run.status().message());
    REQUIRE(run.is_ok());
    CHECK(!run->hole);
    CHECK(f->open_connections() == 3);
    hammer(*f);
    CHECK(f->open_connections() == 3);
  }
  SUBCASE("no multi-conn") {
    Server server(dir, "single", {"--filter=multi-conn", "--filter=delay", "file",
                                  dir.file("base.raw"), "multi-conn-mode=disable",
                                  "delay-read=1ms"});
    NbdOptions o = quick_options();
    o.connections = 3;
    auto f = open_ok(server.uri(), o);
    CHECK(f->max_connections() == 1);
    hammer(*f);
    CHECK(f->open_connections() == 1);
    // The lone connection does block status too.
    auto run = f->probe_run(0, MiB);
    INFO(run.status().message());
    REQUIRE(run.is_ok());
    CHECK(!run->hole);
    CHECK(f->open_connections() == 1);
  }
}

TEST_CASE("a server that does not answer: bounded connect and request times") {
  if (!have_nbdkit())
    return;
  TempDir dir;
  SUBCASE("connect: a socket that accepts and never speaks") {
    const std::string path = dir.file("mute.sock");
    const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    REQUIRE(fd >= 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr *>(&addr), sizeof addr) == 0);
    REQUIRE(::listen(fd, 8) == 0);
    NbdOptions o = quick_options();
    o.connect_timeout_ms = 300;
    const auto t0 = std::chrono::steady_clock::now();
    auto f = NbdFile::open("nbd+unix:///?socket=" + path, o);
    const auto took = std::chrono::steady_clock::now() - t0;
    ::close(fd);
    REQUIRE(!f.is_ok());
    INFO(f.status().message());
    CHECK(f.status().errno_value() == EIO);
    CHECK(contains(f.status().message(), "no answer within 300 ms"));
    CHECK(took < 3s);
  }
  SUBCASE("request: replies slower than the timeout") {
    write_file(dir.file("base.raw"), pattern(MiB, 4));
    Server server(dir, "slow", {"--filter=delay", "file", dir.file("base.raw"), "delay-read=3"});
    NbdOptions o = quick_options();
    o.request_timeout_ms = 300;
    auto f = open_ok(server.uri(), o);
    std::vector<uint8_t> buf(4096);
    const auto t0 = std::chrono::steady_clock::now();
    const Status s = f->pread(buf.data(), buf.size(), 0);
    CHECK(std::chrono::steady_clock::now() - t0 < 2500ms);
    INFO(s.message());
    CHECK(s.errno_value() == EIO);
    CHECK(s.message().rfind(server.uri() + ": read at offset 0: no reply within 300 ms", 0) == 0);
    f.reset();  // closes the connections, so that nbdkit can exit
  }
}

TEST_CASE("the server goes away and comes back: EIO naming the URI, then reads again") {
  if (!have_nbdkit())
    return;
  TempDir dir;
  const auto data = pattern(MiB, 5);
  write_file(dir.file("base.raw"), data);
  Server server(dir, "base", {"file", dir.file("base.raw")});
  auto f = open_ok(server.uri());
  std::vector<uint8_t> buf(4096);
  REQUIRE(f->pread(buf.data(), buf.size(), 8192).is_ok());

  for (int sig : {SIGKILL, SIGTERM}) {
    CAPTURE(sig);
    // SIGTERM: nbdkit answers ESHUTDOWN until its clients leave, which the
    // first failed read makes us do; then it exits.
    std::thread stopper([&] { server.stop(sig); });
    if (sig == SIGKILL)
      stopper.join();
    else
      std::this_thread::sleep_for(200ms);
    for (int i = 0; i < 3; i++) {
      const Status s = f->pread(buf.data(), buf.size(), 4096 * uint64_t(i));
      INFO(s.message());
      CHECK(s.code() == Code::kIoError);
      CHECK(s.errno_value() == EIO);
      CHECK(s.message().rfind(server.uri() + ": ", 0) == 0);
    }
    if (stopper.joinable())
      stopper.join();
    server.start();
    // Picked up within the back-off delay (at most 200 ms here).
    Status s;
    for (int i = 0; i < 50; i++) {
      s = f->pread(buf.data(), buf.size(), 65536);
      if (s.is_ok())
        break;
      std::this_thread::sleep_for(20ms);
    }
    INFO(s.message());
    REQUIRE(s.is_ok());
    CHECK(std::equal(buf.begin(), buf.end(), data.begin() + 65536));
  }

  SUBCASE("a server restarted with another disk is refused") {
    f->pread(buf.data(), buf.size(), 0);
    server.stop(SIGKILL);
    write_file(dir.file("base.raw"), pattern(2 * MiB, 6));
    server.start();
    Status s;
    for (int i = 0; i < 20 && !contains(s.message(), "changed size"); i++) {
      s = f->pread(buf.data(), buf.size(), 0);
      std::this_thread::sleep_for(30ms);
    }
    INFO(s.message());
    CHECK(contains(s.message(), "the export changed size from 1048576 to 2097152 bytes"));
  }
  f.reset();
}

TEST_CASE("open fails with a message naming the URI") {
  if (!have_nbdkit())
    return;
  TempDir dir;
  const std::string uri = "nbd+unix:///?socket=" + dir.file("nobody.sock");
  auto f = NbdFile::open(uri, quick_options());
  REQUIRE(!f.is_ok());
  INFO(f.status().message());
  CHECK(f.status().message().rfind(uri + ": cannot connect: ", 0) == 0);
  CHECK(f.status().errno_value() == EIO);
}

TEST_SUITE_END();
