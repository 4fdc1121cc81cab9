// One open QED image: the engine's public face. Plugin -> Image -> Metadata and
// File. Every public method may run on many threads at once.
//
// Locks, in the order they may be taken (what each guards is checked by
// clang: GUARDED_BY / REQUIRES, thread_annotations.h):
//   flush_mu_ (Image)  serialises flush(), write-backs, close() and header
//                      rewrites; guards header_, needs_check_on_disk_, synced_
//                      and metadata_unsynced_.
//   Metadata::mu_      guards all table state (see metadata.h).
//   failure_mu_        guards failure_ (taken alone).
// No lock is held during data I/O; flush_mu_ is held across metadata I/O only.
// The crash-safety protocol is described at the top of image_write.cpp.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <optional>

#include "lib/backing.h"
#include "lib/block_source.h"
#include "lib/check.h"
#include "lib/file.h"
#include "lib/format.h"
#include "lib/geometry.h"
#include "lib/run.h"
#include "lib/thread_annotations.h"

namespace qed {

class Allocation;
class Metadata;
class PageBuffer;

// When to run the consistency check at open.
enum class CheckPolicy {
  kAuto,    // repair a dirty image opened read-write; otherwise no check
  kRepair,  // check every time; repair when read-write
  kReport,  // check every time; never repair
  kOff,     // never check (a dirty image keeps NEED_CHECK)
};

struct OpenOptions {
  bool read_only = true;
  // L2 cache budget of the whole chain (backing.h): this image keeps part, a
  // QED backing file gets the rest; each raised to what its image needs at
  // least (minimum_cache_bytes(), see Image::cache_budgets()).
  uint64_t cache_bytes = 64ull << 20;
  bool allow_backing = true;           // false: refuse images with backing files
  BackingStores backing_stores;        // where backing files are opened (backing_store.h)
  uint64_t grow_to = 0;                // read-write: grow the image to this size
  CheckPolicy check = CheckPolicy::kAuto;
  // Opened instead of the backing file the image names (the image must have
  // one). Applies to the image being opened only, not to its backing files.
  std::optional<BackingOverride> backing_override;
  // QEMU's image locks on the image file (file_lock.h), taken before anything
  // is read: as a writer when read-write, else as a reader. Backing files are
  // locked (as readers) by backing_stores.local.
  LockSettings locking;
  // Lock as a writer even when opened read-only: for a server that will
  // reopen the image read-write, so that nobody else starts writing it, or
  // holds it, in between.
  bool lock_as_writer = false;
  // Read-write only: a read served from the backing file also copies the
  // whole clusters it covers into the image (image_copy.cpp).
  bool copy_on_read = false;
  // Called once, with the first failure of such a copy (the read itself
  // succeeds: it has its data). The engine never logs; the front end does.
  std::function<void(const Status &)> on_copy_failure;
};

struct ZeroFlags {
  bool may_trim = true;  // may deallocate instead of writing zeroes
  bool fua = false;
  bool fast = false;     // fail with kNotSupported at once if zeroing would be slow
};

class Image final : public BlockSource {
public:
  static Result<std::unique_ptr<Image>> open(const std::string &path, const OpenOptions &options);
  static Result<std::unique_ptr<Image>> open_in_chain(const std::string &path,
                                                      const OpenOptions &options,
                                                      ChainState &chain);
  // Opens an image on a file the caller made (tests use in-memory and
  // fault-injecting files). `path` names it in messages and anchors relative
  // backing file names.
  static Result<std::unique_ptr<Image>> open_file(const std::string &path,
                                                  std::unique_ptr<File> file,
                                                  const OpenOptions &options, ChainState &chain);
  ~Image() override;

  uint64_t size() const override { return geo_.image_size(); }
  Status read(void *buf, size_t count, uint64_t pos) override;
  Result<std::vector<Extent>> extents(uint64_t pos, uint64_t count, size_t max) override;
  // "qed PATH (cluster size 64 KiB, table size 4), backing file: ..." down the chain.
  std::string description() const override;

  Status write(const void *buf, size_t count, uint64_t pos, bool fua);
  Status zero(uint64_t pos, uint64_t count, ZeroFlags flags);
  // Frees the host space of the clusters the range covers entirely.
  Status trim(uint64_t pos, uint64_t count, bool fua);
  // Makes every write completed before the call durable.
  Status flush();
  // Flushes, cuts the file back to what is in use and marks the image clean;
  // the image must not be used afterwards.
  Status close();
  // Whether growing to `new_size` (rounded up to 512) is possible: not a
  // shrink, within the geometry's limit, and not over a backing file larger
  // than the image (the new space would show its data).
  Status check_grow(uint64_t new_size) const;

