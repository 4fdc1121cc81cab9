// Little-endian loads and stores on byte buffers (not named endian.h, which
// would stand in for the system's <endian.h> with lib/ on the include path).
// QED stores every integer little-endian. Values are copied byte-wise into
// place (never through a cast of a struct or an unaligned pointer), then put
// in host order: on a little-endian host the copy is the value, one load
// instead of eight byte loads on the hot path of table decoding; elsewhere the
// bytes are assembled one by one.
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>

namespace qed {

inline uint32_t load_le32(const uint8_t *p) {
  if constexpr (std::endian::native == std::endian::little) {
    uint32_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
  } else {
    return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
  }
}

inline uint64_t load_le64(const uint8_t *p) {
  if constexpr (std::endian::native == std::endian::little) {
    uint64_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
  } else {
    return uint64_t(load_le32(p)) | uint64_t(load_le32(p + 4)) << 32;
  }
}

inline void store_le32(uint8_t *p, uint32_t v) {
  if constexpr (std::endian::native == std::endian::little) {
    std::memcpy(p, &v, sizeof v);
  } else {
    p[0] = uint8_t(v);
    p[1] = uint8_t(v >> 8);
    p[2] = uint8_t(v >> 16);
    p[3] = uint8_t(v >> 24);
  }
}

inline void store_le64(uint8_t *p, uint64_t v) {
  if constexpr (std::endian::native == std::endian::little) {
    std::memcpy(p, &v, sizeof v);
  } else {
    store_le32(p, uint32_t(v));
    store_le32(p + 4, uint32_t(v >> 32));
  }
}

}  // namespace qed
