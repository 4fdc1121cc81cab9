// Whether nbdkit serves read-only (-r), read from its own command line.
//
// nbdkit tells a plugin about -r only in .open, once a client connects, and
// the image lock must be right from start-up: a server that will write holds
// the writer lock from its first moment (as qemu-nbd does), so that a second
// server, a VM or qemu-img is refused at once, and two -r servers share the
// image. No nbdkit call says it, so we parse nbdkit's arguments the way its
// getopt_long does (permuting, unless POSIXLY_CORRECT is set).
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace qed_plugin {

// Whether nbdkit's arguments (argv[0] first) include -r, --readonly or
// --read-only as an option (not as the value of another option, a plugin
// parameter or anything after "--"). `posixly_correct`: options end at the
// first non-option, as getopt does when POSIXLY_CORRECT is set.
bool args_say_read_only(const std::vector<std::string> &args, bool posixly_correct);

// The same for this process (/proc/self/cmdline); nullopt when that cannot be
// read.
std::optional<bool> nbdkit_read_only();

}  // namespace qed_plugin
