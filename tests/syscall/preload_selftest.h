// A test of the preload library itself: a child process makes a fixed
// sequence of calls on a watched file (through several fds, with injected
// failures) and on another file; the log must hold exactly the calls on the
// watched file, in order, with their data, and replaying it must give the
// file. A second child runs without a log, with the schedule settings
// (QED_SYSCALL_JITTER, failures of data writes and of backing-file reads,
// QED_SYSCALL_COUNTS): the failures must come where asked and the counts
// must say so; a malformed setting must stop the program.
#pragma once

#include <string>

#include "tests/syscall/process.h"

namespace qsys {

// The parent: runs `self` preload-child DIR under the library, checks the log.
int preload_selftest(const Tools &tools, const std::string &self, const std::string &dir);
// The children: the calls. Exit non-zero if an injected failure did not come.
int preload_child(const std::string &dir);
int preload_schedule_child(const std::string &dir);

}  // namespace qsys
