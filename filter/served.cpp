#include <nbdkit-filter.h>

#include "filter/served.h"

#include <string>

#include "common/budget_log.h"
#include "common/check_log.h"
#include "filter/config.h"
#include "common/export_size.h"
#include "lib/format.h"
#include "nbd/nbd_store.h"
#include "filter/next_file.h"
#include "common/nbdkit_errors.h"
#include "lib/thread_annotations.h"

namespace qed_filter {
namespace {

using qed_nbdkit::report;

// How messages name the image: the filter knows no file name, only the layer
// below it.
const char kImageName[] = "the plugin's export";

// The image, and the size of the layer below it was opened on (a later
// connection's context must have it too).
qed::Mutex mu;
std::shared_ptr<qed::Image> image GUARDED_BY(mu);
uint64_t below_size GUARDED_BY(mu) = 0;

// An image that names a backing file is refused unless the user named the
// base: the stored name is relative to nothing the filter knows (and, if
// absolute, points at whatever this machine has there). Invalid headers pass
// here: the engine reports them.
qed::Status refuse_unnamed_backing(qed::File &file) {
  if (config().backing)
    return qed::Status::ok();
  auto size = file.size();
  if (!size || *size < qed::kHeaderBytes)
    return qed::Status::ok();
  qed::HeaderBytes bytes;
  QED_RETURN_IF_ERROR(file.pread(bytes.data(), bytes.size(), 0));
  const qed::Header h = qed::decode_header(bytes);
  if (!h.has_backing_file() || !qed::validate_header(h, *size).is_ok())
    return qed::Status::ok();
  std::string name(h.backing_filename_size, '\0');
  QED_RETURN_IF_ERROR(file.pread(name.data(), name.size(), h.backing_filename_offset));
  return qed::Status::not_supported(
      std::string(kImageName)
          .append(": the image has backing file \"")
          .append(name)
          .append("\", which the qed filter cannot open by that name (it is relative to "
                  "nothing the filter knows): name the base with qed-backing=FILENAME"));
}

qed::OpenOptions open_options() {
  const Config &c = config();
  qed::OpenOptions o;
  o.read_only = true;
  o.cache_bytes = c.cache_bytes;
  o.allow_backing = c.backing.has_value();
  o.check = c.check;
  o.backing_override = c.backing;
  // No image locks: the filter writes nothing, and the plugin below owns the
  // file (it is the one to lock it, if it is a file at all).
  o.locking.policy = qed::Locking::kOff;
  o.backing_stores.local =
      std::make_shared<qed::PosixBackingStore>(qed::LockSettings{qed::Locking::kOff, {}, {}});
  if (c.backing && qed::is_uri(c.backing->path)) {
    qed_nbd::NbdOptions nbd;
    nbd.allow_this_host_hint = " (qed-allow-local-exports=true allows it)";
    o.backing_stores.network = std::make_shared<qed_nbd::NbdStore>(nbd, c.allow_local_exports);
  }
  return o;
}

int open_image(nbdkit_next *next) REQUIRES(mu) {
  const int64_t below = next->get_size(next);
  if (below == -1)
    return -1;  // the layer below reported it
  uint32_t minimum = 0, preferred = 0, maximum = 0;
  if (next->block_size(next, &minimum, &preferred, &maximum) == -1)
    return -1;
  auto file = std::make_unique<NextFile>(kImageName, uint64_t(below),
                                         limits_from_block_size(minimum, maximum));
  if (int r = report(refuse_unnamed_backing(*file)); r == -1)
    return r;
  qed::ChainState chain;
  auto opened = qed::Image::open_file(kImageName, std::move(file), open_options(), chain);
  if (!opened)
    return report(opened.status());
  if (int r = report(qed_nbdkit::check_export_size(**opened)); r == -1)
    return r;
  image = std::move(*opened);
  below_size = uint64_t(below);
  qed_nbdkit::log_check(*image);
  qed_nbdkit::log_cache_budgets(*image, "qed-cache-size");
  return 0;
}

// A later connection's context must show the export the image was read from.
int check_same_size(nbdkit_next *next) REQUIRES(mu) {
  const int64_t below = next->get_size(next);
  if (below == -1)
    return -1;
  if (uint64_t(below) == below_size)
    return 0;
  return report(qed::Status::io_error(
      std::string(kImageName) + " changed size from " + std::to_string(below_size) + " to " +
          std::to_string(below) + " bytes since the qed filter opened the image: restart nbdkit",
      EIO));
}

}  // namespace

Served open_served(nbdkit_next *next) {
  const NextFile::Through through(next);
  qed::MutexLock lock(mu);
  const int r = image ? check_same_size(next) : open_image(next);
  if (r == -1)
    return Served();
  const int multi_conn = next->can_multi_conn(next);
  if (multi_conn == -1)
    return Served();
  return Served{image, multi_conn == 1};
}

void close_served() {
  qed::MutexLock lock(mu);
  image.reset();
}

}  // namespace qed_filter
