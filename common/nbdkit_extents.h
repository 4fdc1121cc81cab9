// Block status answers from the engine's extents, for every front end.
#pragma once

#include <cstdint>

#include "lib/block_source.h"
#include "lib/status.h"

struct nbdkit_extents;

namespace qed_nbdkit {

// Adds the extents of [offset, offset+count) of `source` to `out` (just the
// first with `req_one`): hole+zero for what reads as zeroes, data otherwise.
qed::Status add_extents(qed::BlockSource &source, uint32_t count, uint64_t offset,
                        bool req_one, nbdkit_extents *out);

}  // namespace qed_nbdkit
