// Several requests' commands in flight on one connection (nbd_conn.h): many
// readers on few connections, block status beside reads, a server that dies
// or stops answering with commands in flight, and the reconnection after.
// Against nbdkit on Unix sockets; skipped when nbdkit is missing.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "nbd/nbd_file.h"
#include "tests/nbd/nbd_test_util.h"

using qed::Status;
using qed_nbd::NbdFile;
using qed_nbd::NbdOptions;
using namespace std::chrono_literals;
using namespace nbd_test;

TEST_SUITE_BEGIN("nbd");

namespace {

// Runs `fn(t)` on `n` threads at once and waits for all of them.
template <class Fn>
void on_threads(int n, Fn fn) {
  std::vector<std::thread> threads;
  for (int t = 0; t < n; t++)
    threads.emplace_back(fn, t);
  for (auto &th : threads)
    th.join();
}

}  // namespace

TEST_CASE("many readers on one connection: their commands are in flight together") {
  if (!have_nbdkit())
    return;
  TempDir dir;
  const auto data = pattern(4 * MiB, 11);
  write_file(dir.file("base.raw"), data);
  // Every reply takes 400 ms. One request at a time on the one connection,
  // 16 reads would take 6.4 s, beyond the 3 s a request may take; all in
  // flight at once (nbdkit serves up to 16 requests of a connection in
  // parallel), they take about 400 ms.
  Server server(dir, "slow", {"--filter=multi-conn", "--filter=delay", "file",
                              dir.file("base.raw"), "multi-conn-mode=disable",
                              "delay-read=400ms"});
  NbdOptions o = quick_options();
  o.request_timeout_ms = 3000;
  o.connections = 4;
  auto f = open_ok(server.uri(), o);
  REQUIRE(f->max_connections() == 1);
  std::atomic<int> bad{0};
  std::vector<std::string> why(16);
  on_threads(16, [&](int t) {
    std::vector<uint8_t> buf(5000);
    const uint64_t off = uint64_t(t) * 200003 % (4 * MiB - buf.size());
    const Status s = f->pread(buf.data(), buf.size(), off);
    if (!s.is_ok() || !std::equal(buf.begin(), buf.end(), data.begin() + int64_t(off))) {
      why[size_t(t)] = s.message();
      bad++;
    }
  });
  std::string failures;
  for (const auto &w : why)
    if (!w.empty())
      failures += w + "\n";
  INFO(failures);
  CHECK(bad == 0);
  CHECK(f->open_connections() == 1);
}

TEST_CASE("many readers and block status on few connections: every byte and extent right") {
  if (!have_nbdkit())
    return;
  TempDir dir;
  // Data in the first 32 KiB page of every 64 KiB, holes in the second.
  std::string script;
  for (uint64_t off = 0; off < 4 * MiB; off += 65536)
    script += "@" + std::to_string(off) + " (" + std::to_string(off / 65536 % 250 + 1) +
              ")*32768 ";
  for (const int connections : {1, 2}) {
    CAPTURE(connections);
    Server server(dir, "frag" + std::to_string(connections),
                  {"--filter=delay", "data", script, "size=4M", "delay-read=1ms"});
    NbdOptions o = quick_options();
    o.connections = unsigned(connections);
    auto f = open_ok(server.uri(), o);
    std::atomic<int> bad{0};
    on_threads(24, [&](int t) {
      std::vector<uint8_t> buf(65536);
      for (int i = 0; i < 40; i++) {
        const uint64_t cluster = (uint64_t(t) * 37 + uint64_t(i) * 11) % 64;
        const uint64_t off = cluster * 65536;
        if (t % 4 == 0) {
          // Block status beside the reads, on the same connections.
          auto run = f->probe_run(off + 32768, 32768);
          if (!run.is_ok() || !run->hole || run->length != 32768)
            bad++;
          continue;
        }
        if (!f->pread(buf.data(), buf.size(), off).is_ok()) {
          bad++;
          continue;
        }
        const uint8_t want = uint8_t(cluster % 250 + 1);
        if (std::any_of(buf.begin(), buf.begin() + 32768, [&](uint8_t b) { return b != want; }) ||
            std::any_of(buf.begin() + 32768, buf.end(), [](uint8_t b) { return b != 0; }))
          bad++;
      }
    });
    CHECK(bad == 0);
    CHECK(f->open_connections() <= unsigned(connections));
  }
}

