// Text that came from an image or a server (backing file names, URIs, whole
// messages that quote them), made safe to print: a hostile image must not put
// terminal escape sequences, fake log lines or bytes that are not text into
// nbdkit's log or a client's export description.
//
// The one helper for that, applied once, where text leaves for nbdkit: every
// engine message in report() (nbdkit_errors.cpp), the check's log lines and
// the export descriptions. Code that builds messages quotes names as they are.
#pragma once

#include <string>
#include <string_view>

namespace qed_nbdkit {

// `text` with every byte that is not printable text written as \xNN: ASCII
// control characters (newline and tab included) and DEL, the C1 control
// characters (U+0080 to U+009F, which some terminals obey), and bytes that are
// not valid UTF-8. The backslash is written \\, so that the result reads back
// unambiguously. Printable ASCII and valid UTF-8 otherwise stay as they are.
std::string printable(std::string_view text);

}  // namespace qed_nbdkit
