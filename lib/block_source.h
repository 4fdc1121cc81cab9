// Something that reads like a disk: an image, or the backing file under it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "lib/status.h"

namespace qed {

// A run of the virtual disk: data, or a hole that reads as zeroes.
struct Extent {
  uint64_t offset;
  uint64_t length;
  bool zero;  // hole+zero rather than data
};

// Appends an extent, merging it with the previous one when they touch and
// have the same type.
void append_extent(std::vector<Extent> &out, Extent e);

// Thread safety: every method may be called from many threads at once.
class BlockSource {
public:
  virtual ~BlockSource() = default;
  // Virtual size in bytes.
  virtual uint64_t size() const = 0;
  // Reads [pos, pos+count); the range must lie within size().
  virtual Status read(void *buf, size_t count, uint64_t pos) = 0;
  // Extents covering a prefix of [pos, pos+count) (within size()), at most
  // `max` of them (max >= 1).
  virtual Result<std::vector<Extent>> extents(uint64_t pos, uint64_t count, size_t max) = 0;
  // What it is, for people: format, name, and what lies below it.
  virtual std::string description() const = 0;
};

// Reads [pos, pos+count) of `source`; bytes past its end read as zeroes.
Status read_clipped(BlockSource &source, void *buf, size_t count, uint64_t pos);

}  // namespace qed
