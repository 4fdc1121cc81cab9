#include "lib/create.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <utility>

#include "lib/backing.h"
#include "lib/backing_store.h"
#include "lib/file.h"
#include "lib/format.h"

namespace qed {

namespace {

Status check_options(const std::string &path, const CreateOptions &o, uint64_t size) {
  if (!is_valid_cluster_size(o.cluster_size))
    return Status::invalid_argument(path + ": cluster size " + std::to_string(o.cluster_size) +
                                    " is not a power of two between 4096 and 67108864");
  if (!is_valid_table_size(o.table_size))
    return Status::invalid_argument(path + ": table size " + std::to_string(o.table_size) +
                                    " is not a power of two between 1 and 16");
  const uint64_t max = max_image_size(o.cluster_size, o.table_size);
  if (size > max)
    return Status::invalid_argument(path + ": size " + std::to_string(size) +
                                    " is larger than the maximum of " + std::to_string(max) +
                                    " bytes for this cluster and table size");
  if (kHeaderBytes + o.backing_file.size() > o.cluster_size)
    return Status::invalid_argument(path + ": backing file name (" +
                                    std::to_string(o.backing_file.size()) +
                                    " bytes) does not fit in the header cluster");
  if (o.backing_format != "" && o.backing_format != "raw" && o.backing_format != "qed")
    return Status::invalid_argument(path + ": backing format '" + o.backing_format +
                                    "' is not raw or qed");
  return Status::ok();
}

// The backing file's format and size, by looking at it through the store
// that would open it (a URI through the network store, unresolved).
Status inspect_backing(const std::string &path, const CreateOptions &o, std::string &format,
                       uint64_t &size) {
  const bool uri = is_uri(o.backing_file);
  const std::string backing = uri ? o.backing_file : resolve_backing_path(path, o.backing_file);
  BackingStore *store = uri ? o.backing_stores.network.get() : o.backing_stores.local.get();
  if (!store)
    return Status::not_supported(path + ": backing file \"" + o.backing_file + "\": " +
                                 (uri ? "network" : "local") + " backing files are not enabled");
  auto file = store->open(backing, BackingPlace{});  // named by the user
  if (!file)
    return file.status().with_context(path + ": cannot open backing file \"" + o.backing_file +
                                      "\"");
  uint8_t head[512];
  QED_RETURN_IF_ERROR((*file)->pread(head, sizeof head, 0));
  const std::string probed = probe_format(head, sizeof head);
  if (format.empty())
    format = probed;
  if (format != "raw" && format != "qed")
    return Status::not_supported(path + ": backing file " + backing + " is in " + format +
                                 " format; only raw and qed are supported");
  if (format == "qed" && probed != "qed")
    return Status::invalid_argument(path + ": backing file " + backing + " is not a QED image");
  auto file_size = (*file)->size();
  if (!file_size)
    return file_size.status();
  size = *file_size;
  if (format == "qed") {
    HeaderBytes bytes;
    std::copy(head, head + kHeaderBytes, bytes.begin());
    size = decode_header(bytes).image_size;
  }
  return Status::ok();
}

Status write_new_image(File &file, const Header &h, const std::string &backing_name) {
  const HeaderBytes bytes = encode_header(h);
  QED_RETURN_IF_ERROR(file.pwrite(bytes.data(), bytes.size(), 0));
  if (!backing_name.empty())
    QED_RETURN_IF_ERROR(file.pwrite(backing_name.data(), backing_name.size(), kHeaderBytes));
  // The L1 table is all zeroes: extending the file is enough.
  QED_RETURN_IF_ERROR(file.truncate(uint64_t(1 + h.table_size) * h.cluster_size));
  return file.sync();
}

// Removes the file at `path`, if any, unless another process uses it: a VM
// would go on writing a file that is no longer there. It is held as a writer
// until it is gone, so nobody starts using it in between.
Status remove_unused(const std::string &path, const LockSettings &locking) {
  std::unique_ptr<File> held;
  if (locking.policy != Locking::kOff) {
    auto old = open_posix_file(path, OpenMode::kReadOnly, LockAccess::kWrite, locking);
    if (old)
      held = std::move(*old);
    else if (old.status().errno_value() != ENOENT)
      return old.status();
  }
  if (::unlink(path.c_str()) < 0 && errno != ENOENT)
    return Status::io_error(path + ": cannot remove the existing file: " + errno_text(errno), errno);
  return Status::ok();
}

}  // namespace

Status create_image(const std::string &path, const CreateOptions &o) {
  uint64_t size = o.size;
  std::string format = o.backing_format;
  if (!o.backing_file.empty()) {
    uint64_t backing_size = 0;
    QED_RETURN_IF_ERROR(inspect_backing(path, o, format, backing_size));
    if (size == 0)
      size = backing_size;
  }
  size = (size + 511) / 512 * 512;
  QED_RETURN_IF_ERROR(check_options(path, o, size));

  if (o.overwrite)
    QED_RETURN_IF_ERROR(remove_unused(path, o.locking));
  auto file = open_posix_file(path, OpenMode::kCreate, LockAccess::kWrite, o.locking);
  if (!file) {
    if (file.status().errno_value() == EEXIST)
      return Status::invalid_argument(path + ": file exists; refusing to overwrite it");
    return file.status();
  }
  Header h;
  h.cluster_size = o.cluster_size;
  h.table_size = o.table_size;
  h.header_size = 1;
  h.l1_table_offset = o.cluster_size;
  h.image_size = size;
  if (!o.backing_file.empty()) {
    h.features = kFeatureBackingFile | (format == "raw" ? kFeatureBackingNoProbe : 0);
    h.backing_filename_offset = kHeaderBytes;
    h.backing_filename_size = uint32_t(o.backing_file.size());
  }
  Status s = write_new_image(**file, h, o.backing_file);
  if (!s.is_ok())
    ::unlink(path.c_str());
  return s;
}

}  // namespace qed
