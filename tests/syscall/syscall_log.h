// Reading the preload library's log (syscall_record.h) into memory.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tests/support/crash_record.h"
#include "tests/syscall/syscall_record.h"

namespace qsys {

// One logged call on the image file.
struct Op {
  qsys_kind kind;
  qsys_call call;
  uint64_t seq;
  uint64_t t_start, t_end;  // CLOCK_MONOTONIC ns
  int fd;
  int err;        // 0: the call succeeded
  bool injected;  // the failure was injected: the real call was not made
  uint32_t mode;
  uint64_t offset, length;
  std::vector<uint8_t> data;  // kWrite: the bytes stored

  bool ok() const { return err == 0; }
  // fsync, fdatasync and syncfs make every completed write durable;
  // sync_file_range promises nothing about metadata and is not a barrier.
  bool is_barrier() const { return kind == QSYS_SYNC && call != QSYS_CALL_SYNC_FILE_RANGE; }
  // Whether the call could have changed what a crash leaves (or is a sync).
  bool matters() const { return kind != QSYS_OPEN && kind != QSYS_CLOSE; }
  std::string describe() const;
};

// Reads every record of the log at `path`. False (with `error` set) if the
// file cannot be read or a record is malformed.
bool read_log(const std::string &path, std::vector<Op> &ops, std::string &error);

// What each of `ops` did to the file, one record per op in the same order (so
// that crash position k is "before ops[k]"), for the crash model
// (crash_model.h). A failed call changed nothing (the preload makes injected
// failures without the real call), but a failed barrier may have dropped dirty
// pages; sync_file_range is no barrier. Stops the harness (exit 2) on a call
// the model cannot express: a write logged without its bytes
// (QED_SYSCALL_DATA=0), a fallocate mode the engine does not use.
crash::Log effects_of(const std::vector<Op> &ops);
// The ops of `ops` that matter (Op::matters()), in order.
std::vector<Op> ops_that_matter(const std::vector<Op> &ops);

// How many calls of each fault kind the log holds (as the preload counts
// them for QED_SYSCALL_FAIL), and how many of them were injected failures.
struct CallCounts {
  uint64_t write = 0, fallocate = 0, ftruncate = 0, sync = 0;
  uint64_t injected = 0;
  uint64_t of(const std::string &kind) const;
};
CallCounts count_calls(const std::vector<Op> &ops);

}  // namespace qsys
