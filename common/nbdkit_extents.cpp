#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "common/nbdkit_extents.h"

#include <cerrno>

namespace qed_nbdkit {

qed::Status add_extents(qed::BlockSource &source, uint32_t count, uint64_t offset,
                        bool req_one, nbdkit_extents *out) {
  auto list = source.extents(offset, count, req_one ? 1 : 65536);
  if (!list)
    return list.status();
  for (const qed::Extent &e : *list) {
    const uint32_t type = e.zero ? NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO : 0;
    if (nbdkit_add_extent(out, e.offset, e.length, type) == -1)
      return qed::Status::io_error("qed: cannot add an extent to the reply", errno);
  }
  return qed::Status::ok();
}

}  // namespace qed_nbdkit