  // Copies what the backing file shows at the whole clusters covering
  // [pos, pos+count) into the clusters of the image that are still
  // unallocated (copy-on-read and the stream; image_copy.cpp). `known`, when
  // not null, holds what the backing file shows at [pos, pos+count), so those
  // bytes are not read again. Clusters that a write allocated or zeroed, or
  // has in flight, keep what the write put there. When reading the backing
  // file failed, *base_failed (if given) is set. `scratch`, when not null, is
  // the buffer the copy goes through (pieces of its size) instead of one
  // mapped for this call: the stream's workers keep one each, as mapping and
  // faulting in a fresh one per step costs more than the copy's checks.
  Status copy_up(uint64_t pos, uint64_t count, const uint8_t *known, bool *base_failed,
                 PageBuffer *scratch = nullptr);
  // Starts writing to storage what is written so far, without waiting (a
  // hint: File::start_writeback). The stream calls it after each step, so
  // that its disk writes overlap its copying, as a copy tool's do.
  void start_writeback();
  // What the image itself maps at `pos` (not what lies below).
  Result<Run> lookup(uint64_t pos, uint64_t len);
  // The backing file while the image uses one; null once detached.
  BlockSource *backing() const { return below(); }
  // Makes the image standalone once every cluster the backing file has data
  // for is in the image (the stream's last step; the caller vouches for
  // that): flushes, rewrites the header without the backing file (one sector,
  // then a sync), and stops reading the backing file.
  Status detach_backing();
  // Whether detach_backing() made the image standalone in this open.
  bool detached() const { return detached_.load(std::memory_order_acquire); }
  // Client requests started so far (reads, writes, zeroes, trims, flushes):
  // the stream yields while this moves.
  uint64_t requests_started() const { return requests_.load(std::memory_order_relaxed); }

  const std::string &path() const { return path_; }
  const Geometry &geometry() const { return geo_; }
  bool read_only() const { return read_only_; }
  bool has_backing() const { return below() != nullptr; }
  bool can_punch_holes() const { return can_punch_; }
  Header header();
  // The header as validated at open (geometry fields never change).
  const Header &header_at_open() const { return header_at_open_; }
  // The report of the check run at open, if one ran.
  const std::optional<CheckReport> &check_report() const { return check_report_; }

  // The L2 cache budget of one image of the chain: what it was given
  // (OpenOptions::cache_bytes) and what it uses, more when that was below
  // the minimum of its geometry (minimum_cache_bytes(): 4 tables of `table`
  // bytes each, as L2Cache charges them).
  struct CacheBudget {
    std::string path;
    uint64_t requested;
    uint64_t budget;
    uint64_t table;
  };
  // This image and the QED images below it, top first.
  std::vector<CacheBudget> cache_budgets() const;
  // This image's cache now: what it is charged (never above its budget once a
  // request is done), and the most memory its tables and their copies ever
  // took at once (buffers of its pool).
  struct CacheUse {
    uint64_t charged;
    uint64_t peak_buffer_bytes;
  };
  CacheUse cache_use() const;

private:
  Image(std::string path, std::unique_ptr<File> file, const Header &header,
        const OpenOptions &options);

  Status load(const OpenOptions &options, ChainState &chain);
  Status run_check(CheckPolicy policy) REQUIRES(flush_mu_);
  Status grow(uint64_t new_size);
  Status write_header_locked() REQUIRES(flush_mu_);
  Status mark_needs_check_locked() REQUIRES(flush_mu_);
  Status mark_clean_locked() REQUIRES(flush_mu_);
  void probe_hole_punching();

