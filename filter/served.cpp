#include <nbdkit-filter.h>

#include "served.h"

#include <mutex>
#include <string>

#include "check_log.h"
#include "config.h"
#include "export_size.h"
#include "format.h"
#include "nbd_store.h"
#include "next_file.h"
#include "nbdkit_errors.h"

namespace qed_filter {
namespace {

using qed_nbdkit::report;

// How messages name the image: the filter knows no file name, only the layer
// below it.
const char kImageName[] = "the plugin's export";

// A prepared context into the layer below; finalised and closed on
// destruction.
class NextContext {
public:
  NextContext() = default;
  NextContext(const NextContext &) = delete;
  NextContext &operator=(const NextContext &) = delete;
  ~NextContext() {
    if (next_ && prepared_)
      next_->finalize(next_);
    if (next_)
      nbdkit_next_context_close(next_);
  }

  int open(nbdkit_backend *backend) {
    next_ = nbdkit_next_context_open(backend, 1 /* read-only */, "", 1 /* shared */);
    if (!next_ || next_->prepare(next_) == -1) {
      nbdkit_error("%s: the qed filter cannot open it (see the plugin's error above)",
                   kImageName);
      return -1;
    }
    prepared_ = true;
    return 0;
  }
  nbdkit_next *get() const { return next_; }

private:
  nbdkit_next *next_ = nullptr;
  bool prepared_ = false;
};

// The image goes before the context it reads (close_served). The context is
// not a static object with a destructor: were nbdkit to exit without
// .cleanup, closing it at exit would call into a server being torn down.
std::mutex mu;
NextContext *context = nullptr;  // guarded by mu
Served state;                    // guarded by mu

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
  if (c.backing && qed::is_uri(c.backing->path)) {
    qed_nbd::NbdOptions nbd;
    nbd.allow_this_host_hint = " (qed-allow-local-exports=true allows it)";
    o.backing_stores.network = std::make_shared<qed_nbd::NbdStore>(nbd, c.allow_local_exports);
  }
  return o;
}

int open_image(nbdkit_next *next, int thread_model) {
  const int64_t size = next->get_size(next);
  if (size == -1)
    return -1;  // the layer below reported it
  uint32_t minimum = 0, preferred = 0, maximum = 0;
  if (next->block_size(next, &minimum, &preferred, &maximum) == -1)
    return -1;
  const int multi_conn = next->can_multi_conn(next);
  if (multi_conn == -1)
    return -1;
  // One context serves every connection: when nbdkit lets connections run
  // requests side by side but the stack does not take parallel requests on
  // one handle, the file serialises them itself.
  auto file = std::make_unique<NextFile>(kImageName, next, uint64_t(size),
                                         limits_from_block_size(minimum, maximum),
                                         thread_model < NBDKIT_THREAD_MODEL_PARALLEL);
  if (int r = report(refuse_unnamed_backing(*file)); r == -1)
    return r;
  qed::ChainState chain;
  auto image = qed::Image::open_file(kImageName, std::move(file), open_options(), chain);
  if (!image)
    return report(image.status());
  if (int r = report(qed_nbdkit::check_export_size(**image)); r == -1)
    return r;
  state.image = std::move(*image);
  state.multi_conn = multi_conn == 1;
  qed_nbdkit::log_check(*state.image);
  return 0;
}

void close_locked() {
  state = Served();
  delete context;
  context = nullptr;
}

}  // namespace

Served open_served(nbdkit_backend *backend, int thread_model) {
  std::lock_guard lock(mu);
  if (state.image)
    return state;
  context = new NextContext;
  if (context->open(backend) == -1 || open_image(context->get(), thread_model) == -1)
    close_locked();
  return state;
}

void close_served() {
  std::lock_guard lock(mu);
  close_locked();
}

}  // namespace qed_filter
