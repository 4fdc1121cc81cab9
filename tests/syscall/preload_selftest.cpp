#include "tests/syscall/preload_selftest.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <algorithm>
#include <cstring>
#include <vector>

#include "tests/syscall/recording.h"
#include "tests/support/crash_model.h"
#include "tests/syscall/syscall_log.h"

namespace qsys {

namespace {

// Injected by the parent: the 4th write fails with ENOSPC, the 2nd sync with
// EIO, the 2nd fallocate with EOPNOTSUPP.
const char *const kFail = "write:4:ENOSPC,sync:2:EIO,fallocate:2:EOPNOTSUPP";

int expect(bool ok, const char *what) {
  if (!ok)
    std::fprintf(stderr, "preload-child: %s (errno %s)\n", what, std::strerror(errno));
  return ok ? 0 : 1;
}

}  // namespace

int preload_child(const std::string &dir) {
  const std::string f = dir + "/watched", g = dir + "/other";
  int bad = 0;
  int fd = open(f.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  bad += expect(fd >= 0, "open");
  bad += expect(pwrite(fd, "aaaa", 4, 100) == 4, "pwrite");                      // write 1
  char b1[] = "bb", b2[] = "cc";
  struct iovec iov[2] = {{b1, 2}, {b2, 2}};
  bad += expect(pwritev(fd, iov, 2, 200) == 4, "pwritev");                       // write 2
  int fd2 = dup(fd);
  bad += expect(fd2 >= 0 && lseek(fd2, 10, SEEK_SET) == 10, "dup, lseek");
  bad += expect(write(fd2, "dd", 2) == 2, "write");                              // write 3
  bad += expect(pwrite(fd, "ee", 2, 0) == -1 && errno == ENOSPC, "injected ENOSPC");  // write 4
  bad += expect(fdatasync(fd) == 0, "fdatasync");                                // sync 1
  bad += expect(fsync(fd2) == -1 && errno == EIO, "injected EIO");               // sync 2
  bad += expect(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 100, 2) == 0,
                "punch hole");                                                   // fallocate 1
  bad += expect(fallocate(fd, 0, 0, 4096) == -1 && errno == EOPNOTSUPP,
                "injected EOPNOTSUPP");                                          // fallocate 2
  bad += expect(ftruncate(fd, 150) == 0, "ftruncate");
  int other = open(g.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);    // not watched
  bad += expect(other >= 0 && pwrite(other, "zz", 2, 0) == 2 && fsync(other) == 0 &&
                    close(other) == 0,
                "the other file");
  int fd3 = fcntl(fd, F_DUPFD_CLOEXEC, 50);
  bad += expect(fd3 >= 50 && pwrite(fd3, "ff", 2, 140) == 2, "F_DUPFD, pwrite");  // write 5
  bad += expect(close(fd) == 0 && close(fd2) == 0 && close(fd3) == 0, "close");
  // A closed fd number reused for the other file must no longer be watched.
  other = open(g.c_str(), O_RDWR | O_CLOEXEC);
  bad += expect(other >= 0 && pwrite(other, "yy", 2, 0) == 2 && close(other) == 0, "reuse");
  return bad ? 1 : 0;
}

// Without a log: data writes (no zero byte in their first 8) and reads of the
// backing file fail where QED_SYSCALL_FAIL says, every call jittered.
const char *const kScheduleFail = "data:2:ENOSPC,read:2:EIO";
const char *const kScheduleJitter = "write:100:300,sync:100:300,read:100:300,fallocate:50:100";

int preload_schedule_child(const std::string &dir) {
  const std::string f = dir + "/scheduled", b = dir + "/backing";
  int bad = 0;
  int fd = open(f.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  bad += expect(fd >= 0, "open");
  const char meta[8] = {'Q', 'E', 'D', 0, 1, 2, 3, 4};
  bad += expect(pwrite(fd, meta, 8, 0) == 8, "a metadata-like write");          // write 1
  bad += expect(pwrite(fd, "xxxxxxxxxx", 10, 8) == 10, "data write 1");          // write 2
  bad += expect(pwrite(fd, "yyyyyyyy", 8, 18) == -1 && errno == ENOSPC,
                "injected ENOSPC on data write 2");                              // write 3
  bad += expect(pwrite(fd, "zz", 2, 18) == 2, "data write 3");                   // write 4
  bad += expect(fdatasync(fd) == 0 && close(fd) == 0, "fdatasync, close");
  int bfd = open(b.c_str(), O_RDONLY | O_CLOEXEC);
  char buf[4];
  bad += expect(bfd >= 0, "open the backing file");
  bad += expect(pread(bfd, buf, 4, 0) == 4, "backing read 1");
  bad += expect(pread(bfd, buf, 4, 0) == -1 && errno == EIO, "injected EIO on backing read 2");
  bad += expect(pread(bfd, buf, 4, 4) == 4 && std::memcmp(buf, "4567", 4) == 0,
                "backing read 3");
  bad += expect(close(bfd) == 0, "close the backing file");
  return bad ? 1 : 0;
}

namespace {

int schedule_selftest(const Tools &tools, const std::string &self, const std::string &dir) {
  const std::string f = dir + "/scheduled", b = dir + "/backing", counts = dir + "/counts";
  int failures = 0;
  auto check = [&](bool ok, const std::string &what) {
    if (!ok) {
      std::printf("FAIL preload self-test (schedule): %s\n", what.c_str());
      failures++;
    }
  };
  check(write_file(b, {'0', '1', '2', '3', '4', '5', '6', '7'}), "cannot write " + b);
  unlink(counts.c_str());
  const std::vector<std::pair<std::string, std::string>> env = {
      {"QED_SYSCALL_PATH", f},           {"QED_SYSCALL_BACKING", b},
      {"QED_SYSCALL_FAIL", kScheduleFail}, {"QED_SYSCALL_JITTER", kScheduleJitter},
      {"QED_SYSCALL_JITTER_SEED", "5"},  {"QED_SYSCALL_COUNTS", counts}};
  std::string out;
  int rc = run_preloaded(tools, {self, "preload-schedule-child", dir}, env, &out);
  check(rc == 0, "the child's calls did not behave (exit " + std::to_string(rc) + "): " + out);
  std::vector<uint8_t> file, text;
  check(read_file(f, file) && file.size() == 20 &&
            std::memcmp(file.data() + 8, "xxxxxxxxxxzz", 12) == 0,
        "the file does not hold the writes that were made");
  check(read_file(counts, text), "no counts at exit in " + counts);
  const std::string got(text.begin(), text.end());
  const std::string want = "write 4 0\nfallocate 0 0\nftruncate 0 0\nsync 1 0\ndata 3 1\n"
                           "read 3 1\nlock 0 0\n";
  check(got == want, "the counts are\n" + got + "expected\n" + want);
  // A malformed setting stops the program rather than testing nothing.
  for (const auto &[key, value] : std::vector<std::pair<std::string, std::string>>{
           {"QED_SYSCALL_JITTER", "write:101:10"},
           {"QED_SYSCALL_JITTER", "data:10:10"},
           {"QED_SYSCALL_FAIL", "read:x:EIO"}}) {
    rc = run_preloaded(tools, {self, "preload-schedule-child", dir},
                       {{"QED_SYSCALL_PATH", f}, {key, value}}, &out);
    check(rc != 0 && out.find("qed_syscalls: " + key) != std::string::npos,
          key + "=" + value + " was accepted (exit " + std::to_string(rc) + "): " + out);
  }
  return failures;
}

}  // namespace

int preload_selftest(const Tools &tools, const std::string &self, const std::string &dir) {
  const std::string f = dir + "/watched", log = dir + "/selftest.log";
  unlink(log.c_str());
  std::string out;
  const int rc = run_preloaded(tools, {self, "preload-child", dir},
                               {{"QED_SYSCALL_PATH", f}, {"QED_SYSCALL_LOG", log},
                                {"QED_SYSCALL_FAIL", kFail}},
                               &out);
  int failures = 0;
  auto check = [&](bool ok, const std::string &what) {
    if (!ok) {
      std::printf("FAIL preload self-test: %s\n", what.c_str());
      failures++;
    }
  };
  check(rc == 0, "the child's calls did not behave (exit " + std::to_string(rc) + "): " + out);
  std::vector<Op> ops;
  std::string why;
  check(read_log(log, ops, why), why);
  // What the log must say, in order: kind, offset, length, data, failed.
  struct Want {
    qsys_kind kind;
    uint64_t offset, length;
    const char *data;
    int err;
  };
  const Want want[] = {
      {QSYS_OPEN, 0, 0, "", 0},         {QSYS_TRUNCATE, 0, 0, "", 0},
      {QSYS_WRITE, 100, 4, "aaaa", 0},  {QSYS_WRITE, 200, 4, "bbcc", 0},
      {QSYS_OPEN, 0, 0, "", 0},         {QSYS_WRITE, 10, 2, "dd", 0},
      {QSYS_WRITE, 0, 0, "", ENOSPC},   {QSYS_SYNC, 0, 0, "", 0},
      {QSYS_SYNC, 0, 0, "", EIO},       {QSYS_FALLOCATE, 100, 2, "", 0},
      {QSYS_FALLOCATE, 0, 4096, "", EOPNOTSUPP},
      {QSYS_TRUNCATE, 150, 0, "", 0},   {QSYS_OPEN, 0, 0, "", 0},
      {QSYS_WRITE, 140, 2, "ff", 0},    {QSYS_CLOSE, 0, 0, "", 0},
      {QSYS_CLOSE, 0, 0, "", 0},        {QSYS_CLOSE, 0, 0, "", 0},
  };
  const size_t n = sizeof want / sizeof want[0];
  check(ops.size() == n, "the log holds " + std::to_string(ops.size()) + " records, expected " +
                             std::to_string(n));
  uint64_t last_end = 0;
  for (size_t i = 0; i < std::min(n, ops.size()); i++) {
    const Op &op = ops[i];
    const Want &w = want[i];
    const std::string data(op.data.begin(), op.data.end());
    check(op.kind == w.kind && op.offset == w.offset && op.length == w.length &&
              data == w.data && op.err == w.err && op.injected == (w.err != 0) && op.seq == i,
          "record " + std::to_string(i) + " is " + op.describe());
    check(op.t_start >= last_end && op.t_end >= op.t_start,
          "record " + std::to_string(i) + " starts before the previous one ended");
    last_end = op.t_end;
  }
  // Replaying the log must give the file.
  std::vector<uint8_t> file;
  check(read_file(f, file), "cannot read " + f);
  const crash::CrashStates replay({}, effects_of(ops_that_matter(ops)));
  check(replay.final_file() == file, "replaying the log does not give the file");
  const CallCounts c = count_calls(ops);
  check(c.write == 5 && c.sync == 2 && c.fallocate == 2 && c.ftruncate == 1 && c.injected == 3,
        "call counts");
  failures += schedule_selftest(tools, self, dir);
  std::printf("syscall preload: %zu records checked, %llu injected failures, %d failures\n",
              ops.size(), (unsigned long long)c.injected, failures);
  return failures ? 1 : 0;
}

}  // namespace qsys
