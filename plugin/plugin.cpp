// nbdkit-qed-plugin: serves a QED image over NBD. Each callback is a thin
// adapter onto qed::Image; networking, TLS and threads are nbdkit's.
//
// One Image serves every connection. It is opened read-only in .get_ready (so
// a bad image stops nbdkit at start-up with a clear message) and reopened
// read-write by the first connection that may write (.open tells us whether
// nbdkit runs with -r). Image is thread-safe, hence THREAD_MODEL PARALLEL and
// can_multi_conn: flush covers every connection's writes.
#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include <cstdarg>
#include <cstdio>
#include <memory>
#include <mutex>

#include "config.h"
#include "create.h"
#include "errors.h"
#include "image.h"
#include "nbd_store.h"

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

namespace qed_plugin {
namespace {

// served_mu guards `served` and `served_writable`; connections keep their own
// reference to the Image they opened.
std::mutex served_mu;
std::shared_ptr<qed::Image> served;
bool served_writable = false;

// A line of information for the log. nbdkit_debug needs -v, and nbdkit has no
// informational level of its own, so this goes to stderr in nbdkit's format.
__attribute__((format(printf, 1, 2))) void log_info(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::fprintf(stderr, "nbdkit: qed: ");
  std::vfprintf(stderr, fmt, ap);
  std::fprintf(stderr, "\n");
  va_end(ap);
}

struct Handle {
  std::shared_ptr<qed::Image> image;
};

qed::Image &image_of(void *handle) { return *static_cast<Handle *>(handle)->image; }

// Where backing files are opened: local files through the engine's POSIX
// store; NBD URIs through libnbd with allow-backing=network, else refused
// with a message naming the key (the engine adds the image and the URI).
qed::BackingStores backing_stores() {
  const Config &c = config();
  qed::BackingStores stores;
  if (c.allow_network_backing) {
    qed_nbd::NbdOptions nbd;
    nbd.connections = c.backing_connections;
    stores.network = std::make_shared<qed_nbd::NbdStore>(nbd);
  } else {
    stores.network = std::make_shared<qed::RefusingBackingStore>(
        "network backing files are refused unless allowed with allow-backing=network");
  }
  return stores;
}

qed::OpenOptions open_options(bool read_only) {
  const Config &c = config();
  qed::OpenOptions o;
  o.read_only = read_only;
  o.cache_bytes = c.cache_bytes;
  o.allow_backing = c.allow_backing;
  o.backing_stores = backing_stores();
  o.grow_to = read_only || c.create ? 0 : c.size;
  o.check = c.check;
  return o;
}

// The check's findings go to nbdkit's log, each problem with -v. Leaks are
// what a crash normally leaves (space reserved for writes that no entry
// reached yet), so giving them back is news, not an error; anything else the
// check found is an error.
void log_check(const qed::Image &image) {
  const auto &report = image.check_report();
  if (!report)
    return;
  for (const std::string &line : report->problems)
    nbdkit_debug("%s: check: %s", image.path().c_str(), line.c_str());
  if (report->problems.empty())
    nbdkit_debug("%s: check: clean: %s", image.path().c_str(), report->summary().c_str());
  else if (report->consistent())
    log_info("%s: check: %s", image.path().c_str(), report->summary().c_str());
  else
    nbdkit_error("%s: check found problems: %s", image.path().c_str(),
                 report->summary().c_str());
}

int open_served(bool read_only) {
  auto image = qed::Image::open(config().file, open_options(read_only));
  if (!image)
    return report(image.status());
  served = std::move(*image);
  served_writable = !read_only;
  log_check(*served);
  return 0;
}

// A size= that cannot be honoured stops nbdkit at start-up, rather than
// failing the first client that may write.
int check_grow(const qed::Image &image) {
  const Config &c = config();
  if (c.create || c.size == 0 || c.size == image.size())
    return 0;
  const qed::Header &h = image.header_at_open();
  const uint64_t max = qed::max_image_size(h.cluster_size, h.table_size);
  if (c.size < image.size())
    return report(qed::Status::invalid_argument(
        image.path() + ": size=" + std::to_string(c.size) + " is smaller than the image (" +
        std::to_string(image.size()) + " bytes); shrinking is not supported"));
  if (c.size > max)
    return report(qed::Status::invalid_argument(
        image.path() + ": cannot grow to " + std::to_string(c.size) +
        " bytes: the largest size for cluster size " + std::to_string(h.cluster_size) +
        " and table size " + std::to_string(h.table_size) + " is " + std::to_string(max) +
        " bytes"));
  return 0;
}

int qed_get_ready() {
  return guarded([] {
    const Config &c = config();
    if (c.create) {
      qed::CreateOptions o = c.create_options;
      o.backing_stores = backing_stores();
      if (qed::Status s = qed::create_image(c.file, o); !s.is_ok())
        return report(s);
    }
    std::lock_guard lock(served_mu);
    if (open_served(true) == -1)
      return -1;
    return check_grow(*served);
  });
}

void qed_cleanup() {
  guarded([] {
    std::lock_guard lock(served_mu);
    if (served && served_writable)
      report(served->close());
    served.reset();
    return 0;
  });
}

void *qed_open(int readonly) {
  Handle *h = nullptr;
  guarded([&] {
    std::lock_guard lock(served_mu);
    if (!readonly && !served_writable) {
      if (!served)
        return report(qed::Status::io_error("image is not open", EIO));
      // Drop the read-only instance first: the file must have one owner.
      served.reset();
      if (open_served(false) == -1)
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

const char *qed_export_description(void *handle) {
  const std::string d = image_of(handle).description();
  return nbdkit_strdup_intern(d.c_str());
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
    const size_t max = (flags & NBDKIT_FLAG_REQ_ONE) ? 1 : 65536;
    auto list = image_of(handle).extents(offset, count, max);
    if (!list)
      return report(list.status());
    for (const qed::Extent &e : *list) {
      const uint32_t type = e.zero ? NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO : 0;
      if (nbdkit_add_extent(extents, e.offset, e.length, type) == -1)
        return -1;
    }
    return 0;
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
