// What the consistency check found at open, written to nbdkit's log: the
// same words whichever front end opened the image.
#pragma once

#include "lib/image.h"

namespace qed_nbdkit {

// A line of information for the log. nbdkit_debug needs -v, and nbdkit has no
// informational level of its own, so this goes to stderr in nbdkit's format.
__attribute__((format(printf, 1, 2))) void log_info(const char *fmt, ...);

// Leaks are what a crash normally leaves (space reserved for writes that no
// entry reached yet), so giving them back is news, not an error; anything else
// the check found is an error. Each problem is logged with -v. Nothing when no
// check ran.
void log_check(const qed::Image &image);

}  // namespace qed_nbdkit
