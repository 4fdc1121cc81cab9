#include "lib/backing.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "lib/image.h"

namespace qed {

Status RawSource::read(void *buf, size_t count, uint64_t pos) {
  return file_->pread(buf, count, pos);
}

Result<std::vector<Extent>> RawSource::extents(uint64_t pos, uint64_t count, size_t max) {
  std::vector<Extent> out;
  while (count > 0 && out.size() < max) {
    auto run = file_->probe_run(pos, count);
    if (!run)
      return run.status();
    const uint64_t n = std::max<uint64_t>(1, std::min(run->length, count));
    append_extent(out, {pos, n, run->hole});
    pos += n;
    count -= n;
  }
  return out;
}

std::string resolve_backing_path(const std::string &image_path, const std::string &name) {
  if (!name.empty() && name[0] == '/')
    return name;
  const size_t slash = image_path.rfind('/');
  if (slash == std::string::npos)
    return name;
  return image_path.substr(0, slash + 1) + name;
}

std::string probe_format(const uint8_t *b, size_t n) {
  auto starts = [&](const char *magic, size_t len, size_t at = 0) {
    return n >= at + len && std::memcmp(b + at, magic, len) == 0;
  };
  if (starts("QED\0", 4))
    return "qed";
  if (starts("QFI\xfb", 4))
    return "qcow2";
  if (starts("KDMV", 4) || starts("COWD", 4) || starts("# Disk DescriptorFile", 21))
    return "vmdk";
  if (starts("vhdxfile", 8))
    return "vhdx";
  if (starts("conectix", 8))
    return "vpc";
  if (starts("\x7f\x10\xda\xbe", 4, 64))
    return "vdi";
  if (starts("LUKS\xba\xbe", 6))
    return "luks";
  if (starts("WithoutFreeSpace", 16) || starts("WithouFreSpacExt", 16))
    return "parallels";
  if (starts("Bochs Virtual HD Image", 22))
    return "bochs";
  if (starts("#!/bin/sh\n#V2.0 Format", 22))
    return "cloop";
  return "raw";
}

Status enter_chain(ChainState &chain, const std::string &identity, const std::string &name) {
  for (const std::string &seen : chain.identities)
    if (seen == identity)
      return Status::corruption(name + ": backing file loop: this file is already in the chain");
  if (chain.depth >= kMaxChainDepth)
    return Status::not_supported(name + ": backing chain is deeper than " +
                                 std::to_string(kMaxChainDepth) + " images");
  chain.identities.push_back(identity);
  chain.depth++;
  return Status::ok();
}

namespace {

// The canonical path when the file exists (so that messages and the export
// description name it plainly), else the path as resolved.
std::string canonical_or_same(const std::string &path) {
  std::unique_ptr<char, decltype(&std::free)> real(::realpath(path.c_str(), nullptr), std::free);
  return real ? std::string(real.get()) : path;
}

// Which store opens `name`, and under which name: a URI as written, a local
// name resolved against the image's folder.
struct Located {
  BackingStore *store;
  std::string name;
};

Result<Located> locate(const std::string &image_path, const std::string &name,
                       const BackingStores &stores, const ChainState &chain) {
  if (is_uri(name)) {
    if (!stores.network)
      return Status::not_supported("network backing files are not enabled");
    return Located{stores.network.get(), name};
  }
  if (chain.network)
    return Status::not_supported(
        "a local backing file below a network image is refused (it would let the remote "
        "image read local files); its backing file must be a URI");
  if (!stores.local)
    return Status::not_supported("local backing files are not enabled");
  return Located{stores.local.get(), canonical_or_same(resolve_backing_path(image_path, name))};
}

// How the format of a backing file is known.
enum class Format { kProbe, kRaw, kQed };

Result<std::unique_ptr<BlockSource>> open_located(const Located &at, Format how,
                                                  const OpenOptions &options, ChainState &chain) {
  auto identity = at.store->identity(at.name);
  if (!identity)
    return identity.status();
  QED_RETURN_IF_ERROR(enter_chain(chain, *identity, at.name));
  const BackingPlace place{chain.network};
  if (is_uri(at.name))
    chain.network = true;
  auto file = at.store->open(at.name, place);
  if (!file)
    return file.status();
  std::string format = how == Format::kQed ? "qed" : "raw";
  if (how == Format::kProbe) {
    uint8_t head[512];
    QED_RETURN_IF_ERROR((*file)->pread(head, sizeof head, 0));
    format = probe_format(head, sizeof head);
  }
  if (format == "qed") {
    OpenOptions below = options;
    below.read_only = true;
    below.grow_to = 0;
    below.backing_override.reset();  // it replaces one level only
    below.cache_bytes = backing_cache_share(options.cache_bytes);
    auto image = Image::open_file(at.name, std::move(*file), below, chain);
    if (!image)
      return image.status();
    return std::unique_ptr<BlockSource>(std::move(*image));
  }
  if (format != "raw")
    return Status::not_supported(at.name + " is in " + format +
                                 " format; only raw and qed backing files are supported");
  auto size = (*file)->size();
  if (!size)
    return size.status();
  return std::unique_ptr<BlockSource>(std::make_unique<RawSource>(std::move(*file), *size));
}

Result<std::unique_ptr<BlockSource>> open_named(const std::string &image_path,
                                                const std::string &name, Format how,
                                                const OpenOptions &options, ChainState &chain) {
  auto at = locate(image_path, name, options.backing_stores, chain);
  if (!at)
    return at.status();
  return open_located(*at, how, options, chain);
}

}  // namespace

Result<std::unique_ptr<BlockSource>> open_backing(const std::string &image_path,
                                                  const std::string &name, bool raw,
                                                  const OpenOptions &options, ChainState &chain) {
  auto source = open_named(image_path, name, raw ? Format::kRaw : Format::kProbe, options, chain);
  if (!source)
    return source.status().with_context(image_path + ": backing file \"" + name + "\"");
  return source;
}

Result<std::unique_ptr<BlockSource>> open_backing_override(const std::string &image_path,
                                                           const std::string &name, bool raw,
                                                           const BackingOverride &base,
                                                           const OpenOptions &options,
                                                           ChainState &chain) {
  using Given = BackingOverride::Format;
  const Format how = base.format == Given::kQed                   ? Format::kQed
                     : base.format == Given::kRaw || raw ? Format::kRaw
                                                                  : Format::kProbe;
  auto source = open_named(image_path, base.path, how, options, chain);
  if (!source)
    return source.status().with_context(image_path + ": backing file \"" + name +
                                        "\" (replaced by " + base.path + ")");
  return source;
}

}  // namespace qed
