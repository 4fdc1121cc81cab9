// The write side of an image: writes, zeroes, trims and flushes.
//
// Crash-safety protocol
// ---------------------
// This is the mechanism, stated once; what it promises the user (what a flush
// makes durable, what a crash can cost) is CRASH SAFETY in
// plugin/nbdkit-qed-plugin.pod, and the crash tests check exactly that.
//
// Clusters are only ever appended: a new cluster (data or L2 table) is
// reserved at the end of the file, in space the file has never held data in,
// and never moves while the image is open. Between flushes, allocating writes
// only touch clusters that nothing on disk points at, and in-place writes,
// zeroes and trims only touch data clusters. Metadata (L2 and L1 entries, new
// tables) reaches the disk only in flush() and in write-backs (below), as
// dirty 512-byte sectors, each of which a crash leaves old or new.
//
// What a crash can leave, entry by entry, when an entry reached the disk but
// what it points at did not:
//   - an L2 entry pointing at a data cluster whose data is not on disk reads
//     that cluster's bytes: zeroes, since the space never held data, or, when
//     the file's growth did not reach the disk either, nothing: the entry
//     points past the end of the file and reads as unallocated;
//   - an L1 entry pointing at a table that is not on disk sees an empty table
//     (zeroes, or past the end of the file: no table): every cluster of it
//     unallocated.
// This rests on the file system never showing stale blocks in space a file
// never wrote: true of ext4 in its default ordered mode, XFS and btrfs.
//
// The ordering rules that follow:
//   - Without a backing file, zeroes and "unallocated" are exactly the old
//     content of a cluster that was unallocated or a zero cluster before. So
//     nothing needs ordering: data, the file's growth and the entries may
//     reach the disk in any order, and one sync covers them together. An
//     entry left past the end of the file is the trace of an interrupted
//     flush; NEED_CHECK is set in such an image (below), and the check at the
//     next read-write open drops the entry.
//   - With a backing file, "unallocated" means the backing file's data, which
//     zeroes would hide. So the data, and the file size that reaches it, are
//     durable (a sync) before any L2 entry pointing at them is written. L2 and
//     L1 sectors then go out together: a new L1 entry whose table did not
//     reach the disk sees an empty table, every cluster unallocated, which is
//     the old content.
//   - Space given back (a failed allocation at the end of the file: the file
//     is cut back) held that write's data. The cut is made durable (a sync)
//     before any entry points into that space again, whether or not there is
//     a backing file.
//   - NEED_CHECK is durable in the header before the first metadata write of
//     an open, so that the next open, ours or QEMU's, checks the image.
//   - No entry is written that points past the end of the file as this
//     process sees it (the file is grown, or the flush fails, first): an entry
//     past the end is only ever the trace of a crash.
//
// So flush() is:
//   1. The first time per open: set NEED_CHECK in the header. Without a
//      backing file that costs a sync of its own; with one, step 3's covers
//      it.
//   2. Make the file reach every reserved cluster. Usually the data writes
//      already did, and nothing is called; otherwise it grows with headroom,
//      so that the next flushes find it long enough. Then make sure the file
//      reaches every table and cluster the entries about to be written name
//      (one fstat), else fail before writing any: an entry past the end would
//      be dropped by the next open as the trace of an interrupted write, with
//      the data this flush acknowledges (issue 18: a cut that raced an
//      extension once made the extension believe the file was long enough).
//      Failing here changed nothing on disk.
//   3. With a backing file, or after space was given back: sync.
//   4. Write the dirty L2 sectors and L1 sectors; sync.
// A flush with nothing written since the last sync does nothing; one with
// writes but no metadata to write is one sync. Steady state: one sync per
// flush without a backing file, two with one. A FUA request is the request
// followed by a flush.
//
// A write-back is a flush without the sync of step 4: it runs when changes
// take too much of the cache (see "Dirty metadata is bounded" below), to free
// their memory, not to make anything durable. Steps 1 and 3 keep the order a
// crash needs (NEED_CHECK first; data before the entries pointing at it); the
// next flush syncs what it wrote, even when nothing else changed since.
//
// Copies from the backing file (copy-on-read, the stream: image_copy.cpp) are
// allocating writes into an image with a backing file, and follow its rule.
// Detaching the backing file (image_copy.cpp) flushes, then rewrites the
// header sector without it and syncs. Later flushes of that open keep the
// backing-file order (backing_ stays set; it is only no longer read), more
// than the now standalone image needs.
//
// The worst a crash leaves is leaked clusters (reserved space that no entry
// reached) and, without a backing file, entries past the end of the file.
// NEED_CHECK tells the next open that they may exist. close() flushes, cuts
// the file back to what is in use (sync), then clears NEED_CHECK (sync),
// unless leaks inside the file remain for the check to give back or the file
// was found short of what the entries name (image.cpp).
//
// Failures. After a failed sync or metadata write, the kernel may already
// have dropped the dirty pages, and a later sync that succeeds would not mean
// they are on disk: the image then refuses every further write and flush
// (reads go on) until it is reopened, and the check at that open repairs it.
//
// Allocating writes run in parallel: Metadata reserves clusters and registers
// the request's virtual clusters as in flight, so only a request for the same
// clusters waits. Dirty metadata is bounded: past writeback_threshold_ bytes
// (what changed tables hold of the cache, see metadata.h) the writer that
// crossed it runs a write-back; and a request that needs room in the cache
// that changes take runs one first (Metadata::make_room).
#include <algorithm>
#include <cstring>

