#include "backing.h"

#include <sys/stat.h>

#include <cstdlib>
#include <cstring>
#include <memory>

#include "image.h"

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

Status enter_chain(ChainState &chain, const std::string &path) {
  struct stat st;
  if (::stat(path.c_str(), &st) < 0)
    return Status::io_error(path + ": " + std::strerror(errno), errno);
  for (const auto &[dev, ino] : chain.files)
    if (dev == st.st_dev && ino == st.st_ino)
      return Status::corruption(path + ": backing file loop: this file is already in the chain");
  if (chain.depth >= kMaxChainDepth)
    return Status::not_supported(path + ": backing chain is deeper than " +
                                 std::to_string(kMaxChainDepth) + " images");
  chain.files.emplace_back(st.st_dev, st.st_ino);
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

Result<std::unique_ptr<BlockSource>> open_backing_qed(const std::string &path,
                                                      const OpenOptions &options,
                                                      ChainState &chain) {
  OpenOptions below = options;
  below.read_only = true;
  below.grow_to = 0;
  below.backing_override.reset();
  auto image = Image::open_in_chain(path, below, chain);
  if (!image)
    return image.status();
  return std::unique_ptr<BlockSource>(std::move(*image));
}

Result<std::unique_ptr<BlockSource>> open_backing_file(const std::string &path, bool raw,
                                                       const OpenOptions &options,
                                                       ChainState &chain) {
  std::string format = "raw";
  if (!raw) {
    auto file = open_posix_file(path, OpenMode::kReadOnly);
    if (!file)
      return file.status();
    uint8_t head[512];
    QED_RETURN_IF_ERROR((*file)->pread(head, sizeof head, 0));
    format = probe_format(head, sizeof head);
  }
  if (format == "qed")
    return open_backing_qed(path, options, chain);
  if (format != "raw")
    return Status::not_supported(path + " is in " + format +
                                 " format; only raw and qed backing files are supported");
  QED_RETURN_IF_ERROR(enter_chain(chain, path));
  auto file = open_posix_file(path, OpenMode::kReadOnly);
  if (!file)
    return file.status();
  auto size = (*file)->size();
  if (!size)
    return size.status();
  return std::unique_ptr<BlockSource>(std::make_unique<RawSource>(std::move(*file), *size));
}

}  // namespace

Result<std::unique_ptr<BlockSource>> open_backing(const std::string &image_path,
                                                  const std::string &name, bool raw,
                                                  const OpenOptions &options, ChainState &chain) {
  auto source = open_backing_file(canonical_or_same(resolve_backing_path(image_path, name)), raw,
                                  options, chain);
  if (!source)
    return source.status().with_context(image_path + ": backing file \"" + name + "\"");
  return source;
}

Result<std::unique_ptr<BlockSource>> open_backing_override(const std::string &image_path,
                                                           const std::string &name, bool raw,
                                                           const BackingOverride &base,
                                                           const OpenOptions &options,
                                                           ChainState &chain) {
  using Format = BackingOverride::Format;
  const std::string path = canonical_or_same(base.path);
  auto source = base.format == Format::kQed
                    ? open_backing_qed(path, options, chain)
                    : open_backing_file(path, base.format == Format::kRaw || raw, options, chain);
  if (!source)
    return source.status().with_context(image_path + ": backing file \"" + name +
                                        "\" (replaced by " + base.path + ")");
  return source;
}

}  // namespace qed