  // The backing file, unless detach_backing() made the image standalone.
  // The object itself lives as long as the image: requests that took it
  // before the detach may still be reading it.
  BlockSource *below() const {
    return detached_.load(std::memory_order_acquire) ? nullptr : backing_.get();
  }
  // Copy-on-read after a read served [pos, pos+count) from the backing file;
  // a failure goes to on_copy_failure_ (once), never to the reader.
  void copy_after_read(uint64_t pos, uint64_t count, const uint8_t *data);
  // Fills `out` with what the backing file shows at [vpos, vpos+count),
  // taking the bytes of [known_pos, known_pos+known_len) from `known`.
  Status fill_from_below(uint8_t *out, uint64_t vpos, uint64_t count, const uint8_t *known,
                         uint64_t known_pos, uint64_t known_len, bool *base_failed);
  Status write_allocation(Allocation &a, const uint8_t *data, uint64_t pos, uint64_t count);
  // Copies what lay below [vpos, vpos+count) to `host`, a chunk at a time.
  Status copy_below(Run::Kind was, uint64_t vpos, uint64_t count, uint64_t host);
  // Whether the clusters being allocated may have shown anything but zeroes
  // at [vpos, vpos+count): what lay below them then.
  bool may_show_below(Run::Kind was, uint64_t vpos, uint64_t count) const;
  // Reads what the clusters being allocated showed at [vpos, vpos+count) into
  // `out`; false when that is all zeroes (nothing to copy).
  Result<bool> read_below(Run::Kind was, uint64_t vpos, uint64_t count, uint8_t *out);
  Status write_range(const uint8_t *data, uint64_t count, uint64_t pos);
  Status zero_data(uint64_t host, uint64_t count, ZeroFlags flags);
  // Zeroes a run that was unallocated; returns the bytes done, fewer than
  // `count` when a concurrent write allocated a cluster of it.
  Result<uint64_t> zero_unallocated(uint64_t pos, uint64_t count);
  // kNotSupported unless zeroing the range needs only metadata and punching.
  Status check_fast_zero(uint64_t pos, uint64_t count);
  // The failure every write and flush returns once a flush has failed.
  Status refuse_if_failed() const;
  // Enters that state (the first reason sticks); returns `why`, in context.
  Status fail(const Status &why, const char *doing);
  Status writeback_if_needed();
  // A flush without its final sync, to free the memory changes take
  // (image_write.cpp); Metadata calls it when it needs room.
  Status write_back_for_room();
  Status flush_locked() REQUIRES(flush_mu_);
  Status write_back_locked(bool durable) REQUIRES(flush_mu_);
  Status error_context(const Status &s) const;
  // kInvalidArgument unless [pos, pos+count) lies within the disk (callers
  // such as nbdkit check already; the engine does not rely on it).
  Status check_range(uint64_t pos, uint64_t count, const char *what) const;

  const std::string path_;
  std::unique_ptr<File> file_;
  const bool read_only_;
  Geometry geo_;
  std::unique_ptr<BlockSource> backing_;
  std::unique_ptr<Metadata> meta_;
  bool can_punch_ = false;
  uint64_t requested_cache_bytes_ = 0;  // OpenOptions::cache_bytes
  uint64_t writeback_threshold_ = 0;  // Metadata::changes_bytes() that force a write-back
  std::optional<CheckReport> check_report_;
  const Header header_at_open_;

  Mutex flush_mu_;
  Header header_ GUARDED_BY(flush_mu_);
  bool needs_check_on_disk_ GUARDED_BY(flush_mu_) = false;
  // False when the image came in dirty and was not checked: we must then
  // leave NEED_CHECK set for a later check.
  bool may_mark_clean_ GUARDED_BY(flush_mu_) = true;
  bool closed_ GUARDED_BY(flush_mu_) = false;
  uint64_t synced_ GUARDED_BY(flush_mu_) = 0;  // written_ at the last sync
  // The end of the furthest table or cluster named by an entry a flush of
  // this open wrote; close() must leave the file that long.
  uint64_t written_reach_ GUARDED_BY(flush_mu_) = 0;
  // A write-back wrote metadata that no sync has covered yet.
  bool metadata_unsynced_ GUARDED_BY(flush_mu_) = false;

  const bool copy_on_read_;
  const std::function<void(const Status &)> on_copy_failure_;
  std::atomic<bool> copy_failed_{false};  // on_copy_failure_ was called
  std::atomic<bool> detached_{false};     // set once, under flush_mu_
  std::atomic<uint64_t> requests_{0};

  // File changes by writes, zeroes and trims, counted when they complete.
  std::atomic<uint64_t> written_{0};

  // Set once, when a flush failed; then failure_ is what writes return.
  std::atomic<bool> failed_{false};
  mutable Mutex failure_mu_;
  Status failure_ GUARDED_BY(failure_mu_);
};

}  // namespace qed
