// No L1 or L2 entry may point at a table or cluster the file does not reach,
// at any moment: a flush must make the file reach what it names before it
// writes the entry, and nothing may cut the file below an entry. An entry past
// the end is what the next open (after a crash, or after a clean close that
// cut nothing) drops as the trace of an interrupted write, with the data a
// flush acknowledged (issue 18, defect 1). Such a state may last a moment
// only, until a later write grows the file past it, so the file a run leaves
// rarely shows it; the log of the run's calls shows every state.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tests/syscall/syscall_log.h"

namespace qsys {

// The first entry of `file` (a QED image's bytes) that names a table or
// cluster past its end, described; empty if none (or if the header or the L1
// table does not parse: a file being created).
std::string entry_past_end(const std::vector<uint8_t> &file);

// Walks the states `initial` went through as `ops` (a log, in the order of
// their effects) were made, and describes the first that has an entry past
// the end, and the call that made it so; empty if none.
std::string entry_past_end_in_log(const std::vector<uint8_t> &initial, const std::vector<Op> &ops);

}  // namespace qsys
