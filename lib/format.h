// The QED on-disk header: constants, decoding, encoding and validation.
//
// Layout (all fields little-endian, 64 bytes at file offset 0):
//    0 u32 magic "QED\0"          4 u32 cluster_size (bytes)
//    8 u32 table_size (clusters) 12 u32 header_size (clusters)
//   16 u64 features             24 u64 compat_features
//   32 u64 autoclear_features   40 u64 l1_table_offset (bytes)
//   48 u64 image_size (bytes)   56 u32 backing_filename_offset (bytes)
//   60 u32 backing_filename_size (bytes)
// See docs/qed-format.md for the rules each field must follow.
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "lib/status.h"

namespace qed {

inline constexpr uint32_t kMagic = 0x00444551;  // "QED\0" read little-endian
inline constexpr size_t kHeaderBytes = 64;

inline constexpr uint32_t kMinClusterSize = 4096;
inline constexpr uint32_t kMaxClusterSize = 64u << 20;
inline constexpr uint32_t kMinTableSize = 1;
inline constexpr uint32_t kMaxTableSize = 16;
inline constexpr uint32_t kDefaultClusterSize = 65536;
inline constexpr uint32_t kDefaultTableSize = 4;
// Longest backing file name we accept (PATH_MAX; QEMU's own limit is smaller).
inline constexpr uint32_t kMaxBackingNameBytes = 4096;

// Incompatible feature bits.
inline constexpr uint64_t kFeatureBackingFile = 0x1;
inline constexpr uint64_t kFeatureNeedCheck = 0x2;
inline constexpr uint64_t kFeatureBackingNoProbe = 0x4;
inline constexpr uint64_t kKnownFeatures =
    kFeatureBackingFile | kFeatureNeedCheck | kFeatureBackingNoProbe;
// No compat or autoclear bits are defined.
inline constexpr uint64_t kKnownAutoclearFeatures = 0;

// The header as host-order values. Plain data: decode() and encode() are the
// only conversions to and from bytes.
struct Header {
  uint32_t magic = kMagic;
  uint32_t cluster_size = kDefaultClusterSize;
  uint32_t table_size = kDefaultTableSize;
  uint32_t header_size = 1;
  uint64_t features = 0;
  uint64_t compat_features = 0;
  uint64_t autoclear_features = 0;
  uint64_t l1_table_offset = 0;
  uint64_t image_size = 0;
  uint32_t backing_filename_offset = 0;
  uint32_t backing_filename_size = 0;

  bool has_backing_file() const { return features & kFeatureBackingFile; }
  bool needs_check() const { return features & kFeatureNeedCheck; }
  bool backing_is_raw() const { return features & kFeatureBackingNoProbe; }
};

using HeaderBytes = std::array<uint8_t, kHeaderBytes>;

Header decode_header(const HeaderBytes &bytes);
HeaderBytes encode_header(const Header &header);

// Largest valid image size for a geometry: (table entries)^2 * cluster_size,
// computed in 128 bits and capped at the largest multiple of 512 below 2^64.
uint64_t max_image_size(uint32_t cluster_size, uint32_t table_size);

bool is_valid_cluster_size(uint64_t cluster_size);
bool is_valid_table_size(uint64_t table_size);

// Checks every field of `header` against the rules of the format, for a file
// of `file_size` bytes. The message names the problem but not the file: the
// caller adds the file name. Unknown incompatible features give kNotSupported,
// everything else kCorruption.
Status validate_header(const Header &header, uint64_t file_size);

}  // namespace qed
