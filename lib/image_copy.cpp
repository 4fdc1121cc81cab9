// Copying the backing file into the image: copy-on-read, the stream's copies
// (stream.h) and the detach that ends a stream.
//
// A copy is one more allocating write (image_write.cpp): Metadata::plan_copy()
// reserves fresh clusters and registers them in flight, the data goes into
// them, and commit() points the entries at them; the entries reach the disk
// only in a flush, after a sync of the data (the backing-file rule of the
// crash-safety protocol). What makes it a copy is that it only ever takes
// clusters that are still unallocated:
//   - a write (or zero) that allocated the cluster first, or has it in
//     flight, wins: plan_copy() waits for it and then skips the cluster;
//   - a write that comes while the copy is in flight waits for the copy's
//     commit, then writes in place over it.
// The backing file never changes, so what it shows at a cluster that is
// still unallocated is that cluster's content, whenever it was read.
#include <algorithm>
#include <cstring>
#include <optional>

#include "lib/align.h"
#include "lib/image.h"
#include "lib/metadata.h"
#include "lib/page_buffer.h"

namespace qed {

namespace {

// A copy goes out in pieces of at most this size (big clusters), so that its
// memory stays bounded.
constexpr uint64_t kCopyChunk = 2 << 20;

bool all_zero(const uint8_t *p, size_t n) {
  return n == 0 || (p[0] == 0 && std::memcmp(p, p + 1, n - 1) == 0);
}

}  // namespace

Status Image::fill_from_below(uint8_t *out, uint64_t vpos, uint64_t count, const uint8_t *known,
                              uint64_t known_pos, uint64_t known_len, bool *base_failed) {
  BlockSource *b = below();
  // [ks, ke): the part of [vpos, vpos+count) that `known` holds.
  const uint64_t end = vpos + count;
  uint64_t ks = end, ke = end;
  if (known && known_pos < end && known_pos + known_len > vpos) {
    ks = std::max(vpos, known_pos);
    ke = std::min(end, known_pos + known_len);
    std::memcpy(out + (ks - vpos), known + (ks - known_pos), ke - ks);
  }
  auto read = [&](uint64_t from, uint64_t to) -> Status {
    if (from >= to)
      return Status::ok();
    if (!b) {  // detached: every cluster left to copy reads as zeroes
      std::memset(out + (from - vpos), 0, size_t(to - from));
      return Status::ok();
    }
    Status s = read_clipped(*b, out + (from - vpos), size_t(to - from), from);
    if (!s.is_ok() && base_failed)
      *base_failed = true;
    return s;
  };
  QED_RETURN_IF_ERROR(read(vpos, ks));
  return read(ke, end);
}

Status Image::copy_up(uint64_t pos, uint64_t count, const uint8_t *known, bool *base_failed,
                      PageBuffer *scratch) {
  if (read_only_)
    return Status::read_only(path_ + ": image is open read-only");
  QED_RETURN_IF_ERROR(refuse_if_failed());
  const BlockSource *b = below();
  if (!b || count == 0)
    return Status::ok();
  const uint64_t cs = geo_.cluster_size();
  // Clusters past the end of the backing file read as zeroes, as they will
  // without it: nothing to copy there.
  const uint64_t end =
      std::min(round_up(pos + count, cs), round_up(std::min(b->size(), size()), cs));
  uint64_t p = geo_.cluster_start(pos);
  while (p < end) {
    auto plan = meta_->plan_copy(p, end - p);
    if (!plan)
      return error_context(plan.status());
    if (!plan->allocate) {
      p += plan->in_place.length;  // a write got there first: it wins
      continue;
    }
    // On any return or exception before commit(), the Allocation gives its
    // clusters back.
    Allocation &a = plan->allocation;
    const uint64_t a_end = a.virtual_offset + a.clusters * cs;
    std::optional<PageBuffer> own;
    if (!scratch)
      own.emplace(size_t(std::min(a_end - a.virtual_offset, kCopyChunk)));
    PageBuffer &buf = scratch ? *scratch : *own;
    for (uint64_t v = a.virtual_offset; v < a_end;) {
      const uint64_t n = std::min<uint64_t>(a_end - v, buf.size());
      // Every byte of the piece is filled: from `known`, the backing file
      // (zeroes past its end) or, detached, zeroes.
      QED_RETURN_IF_ERROR(fill_from_below(buf.data(), v, n, known, pos, count, base_failed));
      // Fresh clusters read as zeroes (image_write.cpp): zeroes need no write.
      if (!all_zero(buf.data(), size_t(n)))
        QED_RETURN_IF_ERROR(file_->pwrite(buf.data(), size_t(n), a.host_offset + (v - a.virtual_offset)));
      v += n;
    }
    QED_RETURN_IF_ERROR(meta_->commit(a));
    written_.fetch_add(1);
    p = a_end;
  }
  return writeback_if_needed();
}

void Image::copy_after_read(uint64_t pos, uint64_t count, const uint8_t *data) {
  Status s;
  try {
    s = copy_up(pos, count, data, nullptr);
  } catch (const std::bad_alloc &) {
    s = Status::no_space(path_ + ": out of memory");
  }
  // After a failed flush every copy is refused the same way: that failure is
  // the flush's to report.
  if (s.is_ok() || failed_.load() || copy_failed_.exchange(true))
    return;
  if (on_copy_failure_) {
    try {
      on_copy_failure_(error_context(s.with_context("copy-on-read")));
    } catch (...) {
      // A front end's logger must not fail the read.
    }
  }
}

Status Image::detach_backing() {
  if (read_only_)
    return Status::read_only(path_ + ": image is open read-only");
  MutexLock lock(flush_mu_);
  if (detached() || !backing_)
    return Status::ok();
  // Everything copied is durable, entries included, before the header stops
  // naming the backing file: a crash before the header write leaves an image
  // that still names it (and a stream that starts again finds nothing left
  // to copy); after it, an image that needs it no more.
  QED_RETURN_IF_ERROR(flush_locked());
  const Header old = header_;
  header_.features &= ~(kFeatureBackingFile | kFeatureBackingNoProbe);
  header_.backing_filename_offset = 0;
  header_.backing_filename_size = 0;
  // The 64 header bytes lie in the first sector: a crash leaves them old or
  // new.
  Status s = write_header_locked();
  if (s.is_ok())
    s = file_->sync();
  if (!s.is_ok()) {
    header_ = old;
    return fail(s, "rewriting the header without the backing file");
  }
  detached_.store(true, std::memory_order_release);
  return Status::ok();
}

}  // namespace qed
