// Opening and closing an image: header, geometry, backing chain, L1 table,
// the NEED_CHECK flag and growing.
#include "lib/image.h"

#include <algorithm>
#include <iterator>

#include "lib/metadata.h"
#include "lib/table.h"

namespace qed {

Image::Image(std::string path, std::unique_ptr<File> file, const Header &header,
             const OpenOptions &options)
    : path_(std::move(path)),
      file_(std::move(file)),
      read_only_(options.read_only),
      geo_(header),
      header_at_open_(header),
      header_(header),
      needs_check_on_disk_(header.needs_check()),
      copy_on_read_(options.copy_on_read && !options.read_only),
      on_copy_failure_(options.on_copy_failure) {}

Image::~Image() = default;

Status Image::error_context(const Status &s) const {
  // File-level messages already start with the path.
  if (s.message().rfind(path_, 0) == 0)
    return s;
  return s.with_context(path_);
}

Status Image::check_range(uint64_t pos, uint64_t count, const char *what) const {
  const uint64_t size = geo_.image_size();
  if (pos <= size && count <= size - pos)
    return Status::ok();
  return Status::invalid_argument(path_ + ": " + what + " of " + std::to_string(count) +
                                  " bytes at offset " + std::to_string(pos) +
                                  " is outside the disk (" + std::to_string(size) + " bytes)");
}

Result<std::unique_ptr<Image>> Image::open(const std::string &path, const OpenOptions &options) {
  ChainState chain;
  return open_in_chain(path, options, chain);
}

Result<std::unique_ptr<Image>> Image::open_in_chain(const std::string &path,
                                                    const OpenOptions &options,
                                                    ChainState &chain) {
  auto identity = posix_identity(path);
  if (!identity)
    return identity.status();
  QED_RETURN_IF_ERROR(enter_chain(chain, *identity, path));
  const bool writer = !options.read_only || options.lock_as_writer;
  auto file = open_posix_file(path, options.read_only ? OpenMode::kReadOnly : OpenMode::kReadWrite,
                              writer ? LockAccess::kWrite : LockAccess::kRead, options.locking);
  if (!file)
    return file.status();
  return open_file(path, std::move(*file), options, chain);
}

Result<std::unique_ptr<Image>> Image::open_file(const std::string &path,
                                                std::unique_ptr<File> file,
                                                const OpenOptions &options, ChainState &chain) {
  auto size = file->size();
  if (!size)
    return size.status();
  if (*size < kHeaderBytes)
    return Status::corruption(path + ": file is too small to be a QED image (" +
                              std::to_string(*size) + " bytes)");
  HeaderBytes bytes;
  QED_RETURN_IF_ERROR(file->pread(bytes.data(), bytes.size(), 0));
  const Header header = decode_header(bytes);
  if (Status s = validate_header(header, *size); !s.is_ok())
    return s.with_context(path);
  std::unique_ptr<Image> image(new Image(path, std::move(file), header, options));
  QED_RETURN_IF_ERROR(image->load(options, chain));
  return image;
}

Status Image::load(const OpenOptions &options, ChainState &chain) {
  {
    MutexLock lock(flush_mu_);
    if (!read_only_ && (header_.autoclear_features & ~kKnownAutoclearFeatures)) {
      header_.autoclear_features &= kKnownAutoclearFeatures;
      QED_RETURN_IF_ERROR(write_header_locked());
      QED_RETURN_IF_ERROR(file_->sync());
    }
    QED_RETURN_IF_ERROR(run_check(options.check));
  }
  // What follows reads the header as it is now; only grow() changes it, and
  // not the fields read after it.
  const Header loaded = header();

  if (options.backing_override && !loaded.has_backing_file())
    return Status::invalid_argument(path_ + ": the image has no backing file, so " +
                                    options.backing_override->path +
                                    " cannot stand in for one");
  if (loaded.has_backing_file()) {
    if (!options.allow_backing)
      return Status::not_supported(path_ + ": the image has a backing file and backing files "
                                           "are disabled (allow-backing=false)");
    std::string name(loaded.backing_filename_size, '\0');
    QED_RETURN_IF_ERROR(file_->pread(name.data(), name.size(), loaded.backing_filename_offset));
    if (name.find('\0') != std::string::npos)
      return Status::corruption(path_ + ": backing file name contains a NUL byte");
    auto backing = options.backing_override
                       ? open_backing_override(path_, name, loaded.backing_is_raw(),
                                               *options.backing_override, options, chain)
                       : open_backing(path_, name, loaded.backing_is_raw(), options, chain);
    if (!backing)
      return backing.status();
    backing_ = std::move(*backing);
  }

  // Growing needs the backing file's size, and comes before the tables are
  // read, since the geometry changes.
  if (options.grow_to && options.grow_to != loaded.image_size) {
    QED_RETURN_IF_ERROR(check_grow(options.grow_to));
    if (read_only_)
      return Status::read_only(path_ + ": cannot grow an image opened read-only");
    QED_RETURN_IF_ERROR(grow(options.grow_to));
  }

  auto file_size = file_->size();
  if (!file_size)
    return file_size.status();
  std::vector<uint64_t> l1(geo_.l1_entries_used());
  if (Status s = read_table_entries(*file_, loaded.l1_table_offset, l1); !s.is_ok())
    return error_context(s.with_context("reading the L1 table"));

  // One budget for the whole chain (backing.h): a QED backing file took its
  // share of ours.
  const uint64_t cache_bytes =
      dynamic_cast<const Image *>(backing_.get())
          ? options.cache_bytes - backing_cache_share(options.cache_bytes)
          : options.cache_bytes;
  MetadataConfig config;
  config.geometry = geo_;
  config.l1_offset = loaded.l1_table_offset;
  config.file_size = *file_size;
  config.cache_bytes = cache_bytes;
  config.writable = !read_only_;
  config.lenient = read_only_ && loaded.needs_check();
  // When changes take the room a table needs, the request that needs it
  // writes them back (Metadata::make_room; a flush without its final sync).
  meta_ = std::make_unique<Metadata>(*file_, config, std::move(l1),
                                     [this] { return write_back_for_room(); });
  // And a writer whose changes pass a quarter of the budget writes them back
  // after its request, so that most of the cache keeps serving reads.
  writeback_threshold_ = meta_->cache_budget() / 4;
  requested_cache_bytes_ = cache_bytes;  // this image's share of the chain's budget
  if (!read_only_)
    probe_hole_punching();
  return Status::ok();
}

Status Image::run_check(CheckPolicy policy) {
  const bool dirty = header_.needs_check();
  may_mark_clean_ = !dirty;
  const bool wanted = policy == CheckPolicy::kRepair || policy == CheckPolicy::kReport ||
                      (policy == CheckPolicy::kAuto && dirty && !read_only_);
  if (!wanted)
    return Status::ok();
  const bool repair = !read_only_ && policy != CheckPolicy::kReport;
  auto report = check_image(*file_, header_, repair ? CheckMode::kRepair : CheckMode::kReport);
  if (!report)
    return error_context(report.status().with_context("checking the image"));
  check_report_ = std::move(*report);
  if (!repair)
    return Status::ok();
  // Every problem the check finds, it repairs: the image is consistent now.
  may_mark_clean_ = true;
  return dirty ? mark_clean_locked() : Status::ok();
}

void Image::probe_hole_punching() {
  // Punching past the end of the file changes nothing, and tells us whether
  // the file system can do it at all.
  auto size = file_->size();
  can_punch_ = size && file_->punch_hole(*size + geo_.cluster_size(), 4096).is_ok();
}

Status Image::check_grow(uint64_t new_size) const {
  const uint64_t old = geo_.image_size();
  const uint64_t rounded = (new_size + 511) / 512 * 512;
  if (rounded < old)
    return Status::invalid_argument(path_ + ": cannot shrink the image from " +
                                    std::to_string(old) + " to " + std::to_string(new_size) +
                                    " bytes; shrinking is not supported");
  const uint64_t max = max_image_size(header_at_open_.cluster_size, header_at_open_.table_size);
  if (rounded > max)
    return Status::invalid_argument(
        path_ + ": cannot grow to " + std::to_string(new_size) +
        " bytes: the largest size for cluster size " +
        std::to_string(header_at_open_.cluster_size) + " and table size " +
        std::to_string(header_at_open_.table_size) + " is " + std::to_string(max) + " bytes");
  const BlockSource *b = below();
  if (rounded > old && b && b->size() > old)
    return Status::invalid_argument(
        path_ + ": cannot grow from " + std::to_string(old) + " to " + std::to_string(rounded) +
        " bytes: the backing file (" + b->description() + ") is " + std::to_string(b->size()) +
        " bytes, larger than the image, so the new space would show its data instead of "
        "zeroes");
  return Status::ok();
}

Status Image::grow(uint64_t new_size) {
  MutexLock lock(flush_mu_);
  new_size = (new_size + 511) / 512 * 512;
  const uint64_t old = header_.image_size;
  header_.image_size = new_size;
  Status s = write_header_locked();
  if (s.is_ok())
    s = file_->sync();
  if (!s.is_ok()) {
    header_.image_size = old;
    return error_context(s);
  }
  geo_ = Geometry(header_);
  return Status::ok();
}

namespace {

std::string bytes_for_people(uint64_t n) {
  static const char *const kUnits[] = {"bytes", "KiB", "MiB", "GiB"};
  unsigned u = 0;
  while (u + 1 < std::size(kUnits) && n >= 1024 && n % 1024 == 0) {
    n /= 1024;
    u++;
  }
  return std::to_string(n) + " " + kUnits[u];
}

}  // namespace

std::string Image::description() const {
  std::string d = "qed " + path_ + " (cluster size " + bytes_for_people(geo_.cluster_size()) +
                  ", table size " + std::to_string(geo_.table_size_clusters()) + ")";
  if (const BlockSource *b = below())
    d += ", backing file: " + b->description();
  else if (detached())
    d += ", standalone: its backing file was streamed in and detached";
  return d;
}

std::vector<Image::CacheBudget> Image::cache_budgets() const {
  std::vector<CacheBudget> out;
  for (const Image *i = this; i; i = dynamic_cast<const Image *>(i->backing_.get()))
    out.push_back({i->path_, i->requested_cache_bytes_, i->meta_->cache_budget(),
                   L2Cache::charge_for(i->geo_.l2_entries_used(0))});
  return out;
}

Image::CacheUse Image::cache_use() const {
  const Metadata::PoolUse pool = meta_->pool_use();
  return {meta_->cache_bytes(), pool.buffers * pool.buffer_bytes};
}

Header Image::header() {
  MutexLock lock(flush_mu_);
  return header_;
}

Status Image::write_header_locked() {
  const HeaderBytes bytes = encode_header(header_);
  // Only the 64 header bytes: whatever follows in the header cluster (the
  // backing file name) stays as it is.
  return file_->pwrite(bytes.data(), bytes.size(), 0);
}

Status Image::mark_needs_check_locked() {
  if (needs_check_on_disk_)
    return Status::ok();
  header_.features |= kFeatureNeedCheck;
  Status s = write_header_locked();
  if (!s.is_ok()) {
    header_.features &= ~kFeatureNeedCheck;
    return s;
  }
  needs_check_on_disk_ = true;
  return Status::ok();
}

Status Image::close() {
  MutexLock lock(flush_mu_);
  if (closed_ || read_only_)
    return Status::ok();
  // After a failed flush nothing more is written: NEED_CHECK stays, and the
  // next open repairs what the failure left.
  QED_RETURN_IF_ERROR(flush_locked());
  // Leave no unused tail: the headroom flushes reserved, and clusters given
  // back by failed allocations.
  auto size = file_->size();
  if (!size)
    return error_context(size.status());
  const uint64_t end = meta_->file_end();
  if (*size > end) {
    QED_RETURN_IF_ERROR(error_context(file_->truncate(end)));
    QED_RETURN_IF_ERROR(error_context(file_->sync()));
  }
  // A file short of what the entries written since open name was cut behind
  // the engine's back (or a File said it grew and did not): the next open
  // would drop those entries, and their data. Grow it (what lay past the end
  // reads as zeroes either way), and leave NEED_CHECK set for the next open's
  // check. (Shorter than the clusters reserved is fine: a file that did not
  // end on a cluster boundary at open, an allocation that never wrote.)
  const bool short_file = *size < written_reach_;
  if (short_file) {
    QED_RETURN_IF_ERROR(error_context(mark_needs_check_locked()));
    QED_RETURN_IF_ERROR(error_context(file_->extend_to(written_reach_)));
    QED_RETURN_IF_ERROR(error_context(file_->sync()));
    auto grown = file_->size();
    if (!grown)
      return error_context(grown.status());
    if (*grown < written_reach_)
      return Status::io_error(path_ + ": the file ends at " + std::to_string(*grown) +
                                  " bytes, short of the tables and clusters its entries name "
                                  "(up to " +
                                  std::to_string(written_reach_) +
                                  " bytes), and could not be grown; NEED_CHECK stays set",
                              EIO);
  }
  // Clusters of failed allocations that something after them kept from going
  // back: only the check can give them back, so the next open should run it.
  if (!short_file && needs_check_on_disk_ && may_mark_clean_ && !meta_->has_leaked_clusters())
    QED_RETURN_IF_ERROR(mark_clean_locked());
  closed_ = true;  // only now: a failed close can be retried
  return Status::ok();
}

Status Image::mark_clean_locked() {
  header_.features &= ~kFeatureNeedCheck;
  QED_RETURN_IF_ERROR(write_header_locked());
  QED_RETURN_IF_ERROR(file_->sync());
  needs_check_on_disk_ = false;
  return Status::ok();
}

}  // namespace qed
