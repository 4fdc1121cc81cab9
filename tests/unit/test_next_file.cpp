// The filter's NextFile over a fake nbdkit_next: reads obey the limits of the
// layer below (alignment, largest request, the export's end), errors keep
// their errno, writes never reach it, and each thread reads through the
// context it named (NextFile::Through), none without one.
#include <doctest/doctest.h>

#include <nbdkit-filter.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "filter/next_file.h"
#include "tests/unit/test_util.h"

using qed_filter::NextFile;
using qed_filter::NextLimits;
using Code = qed::Status::Code;

TEST_SUITE_BEGIN("next-file");

namespace {

// The layer below: an export of `data` that refuses what nbdkit and a strict
// plugin would (EINVAL), fails with `fail_errno` on reads touching
// `fail_offset`, and records what it was asked.
struct Below {
  std::vector<uint8_t> data;
  uint32_t alignment = 1;
  uint32_t max = 0xffffffff;
  int fail_errno = 0;
  uint64_t fail_offset = 0;
  std::chrono::microseconds delay{0};
  std::atomic<int> in_flight{0};
  std::atomic<int> max_in_flight{0};
  std::atomic<int> calls{0};
  std::atomic<int> violations{0};
};

Below *below = nullptr;  // the one the fake pread serves (tests run one at a time)

int fake_pread(nbdkit_next *, void *buf, uint32_t count, uint64_t offset, uint32_t flags,
               int *err) {
  Below &b = *below;
  b.calls++;
  const int now = ++b.in_flight;
  for (int m = b.max_in_flight; now > m && !b.max_in_flight.compare_exchange_weak(m, now);)
    ;
  if (b.delay.count())
    std::this_thread::sleep_for(b.delay);
  int r = 0;
  const uint64_t end = offset + count;
  const bool aligned = offset % b.alignment == 0 &&
                       (count % b.alignment == 0 || end == b.data.size());
  if (count == 0 || flags != 0 || end > b.data.size() || count > b.max || !aligned) {
    b.violations++;
    *err = EINVAL;
    r = -1;
  } else if (b.fail_errno && offset <= b.fail_offset && b.fail_offset < end) {
    *err = b.fail_errno;
    r = -1;
  } else {
    std::memcpy(buf, b.data.data() + offset, count);
  }
  b.in_flight--;
  return r;
}

// An nbdkit_next whose only entry is pread: anything else would crash.
nbdkit_next_ops fake_next() {
  nbdkit_next_ops ops;
  std::memset(&ops, 0, sizeof ops);
  ops.pread = fake_pread;
  return ops;
}

std::vector<uint8_t> pattern(size_t n) {
  std::vector<uint8_t> v(n);
  qt::fill_pattern(v.data(), n, 42);
  return v;
}

// What a read of [offset, offset+count) must return: the data, then zeroes.
std::vector<uint8_t> expected(const std::vector<uint8_t> &data, uint64_t offset, size_t count) {
  std::vector<uint8_t> out(count, 0);
  for (size_t i = 0; i < count; i++)
    if (offset + i < data.size())
      out[i] = data[offset + i];
  return out;
}

}  // namespace

TEST_CASE("limits from the block size answer") {
  auto l = qed_filter::limits_from_block_size(0, 0);  // no information
  CHECK(l.alignment == 1);
  CHECK(l.max_request == 32u << 20);
  l = qed_filter::limits_from_block_size(4096, 0xffffffff);
  CHECK(l.alignment == 4096);
  CHECK(l.max_request == 32u << 20);
  l = qed_filter::limits_from_block_size(512, 65536 + 100);
  CHECK(l.alignment == 512);
  CHECK(l.max_request == 65536);
  l = qed_filter::limits_from_block_size(4096, 1000);  // maximum below minimum
  CHECK(l.max_request == 4096);
  l = qed_filter::limits_from_block_size(3000, 0);  // not a power of two: ignored
  CHECK(l.alignment == 1);
}

