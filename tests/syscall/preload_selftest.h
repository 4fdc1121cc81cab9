// A test of the preload library itself: a child process makes a fixed
// sequence of calls on a watched file (through several fds, with injected
// failures) and on another file; the log must hold exactly the calls on the
// watched file, in order, with their data, and replaying it must give the
// file.
#pragma once

#include <string>

#include "process.h"

namespace qsys {

// The parent: runs `self` preload-child DIR under the library, checks the log.
int preload_selftest(const Tools &tools, const std::string &self, const std::string &dir);
// The child: the calls. Exits non-zero if an injected failure did not come.
int preload_child(const std::string &dir);

}  // namespace qsys
