// The structural half of fuzz_requests' power-loss oracle, over many crash
// states instead of the one the input picks. A power loss at a sync point may
// leave any subset of the operations since the sync before it (writes torn at
// 512 bytes), and the one state an input picks is rarely one that breaks the
// structure: issue 18's sixth finding needed the L1 sector kept while both the
// data write and the file's growth were lost, one state in eight at one point
// of one flush, and CI's 60 seconds from the corpus did not reach it. Checking
// the structure costs little next to opening and reading a state, so every
// sync point and the end of the log get it: the state where everything since
// the last sync survived, and a few torn ones.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tests/support/crash_model.h"

namespace fuzz {

// Torn states checked per sync point, besides the one where all survived.
inline constexpr int kTornStatesPerSync = 3;

// Whether the structural check lets entries point past the end of the file
// in this crash state: only without a backing file (where one sync covers data
// and metadata, see lib/image_write.cpp) and only in an image marked
// NEED_CHECK, which the next open repairs.
bool past_eof_allowed(const std::vector<uint8_t> &file, bool has_backing);

// The first structural violation (qt::check_structure) among those states,
// with where in the log it was, or "" if there is none. `seed` drives the
// tearing; `states` is left at some position (its cache only).
std::string sweep_structure(crash::CrashStates &states, bool has_backing, uint64_t seed);

}  // namespace fuzz
