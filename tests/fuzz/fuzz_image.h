// Shared by the fuzz targets that open whole images from fuzz input.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "fault_file.h"
#include "image.h"

namespace fuzz {

// Reads the whole disk and its extents; any failure must be a clean Status.
inline void exercise_read(qed::Image &image) {
  const uint64_t size = std::min<uint64_t>(image.size(), 8u << 20);
  std::vector<uint8_t> buf(65536);
  for (uint64_t pos = 0; pos < size; pos += buf.size()) {
    const size_t n = size_t(std::min<uint64_t>(buf.size(), size - pos));
    (void)image.read(buf.data(), n, pos);
  }
  (void)image.extents(0, image.size(), 1024);
}

// Writes, zeroes, trims and flushes a little, on a read-write image.
inline void exercise_write(qed::Image &image, uint64_t seed) {
  const uint64_t size = image.size();
  if (size == 0)
    return;
  std::vector<uint8_t> buf(70000, uint8_t(seed));
  for (int i = 0; i < 6; i++) {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    const uint64_t pos = (seed >> 11) % size;
    const uint64_t len = std::min<uint64_t>(1 + (seed >> 40) % buf.size(), size - pos);
    switch (i % 3) {
    case 0: (void)image.write(buf.data(), len, pos, false); break;
    case 1: (void)image.zero(pos, len, qed::ZeroFlags{}); break;
    default: (void)image.trim(pos, len, false); break;
    }
  }
  (void)image.flush();
}

inline std::unique_ptr<qed::Image> open_memory(std::vector<uint8_t> bytes, bool read_only,
                                               qed::MemoryFile **raw = nullptr) {
  auto file = std::make_unique<qed::MemoryFile>(std::move(bytes), "/nonexistent/fuzz.qed");
  if (raw)
    *raw = file.get();
  qed::OpenOptions o;
  o.read_only = read_only;
  o.cache_bytes = 256 * 1024;
  o.allow_backing = false;  // the fuzzer must not open files by name
  qed::ChainState chain;
  auto image = qed::Image::open_file("/nonexistent/fuzz.qed", std::move(file), o, chain);
  return image ? std::move(*image) : nullptr;
}

}  // namespace fuzz