TEST_CASE("reads obey alignment, the largest request and the end of the export") {
  struct Case {
    uint32_t alignment, max;
    size_t size;
  };
  for (const Case c : {Case{1, 0xffffffff, 200000}, Case{512, 4096, 200000 + 512},
                       Case{4096, 65536, 300000}, Case{65536, 65536, 65536 * 3 + 100}}) {
    CAPTURE(c.alignment);
    CAPTURE(c.max);
    CAPTURE(c.size);
    Below b;
    below = &b;
    b.data = pattern(c.size);
    b.alignment = c.alignment;
    b.max = c.max;
    nbdkit_next_ops ops = fake_next();
    const NextFile::Through through(&ops);
    NextFile file("below", c.size, qed_filter::limits_from_block_size(c.alignment, c.max));
    CHECK(*file.size() == c.size);
    qt::Rng rng(c.alignment);
    std::vector<std::pair<uint64_t, size_t>> reads = {
        {0, 64}, {0, c.size}, {1, 1}, {c.size - 1, 1}, {c.size - 10, 100}, {c.size, 10},
        {c.size + 5000, 10}, {4095, 2}, {65535, 70000}, {0, 0}};
    for (int i = 0; i < 200; i++)
      reads.emplace_back(rng.below(c.size + 1000), rng.below(150000));
    for (const auto &[offset, count] : reads) {
      CAPTURE(offset);
      CAPTURE(count);
      std::vector<uint8_t> got(count, 0xee);
      const qed::Status s = file.pread(got.data(), count, offset);
      INFO(s.message());
      REQUIRE(s.is_ok());
      REQUIRE(got == expected(b.data, offset, count));
    }
    CHECK(b.violations == 0);
  }
}

TEST_CASE("an error below keeps its errno and names the export and the offset") {
  Below b;
  below = &b;
  b.data = pattern(100000);
  b.fail_errno = ENOSPC;
  b.fail_offset = 70000;
  nbdkit_next_ops ops = fake_next();
  const NextFile::Through through(&ops);
  NextFile file("the plugin's export", b.data.size(), NextLimits{});
  std::vector<uint8_t> buf(8192);
  CHECK(file.pread(buf.data(), buf.size(), 0).is_ok());
  const qed::Status s = file.pread(buf.data(), buf.size(), 65536);
  REQUIRE(!s.is_ok());
  CHECK(s.code() == Code::kIoError);
  CHECK(s.errno_value() == ENOSPC);
  CHECK(s.message().find("the plugin's export") == 0);
  CHECK(s.message().find("65536") != std::string::npos);
}

TEST_CASE("nothing is ever written below") {
  Below b;
  below = &b;
  b.data = pattern(65536);
  nbdkit_next_ops ops = fake_next();  // its pwrite, trim, zero and flush are null
  const NextFile::Through through(&ops);
  NextFile file("below", b.data.size(), NextLimits{});
  const uint8_t byte = 1;
  for (const qed::Status &s :
       {file.pwrite(&byte, 1, 0), file.truncate(0), file.extend_to(1 << 20),
        file.punch_hole(0, 4096), file.zero_range(0, 4096)}) {
    CHECK(s.code() == Code::kReadOnly);
    CHECK(s.errno_value() == EROFS);
  }
  CHECK(file.sync().is_ok());
  CHECK(b.calls == 0);
}

// A second fake layer below, to tell which context a read went through.
std::atomic<int> other_calls{0};
int other_pread(nbdkit_next *next, void *buf, uint32_t count, uint64_t offset, uint32_t flags,
                int *err) {
  other_calls++;
  return fake_pread(next, buf, count, offset, flags, err);
}

TEST_CASE("each thread reads through the context it named, and none without one") {
  Below b;
  below = &b;
  b.data = pattern(1 << 20);
  b.delay = std::chrono::microseconds(200);
  nbdkit_next_ops first = fake_next();
  nbdkit_next_ops second = fake_next();
  second.pread = other_pread;
  other_calls = 0;
  NextFile file("below", b.data.size(), NextLimits{});
  std::vector<uint8_t> buf(4096);
  {
    const qed::Status s = file.pread(buf.data(), buf.size(), 0);
    CHECK(s.code() == Code::kIoError);
    CHECK(s.message() == "below: reading at offset 0: no connection to the layer below on this "
                         "thread");
    CHECK(b.calls == 0);
  }
  // Threads of two connections at once: each read goes through its own.
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; t++)
    threads.emplace_back([&, t] {
      const NextFile::Through through(t % 2 ? &second : &first);
      std::vector<uint8_t> mine(4096);
      for (int i = 0; i < 25; i++) {
        const uint64_t off = uint64_t(t * 25 + i) * 4096;
        if (!file.pread(mine.data(), mine.size(), off).is_ok() ||
            mine != expected(b.data, off, mine.size()))
          failures++;
      }
    });
  for (auto &t : threads)
    t.join();
  CHECK(failures == 0);
  CHECK(b.calls == 200);
  CHECK(other_calls == 100);
  // Nested: the inner one applies, then the outer one again.
  {
    const NextFile::Through outer(&first);
    {
      const NextFile::Through inner(&second);
      REQUIRE(file.pread(buf.data(), buf.size(), 0).is_ok());
    }
    CHECK(other_calls == 101);
    REQUIRE(file.pread(buf.data(), buf.size(), 0).is_ok());
    CHECK(other_calls == 101);
    CHECK(b.calls == 202);
  }
  CHECK(!file.pread(buf.data(), buf.size(), 0).is_ok());
}

TEST_SUITE_END();
