// nbdkit-qed-filter: serves, read-only, a QED image that the layer below
// exports (a file, a URL, an SSH or NBD server, memory). Each callback is a
// thin adapter onto qed::Image; the image is read through NextFile, one more
// implementation of the engine's File.
//
// One Image serves every connection, opened by the first connection's
// .prepare and closed in .cleanup; each connection reads it through its own
// read-only context into the plugin, which every callback that may reach the
// engine names first (NextFile::Through); served.h says why. Nothing is ever
// written below: the contexts are read-only and can_write is false;
// --filter=cow above this filter makes the export writable. The filter is
// parallel (Image is thread-safe); nbdkit applies the stack's thread model
// to the contexts below. Multi-conn is advertised when the layer below
// advertises it.
#include <nbdkit-filter.h>

#include <algorithm>
#include <memory>

#include "filter/config.h"
#include "lib/image.h"
#include "common/nbdkit_errors.h"
#include "common/nbdkit_extents.h"
#include "filter/next_file.h"
#include "common/printable.h"
#include "filter/served.h"

namespace qed_filter {
namespace {

using qed_nbdkit::guarded;
using qed_nbdkit::report;

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

void qed_cleanup(nbdkit_backend *) {
  guarded([] {
    close_served();
    return 0;
  });
}

// The plugin below, read-only, for this connection. Clients' export names are
// not passed down: every client sees the one image.
void *qed_open(nbdkit_next_open *next, nbdkit_context *context, int, const char *, int) {
  if (next(context, 1, "") == -1)
    return nullptr;
  Handle *h = nullptr;
  guarded([&] {
    h = new Handle;
    return 0;
  });
  return h;
}

// The image, through this connection's context (opened now if no connection
// opened it yet).
int qed_prepare(nbdkit_next *next, void *handle, int) {
  return guarded([&] {
    Served s = open_served(next);
    if (!s.image)
      return -1;  // open_served reported why
    *static_cast<Handle *>(handle) = std::move(s);
    return 0;
  });
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

int qed_pread(nbdkit_next *next, void *handle, void *buf, uint32_t count, uint64_t offset,
              uint32_t, int *err) {
  return guarded(err, [&] {
    const NextFile::Through through(next);
    return report(image_of(handle).read(buf, count, offset), err);
  });
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

int qed_flush(nbdkit_next *next, void *handle, uint32_t, int *err) {
  return guarded(err, [&] {
    const NextFile::Through through(next);
    return report(image_of(handle).flush(), err);
  });
}

int qed_extents(nbdkit_next *next, void *handle, uint32_t count, uint64_t offset,
                uint32_t flags, struct nbdkit_extents *extents, int *err) {
  return guarded(err, [&] {
    const NextFile::Through through(next);
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
  f.cleanup = qed_cleanup;
  f.open = qed_open;
  f.prepare = qed_prepare;
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
