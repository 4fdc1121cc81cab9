// The write side of an image: writes, zeroes, trims and flushes.
//
// Crash-safety protocol
// ---------------------
// Clusters are only ever appended: a new cluster (data or L2 table) is
// reserved at the end of the file and never moves or is reused while the image
// is open. Metadata reaches the disk only in flush(), in this order:
//
//   1. Set NEED_CHECK in the header (only the first time; no sync of its own).
//   2. Extend the file over every reserved cluster, then fdatasync. Now every
//      data cluster that any dirty L2 entry points at is durable, NEED_CHECK
//      is durable, and so is the file size that makes those clusters valid.
//   3. Write the dirty 512-byte sectors of the L2 tables. If any L1 sector is
//      dirty (a new table), fdatasync, so new tables are durable first.
//   4. Write the dirty L1 sectors, then fdatasync.
//
// Between flushes, allocating writes only touch clusters that nothing on disk
// points at, and in-place writes only touch data clusters. So after a crash at
// any point:
//   - an L2 entry on disk points at data that was synced before it was
//     written (step 2 before 3), whether or not there is a backing file;
//   - an L1 entry on disk points at a table that is durable (3 before 4);
//   - a torn flush leaves each 512-byte sector old or new, and each state is a
//     consistent image: old entries point at old data, new at synced data;
//   - the worst case is leaked clusters: reserved space that no entry reached.
// NEED_CHECK, set before the first metadata write, tells the next open that
// leaks may exist; close() clears it after a final flush. A write completed
// before a flush returned is durable; one that was not flushed reads back
// either its old value or the new one.
//
// Allocating writes run in parallel: Metadata reserves clusters and registers
// the request's virtual clusters as in flight, so only a request for the same
// clusters waits. Dirty metadata is bounded: past writeback_threshold_ bytes
// the writer that crossed it runs a flush.
#include <algorithm>
#include <cstring>

#include "image.h"

namespace qed {

namespace {

bool all_zero(const uint8_t *p, size_t n) {
  return n == 0 || (p[0] == 0 && std::memcmp(p, p + 1, n - 1) == 0);
}

// Writes of zero buffers go in chunks of this size.
constexpr size_t kZeroChunk = 1 << 20;

}  // namespace

Result<bool> Image::read_below(Run::Kind was, uint64_t vpos, uint64_t count, uint8_t *out) {
  // A fresh cluster reads as zeroes, so only backing data needs writing.
  if (count == 0 || was == Run::kZero || !backing_ || vpos >= backing_->size())
    return false;
  QED_RETURN_IF_ERROR(read_clipped(*backing_, out, count, vpos));
  return !all_zero(out, count);
}

Status Image::write_allocation(Allocation &a, const uint8_t *data, uint64_t pos,
                               uint64_t count) {
  const uint64_t start = a.virtual_offset;
  const uint64_t end = start + a.clusters * geo_.cluster_size();
  const uint64_t wend = std::min(pos + count, end);
  const uint64_t head = pos - start, tail = end - wend;
  if (head == 0 && tail == 0)
    return data ? file_->pwrite(data, wend - pos, a.host_offset) : Status::ok();
  // Copy-on-write: the new clusters get what lay below around the written
  // bytes. When there is anything below, the clusters go out in one write.
  std::vector<uint8_t> buf(end - start);
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
      Allocation &a = plan->allocation;
      done = std::min(count, a.virtual_offset + a.clusters * geo_.cluster_size() - pos);
      Status s = write_allocation(a, data, pos, count);
      if (!s.is_ok()) {
        meta_->abandon(a);
        return s;
      }
      QED_RETURN_IF_ERROR(meta_->commit(a));
    }
    if (data)
      data += done;
    pos += done;
    count -= done;
  }
  return Status::ok();
}

Status Image::writeback_if_needed() {
  if (meta_->dirty_bytes() < writeback_threshold_)
    return Status::ok();
  return flush();
}

Status Image::write(const void *buf, size_t count, uint64_t pos, bool fua) {
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
  if (!backing_ || pos >= backing_->size())
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

Status Image::zero(uint64_t pos, uint64_t count, ZeroFlags flags) {
  if (read_only_)
    return Status::read_only(path_ + ": image is open read-only");
  if (flags.fast && !can_punch_)
    return Status::not_supported(path_ + ": the file system cannot zero quickly");
  while (count > 0) {
    auto run = meta_->lookup(pos, count);
    if (!run)
      return error_context(run.status());
    uint64_t n = run->length;
    if (run->kind == Run::kData) {
      QED_RETURN_IF_ERROR(zero_data(run->host_offset, n, flags));
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
  if (read_only_)
    return Status::read_only(path_ + ": image is open read-only");
  const uint64_t cs = geo_.cluster_size();
  // Only whole clusters are freed; trimming is advisory for the rest.
  const uint64_t first = (pos + cs - 1) / cs * cs;
  const uint64_t last = (pos + count) / cs * cs;
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
    }
    pos += run->length;
  }
  return fua ? flush() : Status::ok();
}

Status Image::flush() {
  if (read_only_)
    return Status::ok();
  std::lock_guard lock(flush_mu_);
  return flush_locked();
}

Status Image::flush_locked() {
  Writeback w = meta_->take_dirty();
  if (w.empty())
    return file_->sync();
  Status s = mark_needs_check_locked();
  if (s.is_ok())
    s = file_->extend_to(w.file_end);
  if (s.is_ok())
    s = file_->sync();
  for (size_t i = 0; s.is_ok() && i < w.tables.size(); i++)
    s = file_->pwrite(w.tables[i].bytes.data(), w.tables[i].bytes.size(), w.tables[i].file_offset);
  if (s.is_ok() && !w.l1.empty())
    s = file_->sync();
  for (size_t i = 0; s.is_ok() && i < w.l1.size(); i++)
    s = file_->pwrite(w.l1[i].bytes.data(), w.l1[i].bytes.size(), w.l1[i].file_offset);
  if (s.is_ok())
    s = file_->sync();
  meta_->finish_writeback(w, s.is_ok());
  return s.is_ok() ? s : error_context(s.with_context("writing back metadata"));
}

}  // namespace qed
