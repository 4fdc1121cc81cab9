#include "preload_selftest.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <algorithm>
#include <cstring>
#include <vector>

#include "recording.h"
#include "replay.h"
#include "syscall_log.h"

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
  std::vector<Op> effects;
  for (const Op &op : ops)
    if (op.matters())
      effects.push_back(op);
  Replay replay({}, effects);
  check(replay.final_file() == file, "replaying the log does not give the file");
  const CallCounts c = count_calls(ops);
  check(c.write == 5 && c.sync == 2 && c.fallocate == 2 && c.ftruncate == 1 && c.injected == 3,
        "call counts");
  std::printf("syscall preload: %zu records checked, %llu injected failures, %d failures\n",
              ops.size(), (unsigned long long)c.injected, failures);
  return failures ? 1 : 0;
}

}  // namespace qsys