TEST_CASE("the server dies with commands of many requests in flight: EIO for each, then reads again") {
  if (!have_nbdkit())
    return;
  TempDir dir;
  const auto data = pattern(2 * MiB, 12);
  write_file(dir.file("base.raw"), data);
  Server server(dir, "dies", {"--filter=delay", "file", dir.file("base.raw"), "delay-read=10"});
  NbdOptions o = quick_options();
  o.connections = 2;
  auto f = open_ok(server.uri(), o);
  std::atomic<int> failed{0}, succeeded{0}, unnamed{0};
  std::thread killer([&] {
    std::this_thread::sleep_for(500ms);  // every read is waiting for its reply
    server.stop(SIGKILL);
  });
  const auto t0 = std::chrono::steady_clock::now();
  on_threads(12, [&](int t) {
    std::vector<uint8_t> buf(4096);
    const Status s = f->pread(buf.data(), buf.size(), uint64_t(t) * 65536);
    if (s.is_ok()) {
      succeeded++;
      return;
    }
    failed++;
    if (s.errno_value() != EIO || s.message().rfind(server.uri() + ": read at offset ", 0) != 0)
      unnamed++;
  });
  killer.join();
  // Each failed on the dead connection, and once more on a fresh one (the
  // server is gone: refused), before its 5 s request timeout (and the
  // replies, due after 10 s); the margin is for slow sanitizer builds.
  const auto took = std::chrono::steady_clock::now() - t0;
  INFO(std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms");
  CHECK(took < 4s);
  CHECK(failed == 12);
  CHECK(succeeded == 0);
  CHECK(unnamed == 0);
  CHECK(f->open_connections() == 0);

  // Back, now without the delay: picked up after the back-off delay.
  server.stop(SIGKILL);
  Server again(dir, "dies", {"file", dir.file("base.raw")});
  std::this_thread::sleep_for(250ms);  // past backoff_max_ms
  std::atomic<int> bad{0};
  on_threads(12, [&](int t) {
    std::vector<uint8_t> buf(4096);
    const uint64_t off = uint64_t(t) * 65536 + 512;
    if (!f->pread(buf.data(), buf.size(), off).is_ok() ||
        !std::equal(buf.begin(), buf.end(), data.begin() + int64_t(off)))
      bad++;
  });
  CHECK(bad == 0);
  CHECK(f->open_connections() <= 2);
  f.reset();
}

TEST_CASE("a request timeout with many requests in flight: bounded, and no buffer written after") {
  if (!have_nbdkit())
    return;
  TempDir dir;
  write_file(dir.file("base.raw"), pattern(MiB, 13));
  // Replies come after 1.5 s; requests may take 300 ms.
  Server server(dir, "late", {"--filter=multi-conn", "--filter=delay", "file",
                              dir.file("base.raw"), "multi-conn-mode=disable",
                              "delay-read=1500ms"});
  NbdOptions o = quick_options();
  o.request_timeout_ms = 300;
  auto f = open_ok(server.uri(), o);
  std::vector<std::vector<uint8_t>> bufs(10, std::vector<uint8_t>(8192));
  std::atomic<int> timed_out{0}, failed{0}, unnamed{0};
  const auto t0 = std::chrono::steady_clock::now();
  on_threads(10, [&](int t) {
    const Status s = f->pread(bufs[size_t(t)].data(), 8192, uint64_t(t) * 8192);
    if (!s.is_ok())
      failed++;
    if (contains(s.message(), "no reply within 300 ms"))
      timed_out++;
    if (s.errno_value() != EIO || s.message().rfind(server.uri() + ": read at offset ", 0) != 0)
      unnamed++;
    // The buffer is the caller's again: a late reply must not land in it.
    std::fill(bufs[size_t(t)].begin(), bufs[size_t(t)].end(), uint8_t(0xEE));
  });
  // Each within its own deadline (plus scheduling), far before the replies.
  CHECK(std::chrono::steady_clock::now() - t0 < 1200ms);
  // Every one failed, naming the URI; a request whose connection another's
  // timeout shut down before its own deadline tries once more, and fails by
  // its deadline too.
  CHECK(failed == 10);
  CHECK(unnamed == 0);
  CHECK(timed_out >= 1);
  std::this_thread::sleep_for(1700ms);  // when the replies would have come
  for (const auto &b : bufs)
    CHECK(std::all_of(b.begin(), b.end(), [](uint8_t x) { return x == 0xEE; }));
  CHECK(f->open_connections() == 0);
  f.reset();
}

TEST_SUITE_END();
