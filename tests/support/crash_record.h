// One operation on a file as a crash model sees it: what it changed, not how
// it was asked for. Both recorders write these: FaultFile (fault_file.h), for
// the engine's File interface in process, and the syscall harness
// (tests/syscall/syscall_log.h), which turns each logged system call into
// one. crash_model.h decides what a power loss keeps of a log of them.
#pragma once

#include <cstdint>
#include <vector>

namespace crash {

enum class Kind : uint8_t {
  kWrite,       // `bytes` stored at `offset` (length == bytes.size()); grows the file
  kSync,        // a barrier that succeeded: everything before it is durable
  kFailedSync,  // a barrier that failed: dirty pages before it may be gone for good
  kTruncate,    // the size becomes `offset` (down or up)
  kExtend,      // the size becomes at least `offset`
  kZero,        // [offset, offset + length) reads zero; grows the file to its end
  kPunch,       // [offset, offset + length) reads zero within the file; no growth
  kMarker,      // no effect: a note in the log (tag in `offset`) made by a test
  kNoEffect,    // a call that changed nothing a crash can show (a failed write,
                // sync_file_range, an allocation that keeps the size)
};

struct Record {
  Kind kind = Kind::kNoEffect;
  uint64_t offset = 0;
  uint64_t length = 0;
  std::vector<uint8_t> bytes;  // kWrite only
};

using Log = std::vector<Record>;

}  // namespace crash
