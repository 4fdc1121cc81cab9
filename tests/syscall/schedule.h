// Schedules, not just states (issue 18): the plugin in a real nbdkit, with
// seeded random delays before and after the image file's system calls, while
// allocating writes fail and several connections write, zero, trim and flush.
//
// Each run, from its seed: a fresh image (cluster size 4K to 64K, table size
// 1 or 2, so that new L2 tables come often; half the runs over a raw backing
// file), a cache size (0, where nearly every allocating write flushes, or
// larger), 4 to 8 connections of random requests, 1 in 3 to 10 data writes
// failing with EIO or ENOSPC (QED_SYSCALL_FAIL kind "data": writes that are not
// metadata), 1 in 8 to 24 backing reads failing with EIO, and jitter on every
// call kind (QED_SYSCALL_JITTER: 10 to 60 % of calls delayed by up to 50 us to
// 2 ms, before and after; a flush's extension more often and longer: 40 to
// 90 %, up to 0.5 to 3 ms). The jitter after a call comes once the preload's
// lock is released, so the caller is late while the other threads go on.
//
// Checked:
//   - every state the file went through while it was served, from the log of
//     its calls (in the order of their effects): no entry points past the end
//     of the file (reach.h); the log must explain the file nbdkit left;
//   - the server still serves after the workload, and stops cleanly;
//   - the file it left: a clean image (NEED_CHECK clear) has no entry past
//     the end of the file, and none is invalid or shared;
//   - a clean restart (a fresh nbdkit on the file, check=auto) reads back
//     every flushed byte and every byte acknowledged with FUA (oracle.h, with
//     no crash).
//
// Seeds: QED_SCHEDULE_SEEDS=a,b,... runs those; otherwise QED_SCHEDULE_RUNS
// runs (default 30) from QED_SYSCALL_SEED (default 20261801) on, seed + 1
// each, stopping early after QED_SCHEDULE_SECONDS (default 0: no limit) or,
// with QED_SCHEDULE_STOP=1, after the first failing run. A failing run
// prints the command line that reruns its seed (QED_SYSCALL_KEEP=1 keeps its
// files). A seed fixes the image, the workload, the failures and the jitter
// draws, not the threads' interleaving: a rerun takes the same decisions and
// usually, not always, fails the same way.
#pragma once

#include <string>

#include "tests/syscall/process.h"

namespace qsys {

int schedule_mode(const Tools &tools, const std::string &dir);

}  // namespace qsys
