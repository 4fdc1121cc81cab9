// The read side of an image: reads and the extent map.
#include <algorithm>
#include <cstring>

#include "lib/image.h"
#include "lib/metadata.h"

namespace qed {

Result<Run> Image::lookup(uint64_t pos, uint64_t len) { return meta_->lookup(pos, len); }

Status Image::read(void *buf, size_t count, uint64_t pos) {
  requests_.fetch_add(1, std::memory_order_relaxed);
  QED_RETURN_IF_ERROR(check_range(pos, count, "read"));
  auto *out = static_cast<uint8_t *>(buf);
  while (count > 0) {
    auto run = meta_->lookup(pos, count);
    if (!run)
      return error_context(run.status());
    const size_t n = size_t(run->length);
    switch (run->kind) {
    case Run::kData:
      QED_RETURN_IF_ERROR(file_->pread(out, n, run->host_offset));
      break;
    case Run::kZero:
      std::memset(out, 0, n);
      break;
    case Run::kUnallocated:
      if (BlockSource *b = below()) {
        QED_RETURN_IF_ERROR(read_clipped(*b, out, n, pos));
        if (copy_on_read_)
          copy_after_read(pos, n, out);
      } else {
        std::memset(out, 0, n);
      }
      break;
    }
    out += n;
    pos += n;
    count -= n;
  }
  return Status::ok();
}

Result<std::vector<Extent>> Image::extents(uint64_t pos, uint64_t count, size_t max) {
  QED_RETURN_IF_ERROR(check_range(pos, count, "extents query"));
  std::vector<Extent> out;
  while (count > 0 && out.size() < max) {
    auto run = meta_->lookup(pos, count);
    if (!run)
      return error_context(run.status());
    uint64_t done = run->length;
    if (run->kind == Run::kData) {
      append_extent(out, {pos, done, false});
    } else if (BlockSource *b = below();
               run->kind == Run::kUnallocated && b && pos < b->size()) {
      // Unallocated clusters show what lies below them.
      const uint64_t below = std::min(done, b->size() - pos);
      auto sub = b->extents(pos, below, max - out.size() + 1);
      if (!sub)
        return sub.status();
      done = 0;
      for (const Extent &e : *sub) {
        const bool merges = !out.empty() && out.back().zero == e.zero &&
                            out.back().offset + out.back().length == e.offset;
        if (!merges && out.size() >= max)
          break;
        append_extent(out, e);
        done += e.length;
      }
      if (done < below)
        break;  // the backing file gave as many extents as we may return
    } else {
      append_extent(out, {pos, done, true});
    }
    pos += done;
    count -= done;
  }
  return out;
}

}  // namespace qed
