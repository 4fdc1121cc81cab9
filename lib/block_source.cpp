#include "lib/block_source.h"

#include <algorithm>
#include <cstring>

namespace qed {

void append_extent(std::vector<Extent> &out, Extent e) {
  if (e.length == 0)
    return;
  if (!out.empty()) {
    Extent &last = out.back();
    if (last.zero == e.zero && last.offset + last.length == e.offset) {
      last.length += e.length;
      return;
    }
  }
  out.push_back(e);
}

Status read_clipped(BlockSource &source, void *buf, size_t count, uint64_t pos) {
  const uint64_t size = source.size();
  const size_t inside = pos < size ? size_t(std::min<uint64_t>(count, size - pos)) : 0;
  if (inside)
    QED_RETURN_IF_ERROR(source.read(buf, inside, pos));
  std::memset(static_cast<uint8_t *>(buf) + inside, 0, count - inside);
  return Status::ok();
}

}  // namespace qed