#include "lib/align.h"
#include "lib/byte_order.h"
#include "lib/image.h"
#include "lib/metadata.h"
#include "lib/page_buffer.h"

namespace qed {

namespace {

bool all_zero(const uint8_t *p, size_t n) {
  return n == 0 || (p[0] == 0 && std::memcmp(p, p + 1, n - 1) == 0);
}

// Writes of zero buffers go in chunks of this size.
constexpr size_t kZeroChunk = 1 << 20;
// Copy-on-write of an allocation up to this size goes out in one write; larger
// ones (big clusters) are copied in chunks of it, so memory stays bounded.
constexpr uint64_t kCowChunk = 2 << 20;

// Ends a write-back on every path, exceptions included.
class WritebackScope {
public:
  WritebackScope(Metadata &meta, Writeback &w) : meta_(meta), w_(w) {}
  ~WritebackScope() { meta_.finish_writeback(w_, written_); }
  WritebackScope(const WritebackScope &) = delete;
  WritebackScope &operator=(const WritebackScope &) = delete;
  void written() { written_ = true; }

private:
  Metadata &meta_;
  Writeback &w_;
  bool written_ = false;
};

// The end of the furthest table or cluster that the entries of `w` name:
// the file must reach it before they are written.
uint64_t reach_of(const Writeback &w, const Geometry &geo) {
  auto reach = [](uint64_t offset, uint64_t bytes) {
    return offset > UINT64_MAX - bytes ? UINT64_MAX : offset + bytes;
  };
  uint64_t end = 0;
  for (const Writeback::Piece &p : w.tables) {
    end = std::max(end, reach(p.table->offset, geo.table_bytes()));
    for (size_t i = 0; i + 8 <= p.count; i += 8) {
      const uint64_t e = load_le64(p.bytes + i);
      if (e > kEntryZero)
        end = std::max(end, reach(e, geo.cluster_size()));
    }
  }
  for (const Writeback::Piece &p : w.l1) {
    for (size_t i = 0; i + 8 <= p.count; i += 8) {
      const uint64_t e = load_le64(p.bytes + i);
      if (e != 0)
        end = std::max(end, reach(e, geo.table_bytes()));
    }
  }
  return end;
}

// kIOError unless the file reaches `needed` (what the entries to be written
// name).
Status check_reach(File &file, uint64_t needed) {
  auto size = file.size();
  if (!size)
    return size.status();
  if (*size >= needed)
    return Status::ok();
  return Status::io_error(file.name() + ": the file ends at " + std::to_string(*size) +
                              " bytes, short of the tables and clusters its entries name (up to " +
                              std::to_string(needed) +
                              " bytes); not writing entries that would point past its end",
                          EIO);
}

}  // namespace

bool Image::may_show_below(Run::Kind was, uint64_t vpos, uint64_t count) const {
  // A fresh cluster reads as zeroes, so only backing data needs writing.
  const BlockSource *b = below();
  return count != 0 && was != Run::kZero && b && vpos < b->size();
}

Result<bool> Image::read_below(Run::Kind was, uint64_t vpos, uint64_t count, uint8_t *out) {
  if (!may_show_below(was, vpos, count))
    return false;
  BlockSource *b = below();
  if (!b)  // detached since may_show_below(): what lay below is zeroes
    return false;
  QED_RETURN_IF_ERROR(read_clipped(*b, out, count, vpos));
  return !all_zero(out, count);
}

Status Image::copy_below(Run::Kind was, uint64_t vpos, uint64_t count, uint64_t host) {
  if (!may_show_below(was, vpos, count))
    return Status::ok();
  PageBuffer buf(size_t(std::min(count, kCowChunk)));
  while (count > 0) {
    const size_t n = size_t(std::min<uint64_t>(count, buf.size()));
    auto below = read_below(was, vpos, n, buf.data());
    if (!below)
      return below.status();
    if (*below)
      QED_RETURN_IF_ERROR(file_->pwrite(buf.data(), n, host));
    vpos += n;
    host += n;
    count -= n;
  }
  return Status::ok();
}

Status Image::write_allocation(Allocation &a, const uint8_t *data, uint64_t pos,
                               uint64_t count) {
  const uint64_t start = a.virtual_offset;
  const uint64_t end = start + a.clusters * geo_.cluster_size();
  const uint64_t wend = std::min(pos + count, end);
  const uint64_t head = pos - start, tail = end - wend;
  if (head == 0 && tail == 0)
    return data ? file_->pwrite(data, wend - pos, a.host_offset) : Status::ok();
  if (end - start > kCowChunk) {
    // Big clusters: what lay below goes around the written bytes in chunks.
    QED_RETURN_IF_ERROR(copy_below(a.first_kind, start, head, a.host_offset));
    QED_RETURN_IF_ERROR(copy_below(a.last_kind, wend, tail, a.host_offset + (wend - start)));
    return data ? file_->pwrite(data, wend - pos, a.host_offset + head) : Status::ok();
  }
  // Copy-on-write: the new clusters get what lay below around the written
  // bytes. When there is anything below, the clusters go out in one write.
  if (!may_show_below(a.first_kind, start, head) && !may_show_below(a.last_kind, wend, tail))
    return data ? file_->pwrite(data, wend - pos, a.host_offset + head) : Status::ok();
  PageBuffer buf(end - start);
  auto below_head = read_below(a.first_kind, start, head, buf.data());
  if (!below_head)
    return below_head.status();
  auto below_tail = read_below(a.last_kind, wend, tail, buf.data() + (wend - start));
  if (!below_tail)
    return below_tail.status();
  if (!*below_head && !*below_tail)
    return data ? file_->pwrite(data, wend - pos, a.host_offset + head) : Status::ok();
  if (data)
    std::memcpy(buf.data() + head, data, wend - pos);
  return file_->pwrite(buf.data(), buf.size(), a.host_offset);
}

Status Image::write_range(const uint8_t *data, uint64_t count, uint64_t pos) {
  while (count > 0) {
    auto plan = meta_->plan_write(pos, count);
    if (!plan)
      return error_context(plan.status());
    uint64_t done;
    if (!plan->allocate) {
      done = plan->in_place.length;
      if (data)
        QED_RETURN_IF_ERROR(file_->pwrite(data, done, plan->in_place.host_offset));
      else
        QED_RETURN_IF_ERROR(zero_data(plan->in_place.host_offset, done, ZeroFlags{}));
    } else {
      // On any return or exception before commit(), the Allocation gives its
      // clusters back.
      Allocation &a = plan->allocation;
      done = std::min(count, a.virtual_offset + a.clusters * geo_.cluster_size() - pos);
      QED_RETURN_IF_ERROR(write_allocation(a, data, pos, count));
      QED_RETURN_IF_ERROR(meta_->commit(a));
    }
    written_.fetch_add(1);
    if (data)
      data += done;
    pos += done;
    count -= done;
  }
  return Status::ok();
}

Status Image::writeback_if_needed() {
  if (meta_->changes_bytes() <= writeback_threshold_)
    return Status::ok();
  return write_back_for_room();
}

Status Image::refuse_if_failed() const {
  if (!failed_.load())
    return Status::ok();
  MutexLock lock(failure_mu_);
  if (failure_.is_ok())  // fail() could not build its message
    return Status::io_error(path_ + ": writes and flushes are refused since a flush failed", EIO);
  return failure_;
}

Status Image::fail(const Status &why, const char *doing) {
  // The state is entered first, with nothing that can throw: the messages
  // below allocate, and a failure to build them must not let a later flush
  // acknowledge what this one may have lost.
  if (failed_.exchange(true))
    return why;
  try {
    Status reason = error_context(why.with_context(doing));
    MutexLock lock(failure_mu_);
    failure_ = Status::io_error(
        path_ + ": writes and flushes are refused since a flush failed (" + reason.message() +
            "): data written before it may not be on disk; restart nbdkit to reopen the image "
            "(the check at open repairs it)",
        EIO);
    return reason;
  } catch (...) {
    return why;
  }
}

Status Image::write(const void *buf, size_t count, uint64_t pos, bool fua) {
  requests_.fetch_add(1, std::memory_order_relaxed);
  QED_RETURN_IF_ERROR(check_range(pos, count, "write"));
  QED_RETURN_IF_ERROR(refuse_if_failed());
  QED_RETURN_IF_ERROR(write_range(static_cast<const uint8_t *>(buf), count, pos));
  // FUA needs the metadata that leads to the data too, which may be dirty
  // even for an in-place write (an earlier write allocated the cluster). With
  // nothing dirty, flush() is a single fdatasync.
  if (fua)
    return flush();
  return writeback_if_needed();
}

Status Image::zero_data(uint64_t host, uint64_t count, ZeroFlags flags) {
  Status s = flags.may_trim ? file_->punch_hole(host, count) : file_->zero_range(host, count);
  if (s.code() != Status::Code::kNotSupported)
    return s;
  if (can_punch_ && !flags.may_trim)
    return file_->punch_hole(host, count);  // reads as zeroes all the same
  if (flags.fast)
    return s;
  static const std::vector<uint8_t> zeroes(kZeroChunk);
  while (count > 0) {
    const size_t n = size_t(std::min<uint64_t>(count, kZeroChunk));
    QED_RETURN_IF_ERROR(file_->pwrite(zeroes.data(), n, host));
    host += n;
    count -= n;
  }
  return Status::ok();
}

Result<uint64_t> Image::zero_unallocated(uint64_t pos, uint64_t count) {
  // Without data below, an unallocated cluster already reads as zeroes.
  const BlockSource *b = below();
  if (!b || pos >= b->size())
    return count;
  const uint64_t cs = geo_.cluster_size();
  const uint64_t start = pos;
  while (count > 0) {
    const uint64_t in_cluster = geo_.offset_in_cluster(pos);
    uint64_t done;
    if (in_cluster == 0 && count >= cs) {
      auto n = meta_->mark_zero(pos, count / cs);
      if (!n)
        return error_context(n.status());
      if (*n == 0)
        break;  // a write allocated it meanwhile: the caller looks again
      done = *n * cs;
    } else {
      // A partial cluster: allocate it, keeping the backing data around the
      // zeroed bytes.
      done = std::min(count, cs - in_cluster);
      QED_RETURN_IF_ERROR(write_range(nullptr, done, pos));
    }
    pos += done;
    count -= done;
  }
  return pos - start;
}

Status Image::check_fast_zero(uint64_t pos, uint64_t count) {
  const BlockSource *b = below();
  const uint64_t below_end = b ? b->size() : 0;
  while (count > 0) {
    auto run = meta_->lookup(pos, count);
    if (!run)
      return error_context(run.status());
    const uint64_t n = run->length;
    bool slow = false;
    if (run->kind == Run::kData) {
      slow = !can_punch_;  // otherwise zeroes would be written
    } else if (run->kind == Run::kUnallocated && pos < below_end) {
      // Whole clusters become zero clusters (metadata only); a partial one
      // over backing data needs copy-on-write.
      const uint64_t end = pos + n;
      slow = geo_.offset_in_cluster(pos) != 0 ||
             (geo_.offset_in_cluster(end) != 0 && geo_.cluster_start(end) < below_end);
    }
    if (slow)
      return Status::not_supported(path_ + ": zeroing " + std::to_string(n) + " bytes at " +
                                   std::to_string(pos) + " would not be fast");
    pos += n;
    count -= n;
  }
  return Status::ok();
}

Status Image::zero(uint64_t pos, uint64_t count, ZeroFlags flags) {
  requests_.fetch_add(1, std::memory_order_relaxed);
  if (read_only_)
    return Status::read_only(path_ + ": image is open read-only");
  QED_RETURN_IF_ERROR(check_range(pos, count, "zero"));
  QED_RETURN_IF_ERROR(refuse_if_failed());
  // A fast zero that cannot be fast fails before it changes anything.
  if (flags.fast)
    QED_RETURN_IF_ERROR(check_fast_zero(pos, count));
  while (count > 0) {
    auto run = meta_->lookup(pos, count);
    if (!run)
      return error_context(run.status());
    uint64_t n = run->length;
    if (run->kind == Run::kData) {
      QED_RETURN_IF_ERROR(zero_data(run->host_offset, n, flags));
      written_.fetch_add(1);
    } else if (run->kind == Run::kUnallocated) {
      auto done = zero_unallocated(pos, n);
      if (!done)
        return done.status();
      n = *done;  // less than the run if a write got there first
    }
    pos += n;
    count -= n;
  }
  if (flags.fua)
    return flush();
  return writeback_if_needed();
}

Status Image::trim(uint64_t pos, uint64_t count, bool fua) {
  requests_.fetch_add(1, std::memory_order_relaxed);
  if (read_only_)
    return Status::read_only(path_ + ": image is open read-only");
  QED_RETURN_IF_ERROR(check_range(pos, count, "trim"));
  QED_RETURN_IF_ERROR(refuse_if_failed());
  const uint64_t cs = geo_.cluster_size();
  // Only whole clusters are freed; trimming is advisory for the rest.
  const uint64_t first = round_up(pos, cs);
  const uint64_t last = round_down(pos + count, cs);
  pos = first;
  while (pos < last) {
    auto run = meta_->lookup(pos, last - pos);
    if (!run)
      return error_context(run.status());
    if (run->kind == Run::kData) {
      // The L2 entry keeps pointing at the cluster: nothing leaks, and the
      // hole reads as zeroes.
      Status s = file_->punch_hole(run->host_offset, run->length);
      if (!s.is_ok() && s.code() != Status::Code::kNotSupported)
        return s;
      written_.fetch_add(1);
    }
    pos += run->length;
  }
  return fua ? flush() : Status::ok();
}

Status Image::flush() {
  requests_.fetch_add(1, std::memory_order_relaxed);
  if (read_only_)
    return Status::ok();
  MutexLock lock(flush_mu_);
  return flush_locked();
}

void Image::start_writeback() {
  if (!read_only_)
    file_->start_writeback(0, 0);
}

Status Image::write_back_for_room() {
  if (read_only_)
    return Status::ok();
  MutexLock lock(flush_mu_);
  return write_back_locked(false);
}

Status Image::flush_locked() { return write_back_locked(true); }

Status Image::write_back_locked(bool durable) {
  QED_RETURN_IF_ERROR(refuse_if_failed());
  // Writes completed before this flush began are counted in `written`.
  const uint64_t written = written_.load();
  Writeback w = meta_->take_dirty();
  WritebackScope scope(*meta_, w);
  if (w.empty()) {
    if (!durable || (written == synced_ && !metadata_unsynced_))
      return Status::ok();  // nothing written since the last sync
    if (Status s = file_->sync(); !s.is_ok())
      return fail(s, "flushing");
    synced_ = written;
    metadata_unsynced_ = false;
    return Status::ok();
  }
  // 1. NEED_CHECK, durable before the first metadata write of this open.
  if (!needs_check_on_disk_) {
    Status s = mark_needs_check_locked();
    if (s.is_ok() && !backing_)
      s = file_->sync();
    if (!s.is_ok())
      return fail(s, "marking the image as needing a check");
  }
  // 2. The file reaches every reserved cluster. Failing here changed nothing
  // on disk: the flush fails, later ones may succeed.
  const uint64_t cs = geo_.cluster_size();
  const uint64_t headroom = std::max<uint64_t>(cs, std::min<uint64_t>(16 * cs, 32 << 20));
  if (Status s = file_->extend_to(w.file_end, w.file_end + headroom); !s.is_ok())
    return error_context(s.with_context("writing back metadata"));
  const uint64_t reach = reach_of(w, geo_);
  if (Status s = check_reach(*file_, reach); !s.is_ok())
    return error_context(s.with_context("writing back metadata"));
  // 3. Data before the entries that point at it, where a crash could
  // otherwise show the wrong thing there.
  Status s;
  if (backing_ || w.sync_before_entries)
    s = file_->sync();
  // 4. L2 and L1 sectors, then one sync. A write-back for room leaves that
  // sync to the next flush: what it wrote is in the file for every later
  // read, and a crash before that flush leaves each sector old or new, as
  // after any crash.
  for (size_t i = 0; s.is_ok() && i < w.tables.size(); i++)
    s = file_->pwrite(w.tables[i].bytes, w.tables[i].count, w.tables[i].file_offset);
  for (size_t i = 0; s.is_ok() && i < w.l1.size(); i++)
    s = file_->pwrite(w.l1[i].bytes, w.l1[i].count, w.l1[i].file_offset);
  if (s.is_ok() && durable)
    s = file_->sync();
  if (!s.is_ok())
    return fail(s, "writing back metadata");
  scope.written();
  written_reach_ = std::max(written_reach_, reach);
  if (durable) {
    synced_ = written;
    metadata_unsynced_ = false;
  } else {
    metadata_unsynced_ = true;
  }
  return Status::ok();
}

}  // namespace qed
