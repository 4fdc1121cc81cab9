// Opening the backing file named by an image: telling a URI from a local
// name, resolving local names, choosing the store (backing_store.h) and the
// format, refusing loops and formats we cannot read.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "lib/backing_store.h"
#include "lib/block_source.h"
#include "lib/file.h"

namespace qed {

struct OpenOptions;

// A base chosen by the caller in place of the backing file the top image
// names. For front ends to which that name means nothing: the filter reads
// the image from a plugin, so a relative name is relative to nothing it knows,
// and an absolute one points at whatever happens to be on the server.
struct BackingOverride {
  enum class Format {
    kAsImageSays,  // raw if the image says so, otherwise probed
    kRaw,
    kQed,          // must be a QED image; never probed
  };
  std::string path;  // a local file; relative paths are relative to the cwd
  Format format = Format::kAsImageSays;
};

// The files already open in one chain, to refuse loops.
struct ChainState {
  // BackingStore::identity() of each: device and inode for local files (so
  // another name for the same file is a loop), the URI for network ones.
  std::vector<std::string> identities;
  unsigned depth = 0;
  // A network image is in the chain: the names below it must be URIs, so
  // that a remote image cannot make us read local files.
  bool network = false;
};

inline constexpr unsigned kMaxChainDepth = 64;

// The L2 cache budget of a chain is the top image's cache_bytes, for the
// whole chain (a hostile server serving distinct exports could otherwise
// make a chain 64 deep with a full budget at each level): an image whose
// backing file is a QED image hands it this share of its own budget (half,
// so the chain's caches sum to less than the top's budget, whatever the
// depth) and keeps the rest. Raw backing files have no cache.
inline uint64_t backing_cache_share(uint64_t cache_bytes) { return cache_bytes / 2; }

// A raw file as a disk. Its size is fixed at open.
class RawSource final : public BlockSource {
public:
  RawSource(std::unique_ptr<File> file, uint64_t size) : file_(std::move(file)), size_(size) {}
  uint64_t size() const override { return size_; }
  Status read(void *buf, size_t count, uint64_t pos) override;
  Result<std::vector<Extent>> extents(uint64_t pos, uint64_t count, size_t max) override;
  std::string description() const override { return "raw " + file_->name(); }

private:
  std::unique_ptr<File> file_;
  const uint64_t size_;
};

// The path of backing file `name` of the image at `image_path`: relative
// names are relative to the image's folder.
std::string resolve_backing_path(const std::string &image_path, const std::string &name);

// Which format a file holds, from its first bytes: "qed", "raw", or the name
// of a format we refuse.
std::string probe_format(const uint8_t *bytes, size_t count);

// Records the file `name` with `identity` in the chain; fails if it is there
// already or the chain is too deep.
Status enter_chain(ChainState &chain, const std::string &identity, const std::string &name);

// Opens the backing file of an image, read-only, through options.backing_stores.
// `raw` is true when the image says the backing file is raw (never probed).
Result<std::unique_ptr<BlockSource>> open_backing(const std::string &image_path,
                                                  const std::string &name, bool raw,
                                                  const OpenOptions &options, ChainState &chain);

// Opens `base` as the backing file of the image at `image_path`, whose header
// names `name` (kept for messages) with the raw flag `raw`. The override
// applies to this one level: what `base` itself names is opened as usual.
Result<std::unique_ptr<BlockSource>> open_backing_override(const std::string &image_path,
                                                           const std::string &name, bool raw,
                                                           const BackingOverride &base,
                                                           const OpenOptions &options,
                                                           ChainState &chain);

}  // namespace qed
