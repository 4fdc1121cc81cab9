// nbdkit-qed-plugin: serves a QED image over NBD. Each callback is a thin
// adapter onto qed::Image; networking, TLS and threads are nbdkit's.
//
// One Image serves every connection. It is opened read-only in .get_ready (so
// a bad image stops nbdkit at start-up with a clear message) and reopened
// read-write by the first connection that may write (.open tells us whether
// nbdkit runs with -r); if that reopen fails, the next connection tries again. Image is thread-safe, hence THREAD_MODEL PARALLEL and
// can_multi_conn: flush covers every connection's writes.
#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include <algorithm>
#include <cstdio>
#include <memory>

#include "common/budget_log.h"
#include "common/check_log.h"
#include "plugin/config.h"
#include "lib/create.h"
#include "common/export_size.h"
#include "lib/image.h"
#include "common/nbdkit_errors.h"
#include "common/nbdkit_extents.h"
#include "nbd/nbd_store.h"
#include "common/printable.h"
#include "plugin/stream_task.h"
#include "lib/thread_annotations.h"

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

namespace qed_plugin {
namespace {

using qed_nbdkit::guarded;
using qed_nbdkit::log_check;
using qed_nbdkit::report;

// served_mu guards `served` and `served_writable`; connections keep their own
// reference to the Image they opened.
qed::Mutex served_mu;
std::shared_ptr<qed::Image> served GUARDED_BY(served_mu);
bool served_writable GUARDED_BY(served_mu) = false;

struct Handle {
  std::shared_ptr<qed::Image> image;
};

qed::Image &image_of(void *handle) { return *static_cast<Handle *>(handle)->image; }

// Where backing files are opened: local files through the engine's POSIX
// store; NBD URIs through libnbd with allow-backing=network, else refused
// with a message naming the key (the engine adds the image and the URI).
// Each open gets a store of its own: the store bounds its chain's connections.
qed::BackingStores backing_stores() {
  const Config &c = config();
  qed::BackingStores stores;
  stores.local = std::make_shared<qed::PosixBackingStore>(lock_settings());
  if (c.allow_network_backing) {
    qed_nbd::NbdOptions nbd;
    nbd.connections = c.backing_connections;
    nbd.allow_this_host_hint = " (allow-local-exports=true allows it)";
    nbd.connections_hint = "; backing-connections=" + std::to_string(c.backing_connections);
    stores.network = std::make_shared<qed_nbd::NbdStore>(nbd, c.allow_local_exports);
  } else {
    stores.network = std::make_shared<qed::RefusingBackingStore>(
        "network backing files are refused unless allowed with allow-backing=network");
  }
  return stores;
}

// stream=true: started in .after_fork, stopped in .cleanup.
StreamTask stream_task;

qed::OpenOptions open_options(bool read_only) {
  const Config &c = config();
  qed::OpenOptions o;
  o.read_only = read_only;
  o.cache_bytes = c.cache_bytes;
  o.allow_backing = c.allow_backing;
  o.backing_stores = backing_stores();
  o.grow_to = read_only || c.create ? 0 : c.size;
  o.check = c.check;
  o.locking = lock_settings();
  o.lock_as_writer = !c.read_only;
  o.copy_on_read = c.copy_on_read;
  o.on_copy_failure = [](const qed::Status &s) {
    // Once per open: the reads go on, served from the backing file.
    nbdkit_error("%s (the read succeeded; later copies may fail too, this is logged once)",
                 qed_nbdkit::printable(s.message()).c_str());
  };
  return o;
}

int open_served(bool read_only) REQUIRES(served_mu) {
  auto image = qed::Image::open(config().file, open_options(read_only));
  if (!image)
    return report(image.status());
  served = std::move(*image);
  served_writable = !read_only;
  log_check(*served);
  qed_nbdkit::log_cache_budgets(*served, "cache-size");
  return 0;
}

// A size= that cannot be honoured stops nbdkit at start-up, rather than
// failing the first client that may write.
int check_grow(const qed::Image &image) {
  const Config &c = config();
  if (c.create || c.size == 0)
    return 0;
  return report(image.check_grow(c.size));
}

int qed_get_ready() {
  return guarded([] {
    const Config &c = config();
    if (c.create) {
      qed::CreateOptions o = c.create_options;
      o.backing_stores = backing_stores();
      o.locking = lock_settings();
      if (qed::Status s = qed::create_image(c.file, o); !s.is_ok())
        return report(s);
    }
    qed::MutexLock lock(served_mu);
    // Copy-on-read and the stream write from the start: open read-write now
    // (config_complete refused them with -r).
    if (open_served(!(c.copy_on_read || c.stream)) == -1)
      return -1;
    if (report(qed_nbdkit::check_export_size(*served)) == -1)
      return -1;
    return check_grow(*served);
  });
}

// Threads do not survive nbdkit's fork into the background: the stream
// starts here.
int qed_after_fork() {
  return guarded([] {
    const Config &c = config();
    if (!c.stream)
      return 0;
    qed::MutexLock lock(served_mu);
    if (!served || !served_writable) {
      nbdkit_error("%s: stream=true: the image is not open read-write", c.file.c_str());
      return -1;
    }
    stream_task.start(served, c.stream_rate);
    return 0;
  });
}

void qed_cleanup() {
  guarded([] {
    stream_task.stop();  // before the close: it writes into the image
    qed::MutexLock lock(served_mu);
    if (served && served_writable)
      report(served->close());
    served.reset();
    return 0;
  });
}

// A client that may write needs the read-write instance. When opening it
// failed (the NBD server of a backing file was down, say), nothing is served
// and the next client tries again: one failure must not outlive its cause.
void *qed_open(int readonly) {
  Handle *h = nullptr;
  guarded([&] {
    qed::MutexLock lock(served_mu);
    if (!served || (!readonly && !served_writable)) {
      // Drop the read-only instance first: the file must have one owner, and
      // its locks would refuse ours. Another process that locks the image in
      // the moment between is refused by ours or refuses us (see file_lock.h).
      // A failed open leaves nothing served: the next client tries again.
      served.reset();
      served_writable = false;
      if (open_served(readonly) == -1)
        return -1;
    }
    h = new Handle{served};
    return 0;
  });
  return h;
}

void qed_close(void *handle) { delete static_cast<Handle *>(handle); }

int64_t qed_get_size(void *handle) {
  return int64_t(image_of(handle).size());
}

int qed_block_size(void *handle, uint32_t *minimum, uint32_t *preferred, uint32_t *maximum) {
  const uint64_t cs = image_of(handle).geometry().cluster_size();
  *minimum = 1;  // any byte range works; we do read-modify-write ourselves
  *preferred = uint32_t(std::min<uint64_t>(cs, 32u << 20));
  *maximum = 0xffffffff;
  return 0;
}

// It names the backing chain as the images name it: printable() for clients.
const char *qed_export_description(void *handle) {
  const char *d = nullptr;
  guarded([&] {
    d = nbdkit_strdup_intern(qed_nbdkit::printable(image_of(handle).description()).c_str());
    return 0;
  });
  return d;
}

int qed_can_write(void *handle) { return !image_of(handle).read_only(); }
int qed_can_flush(void *) { return 1; }
int qed_can_trim(void *) { return 1; }
int qed_can_zero(void *) { return 1; }
int qed_can_fast_zero(void *) { return 1; }
int qed_can_extents(void *) { return 1; }
int qed_can_fua(void *) { return NBDKIT_FUA_NATIVE; }
int qed_can_multi_conn(void *) { return 1; }

int qed_pread(void *handle, void *buf, uint32_t count, uint64_t offset, uint32_t) {
  return guarded([&] { return report(image_of(handle).read(buf, count, offset)); });
}

int qed_pwrite(void *handle, const void *buf, uint32_t count, uint64_t offset,
               uint32_t flags) {
  return guarded([&] {
    return report(image_of(handle).write(buf, count, offset, flags & NBDKIT_FLAG_FUA));
  });
}

int qed_flush(void *handle, uint32_t) {
  return guarded([&] { return report(image_of(handle).flush()); });
}

int qed_trim(void *handle, uint32_t count, uint64_t offset, uint32_t flags) {
  return guarded([&] {
    return report(image_of(handle).trim(offset, count, flags & NBDKIT_FLAG_FUA));
  });
}

int qed_zero(void *handle, uint32_t count, uint64_t offset, uint32_t flags) {
  return guarded([&] {
    qed::ZeroFlags z;
    z.may_trim = flags & NBDKIT_FLAG_MAY_TRIM;
    z.fua = flags & NBDKIT_FLAG_FUA;
    z.fast = flags & NBDKIT_FLAG_FAST_ZERO;
    qed::Status s = image_of(handle).zero(offset, count, z);
    if (z.fast && s.code() == qed::Status::Code::kNotSupported) {
      nbdkit_set_error(ENOTSUP);  // expected, not worth a log line
      return -1;
    }
    return report(s);
  });
}

int qed_extents(void *handle, uint32_t count, uint64_t offset, uint32_t flags,
                struct nbdkit_extents *extents) {
  return guarded([&] {
    return report(qed_nbdkit::add_extents(image_of(handle), count, offset,
                                          flags & NBDKIT_FLAG_REQ_ONE, extents));
  });
}

void qed_dump_plugin() {
  std::printf("qed_version=%s\n", PACKAGE_VERSION);
  std::printf("qed_keys=%s\n", config_key_list().c_str());
  std::printf("qed_max_cluster_size=%u\n", qed::kMaxClusterSize);
  std::printf("qed_table_sizes=1-16\n");
  std::printf("qed_backing_formats=raw,qed\n");
  std::printf("qed_backing_uri_schemes=nbd,nbds,nbd+unix,nbds+unix,nbd+vsock,nbds+vsock,nbd+tcp\n");
  std::printf("qed_create=yes\n");
  std::printf("qed_parallel_allocation=yes\n");
}

int qed_config(const char *key, const char *value) {
  return guarded([&] { return config_key(key, value); });
}

int qed_config_complete() {
  return guarded([] { return config_complete(); });
}

nbdkit_plugin create_plugin() {
  nbdkit_plugin p = nbdkit_plugin();
  p.name = "qed";
  p.longname = "QEMU Enhanced Disk (QED) plugin";
  p.version = PACKAGE_VERSION;
  p.description = "Serve a QED disk image, read-write, with backing files.";
  p.config = qed_config;
  p.config_complete = qed_config_complete;
  p.config_help = config_help();
  p.magic_config_key = "file";
  p.get_ready = qed_get_ready;
  p.after_fork = qed_after_fork;
  p.cleanup = qed_cleanup;
  p.dump_plugin = qed_dump_plugin;
  p.open = qed_open;
  p.close = qed_close;
  p.get_size = qed_get_size;
  p.export_description = qed_export_description;
  p.block_size = qed_block_size;
  p.can_write = qed_can_write;
  p.can_flush = qed_can_flush;
  p.can_trim = qed_can_trim;
  p.can_zero = qed_can_zero;
  p.can_fast_zero = qed_can_fast_zero;
  p.can_extents = qed_can_extents;
  p.can_fua = qed_can_fua;
  p.can_multi_conn = qed_can_multi_conn;
  p.pread = qed_pread;
  p.pwrite = qed_pwrite;
  p.flush = qed_flush;
  p.trim = qed_trim;
  p.zero = qed_zero;
  p.extents = qed_extents;
  return p;
}

}  // namespace
}  // namespace qed_plugin

static struct nbdkit_plugin plugin = qed_plugin::create_plugin();
NBDKIT_REGISTER_PLUGIN(plugin)
