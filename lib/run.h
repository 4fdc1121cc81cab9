// What a run of virtual bytes of an image maps to: Image::lookup() and
// Metadata::lookup() return one. (A file's data or hole run at an offset is
// File::Region, file.h.)
#pragma once

#include <cstdint>

namespace qed {

struct Run {
  enum Kind { kUnallocated, kZero, kData };
  Kind kind;
  uint64_t length;       // bytes, > 0
  uint64_t host_offset;  // kData: file offset of the first byte
};

}  // namespace qed
