// nbdkit-qed-filter: serves, read-only, a QED image that the layer below
// exports (a file, a URL, an SSH or NBD server, memory). Each callback is a
// thin adapter onto qed::Image; the image is read through NextFile, one more
// implementation of the engine's File.
//
// One Image serves every connection, on a context of the filter's own into the
// plugin: opened in .after_fork (or, if that failed, by the next .open that
// succeeds) and closed in .cleanup; served.h says why. Nothing is ever written
// below: the context is opened read-only and can_write is false;
// --filter=cow above this filter makes the export writable. The filter is
// parallel (Image is thread-safe); when the stack below is not, NextFile
// serialises the calls into it. Multi-conn is advertised when the layer below
// advertises it.
#include <nbdkit-filter.h>

#include <algorithm>
#include <memory>

#include "config.h"
#include "image.h"
#include "nbdkit_errors.h"
#include "nbdkit_extents.h"
#include "printable.h"
#include "served.h"

namespace qed_filter {
namespace {

using qed_nbdkit::guarded;
using qed_nbdkit::report;

// Set in .get_ready: the thread model nbdkit chose for the whole stack.
int stack_thread_model = NBDKIT_THREAD_MODEL_SERIALIZE_ALL_REQUESTS;

// Each connection's copy of the served state.
using Handle = Served;

qed::Image &image_of(void *handle) { return *static_cast<Handle *>(handle)->image; }

int qed_config(nbdkit_next_config *next, nbdkit_backend *nxdata, const char *key,
               const char *value) {
  return guarded([&] {
    bool ours;
    if (config_key(key, value, &ours) == -1)
      return -1;
    return ours ? 0 : next(nxdata, key, value);
  });
}

int qed_config_complete(nbdkit_next_config_complete *next, nbdkit_backend *nxdata) {
  return guarded([&] { return config_complete() == -1 ? -1 : next(nxdata); });
}

int qed_get_ready(int thread_model) {
  stack_thread_model = thread_model;
  return 0;
}

// A failure is logged and tried again by each .open (served.h says why).
int qed_after_fork(nbdkit_backend *backend) {
  guarded([&] {
    open_served(backend, stack_thread_model);
    return 0;
  });
  return 0;
}

void qed_cleanup(nbdkit_backend *) {
  guarded([] {
    close_served();
    return 0;
  });
}

// No context into the plugin per connection: the served one is enough.
void *qed_open(nbdkit_next_open *, nbdkit_context *context, int, const char *, int) {
  Handle *h = nullptr;
  guarded([&] {
    Served s = open_served(nbdkit_context_get_backend(context), stack_thread_model);
    if (!s.image)
      return -1;  // open_served reported why
    h = new Handle(std::move(s));
    return 0;
  });
  return h;
}

void qed_close(void *handle) { delete static_cast<Handle *>(handle); }

int64_t qed_get_size(nbdkit_next *, void *handle) { return int64_t(image_of(handle).size()); }

// It names the backing chain as the images name it: printable() for clients.
const char *qed_export_description(nbdkit_next *, void *handle) {
  const char *d = nullptr;
  guarded([&] {
    d = nbdkit_strdup_intern(qed_nbdkit::printable(image_of(handle).description()).c_str());
    return 0;
  });
  return d;
}

int qed_block_size(nbdkit_next *, void *handle, uint32_t *minimum, uint32_t *preferred,
                   uint32_t *maximum) {
  const uint64_t cs = image_of(handle).geometry().cluster_size();
  *minimum = 1;
  *preferred = uint32_t(std::min<uint64_t>(cs, 32u << 20));
  *maximum = 0xffffffff;
  return 0;
}

int qed_can_write(nbdkit_next *, void *) { return 0; }
int qed_can_flush(nbdkit_next *, void *) { return 1; }
int qed_is_rotational(nbdkit_next *, void *) { return 0; }
int qed_can_trim(nbdkit_next *, void *) { return 0; }
int qed_can_zero(nbdkit_next *, void *) { return NBDKIT_ZERO_NONE; }
int qed_can_fast_zero(nbdkit_next *, void *) { return 0; }
int qed_can_extents(nbdkit_next *, void *) { return 1; }
int qed_can_fua(nbdkit_next *, void *) { return NBDKIT_FUA_NONE; }
int qed_can_multi_conn(nbdkit_next *, void *handle) {
  return static_cast<Handle *>(handle)->multi_conn;
}
int qed_can_cache(nbdkit_next *, void *) { return NBDKIT_CACHE_NONE; }

int qed_pread(nbdkit_next *, void *handle, void *buf, uint32_t count, uint64_t offset,
              uint32_t, int *err) {
  return guarded(err, [&] { return report(image_of(handle).read(buf, count, offset), err); });
}

// nbdkit sends no writes to an export that is not writable; should one come
// through anyway (a filter above calling down), it is refused here.
int refuse_write(int *err) {
  return report(qed::Status::read_only("qed: the qed filter is read-only "
                                       "(put --filter=cow above it to write)"),
                err);
}

int qed_pwrite(nbdkit_next *, void *, const void *, uint32_t, uint64_t, uint32_t, int *err) {
  return refuse_write(err);
}

int qed_trim(nbdkit_next *, void *, uint32_t, uint64_t, uint32_t, int *err) {
  return refuse_write(err);
}

int qed_zero(nbdkit_next *, void *, uint32_t, uint64_t, uint32_t, int *err) {
  return refuse_write(err);
}

int qed_flush(nbdkit_next *, void *handle, uint32_t, int *err) {
  return guarded(err, [&] { return report(image_of(handle).flush(), err); });
}

int qed_extents(nbdkit_next *, void *handle, uint32_t count, uint64_t offset, uint32_t flags,
                struct nbdkit_extents *extents, int *err) {
  return guarded(err, [&] {
    return report(qed_nbdkit::add_extents(image_of(handle), count, offset,
                                          flags & NBDKIT_FLAG_REQ_ONE, extents),
                  err);
  });
}

// Advisory, and nbdkit sends none (can_cache is none); a filter above calling
// down gets a no-op.
int qed_cache(nbdkit_next *, void *, uint32_t, uint64_t, uint32_t, int *) { return 0; }

nbdkit_filter create_filter() {
  nbdkit_filter f = nbdkit_filter();
  f.name = "qed";
  f.longname = "nbdkit QEMU Enhanced Disk (QED) filter";
  f.config = qed_config;
  f.config_complete = qed_config_complete;
  f.config_help = config_help();
  f.get_ready = qed_get_ready;
  f.after_fork = qed_after_fork;
  f.cleanup = qed_cleanup;
  f.open = qed_open;
  f.close = qed_close;
  f.get_size = qed_get_size;
  f.export_description = qed_export_description;
  f.block_size = qed_block_size;
  f.can_write = qed_can_write;
  f.can_flush = qed_can_flush;
  f.is_rotational = qed_is_rotational;
  f.can_trim = qed_can_trim;
  f.can_zero = qed_can_zero;
  f.can_fast_zero = qed_can_fast_zero;
  f.can_extents = qed_can_extents;
  f.can_fua = qed_can_fua;
  f.can_multi_conn = qed_can_multi_conn;
  f.can_cache = qed_can_cache;
  f.pread = qed_pread;
  f.pwrite = qed_pwrite;
  f.flush = qed_flush;
  f.trim = qed_trim;
  f.zero = qed_zero;
  f.extents = qed_extents;
  f.cache = qed_cache;
  return f;
}

}  // namespace
}  // namespace qed_filter

static struct nbdkit_filter filter = qed_filter::create_filter();
NBDKIT_REGISTER_FILTER(filter)
