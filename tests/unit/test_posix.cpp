// The POSIX file below the engine, with system calls interposed from this
// test binary (posix_hooks.h).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>

#include "lib/file.h"
#include "tests/unit/posix_hooks.h"
#include "tests/unit/test_util.h"

using hooks::Disarm;
using hooks::fd_of;

TEST_SUITE_BEGIN("posix");

namespace {

std::unique_ptr<qed::File> open_rw(const std::string &path, std::vector<uint8_t> content) {
  qt::write_whole_file(path, content);
  auto f = qed::open_posix_file(path, qed::OpenMode::kReadWrite);
  INFO(f.status().message());
  REQUIRE(f.is_ok());
  return std::move(*f);
}

}  // namespace

TEST_CASE("without fallocate, growing the file never cuts off a write past its old end") {
  // extend_to() falls back to fstat + ftruncate. A write past the end that
  // lands between the two must survive: before the fix, ftruncate set the
  // size back and the write read back as zeroes.
  qt::TempDir dir;
  const std::string path = dir.file("grow.img");
  auto file = open_rw(path, std::vector<uint8_t>(4096, 0x11));
  const int fd = fd_of(path);
  REQUIRE(fd >= 0);
  Disarm disarm;
  {
    std::lock_guard lock(hooks::mu);
    hooks::paused = hooks::released = false;
  }
  hooks::refuse_fallocate_fd = fd;
  hooks::pause_fstat_fd = fd;

  qed::Status extended;
  std::thread grower([&] { extended = file->extend_to(65536); });
  {
    std::unique_lock lock(hooks::mu);
    REQUIRE(hooks::cv.wait_for(lock, std::chrono::seconds(10), [] { return hooks::paused; }));
  }
  // The grower has read the old size and is about to set the new one. A write
  // into a cluster reserved further on goes ahead now (or waits for it).
  std::vector<uint8_t> data(4096, 0x5a);
  std::atomic<bool> wrote{false};
  qed::Status written;
  std::thread writer([&] {
    written = file->pwrite(data.data(), data.size(), 131072);
    wrote = true;
  });
  for (int i = 0; i < 40 && !wrote; i++)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  hooks::pause_fstat_fd = -1;
  hooks::release();
  grower.join();
  writer.join();
  REQUIRE(extended.is_ok());
  REQUIRE(written.is_ok());

  auto size = file->size();
  REQUIRE(size.is_ok());
  CHECK(*size >= 131072 + 4096);
  std::vector<uint8_t> back(4096);
  REQUIRE(file->pread(back.data(), back.size(), 131072).is_ok());
  CHECK(back == data);
}

TEST_CASE("without fallocate, extend_to still grows the file, to the preferred size") {
  qt::TempDir dir;
  const std::string path = dir.file("fb.img");
  auto file = open_rw(path, std::vector<uint8_t>(100, 0x22));
  Disarm disarm;
  hooks::refuse_fallocate_fd = fd_of(path);
  REQUIRE(file->extend_to(8192, 65536).is_ok());
  auto size = file->size();
  REQUIRE(size.is_ok());
  CHECK(*size == 65536);
  std::vector<uint8_t> back(100);
  REQUIRE(file->pread(back.data(), back.size(), 0).is_ok());
  CHECK(back == std::vector<uint8_t>(100, 0x22));
  // Never shorter: asking for less than the size changes nothing.
  REQUIRE(file->extend_to(4096).is_ok());
  CHECK(*file->size() == 65536);
}

TEST_CASE("extend_to makes no system call when a completed write already reached the size") {
  qt::TempDir dir;
  const std::string path = dir.file("n.img");
  auto file = open_rw(path, {});
  Disarm disarm;
  hooks::count_fd = fd_of(path);
  hooks::fallocates = 0;
  hooks::ftruncates = 0;
  std::vector<uint8_t> data(4096, 0x33);
  REQUIRE(file->pwrite(data.data(), data.size(), (1 << 20) - 4096).is_ok());
  REQUIRE(file->extend_to(1 << 20).is_ok());
  REQUIRE(file->extend_to(4096).is_ok());
  CHECK(hooks::fallocates == 0);
  CHECK(hooks::ftruncates == 0);
  // Growing past it costs one call, and then nothing again.
  REQUIRE(file->extend_to(2 << 20, 4 << 20).is_ok());
  REQUIRE(file->extend_to(3 << 20).is_ok());
  CHECK(hooks::fallocates + hooks::ftruncates == 1);
  CHECK(*file->size() == uint64_t(4 << 20));
}

TEST_CASE("a truncate racing an extension never leaves the known size above the file size") {
  // Issue 18, defect 1. extend_to() grows the file with fallocate, then
  // raises the size it knows. A truncate() (a failed allocation giving its
  // clusters back) that landed between the two used to be overtaken by the
  // raise: the known size stayed above the real one, and the next extend_to()
  // skipped a growth the engine relied on. Here the truncate is started right
  // after the fallocate returns, and the extension goes on once the truncate
  // has either finished (the race) or is waiting for the extension to end.
  qt::TempDir dir;
  const std::string path = dir.file("race.img");
  auto file = open_rw(path, std::vector<uint8_t>(4096, 0x44));
  const int fd = fd_of(path);
  REQUIRE(fd >= 0);
  Disarm disarm;
  hooks::count_fd = fd;
  std::thread cutter;
  std::atomic<bool> cut_done{false};
  std::atomic<pid_t> cutter_tid{0};
  qed::Status cut;
  bool settled = false;
  hooks::after_next_fallocate(fd, [&] {
    const int before = hooks::ftruncates_begun.load();
    cutter = std::thread([&] {
      cutter_tid = hooks::thread_id();
      cut = file->truncate(8192);
      cut_done = true;
    });
    settled = hooks::wait_done_or_blocked(cut_done, cutter_tid, before);
  });
  const qed::Status extended = file->extend_to(65536);
  if (cutter.joinable())
    cutter.join();
  REQUIRE(extended.is_ok());
  REQUIRE(settled);
  REQUIRE(cut.is_ok());
  CHECK(*file->size() == 8192);  // the cut came last, whichever way it went
  // The next extension must grow the file for real.
  REQUIRE(file->extend_to(65536).is_ok());
  CHECK(*file->size() >= 65536);
  std::vector<uint8_t> back(4096);
  REQUIRE(file->pread(back.data(), back.size(), 0).is_ok());
  CHECK(back == std::vector<uint8_t>(4096, 0x44));
}
