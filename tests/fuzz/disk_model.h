// What a virtual disk must read back, byte by byte, for the fuzz targets'
// oracles. Each byte is in one of three states:
//   known       it must read exactly its value;
//   maybe zero  its value or zero: a trim may free the cluster under it, and
//               Image::trim() frees only clusters the range covers entirely;
//   unknown     anything: what a hostile image held before the target wrote.
// A read that passes settles every byte it covered to what it returned (the
// engine is deterministic: the same byte must read the same until written).
// Pages are allocated on first change, so a large disk costs only what the
// requests touched; copies of a model share pages until one of them changes
// (a snapshot costs a pointer per page).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace fuzz {

class DiskModel {
public:
  enum State : uint8_t { kKnown, kMaybeZero, kUnknown };
  static constexpr uint64_t kPageBytes = 4096;

  // Fills out[0, n) with what the untouched bytes at [pos, pos+n) hold.
  using BaseFill = std::function<void(uint64_t pos, uint8_t *out, uint64_t n)>;

  // Whether the untouched bytes at [pos, pos+n) are all zero.
  using BaseZero = std::function<bool(uint64_t pos, uint64_t n)>;

  // An empty `base` makes every untouched byte unknown.
  DiskModel(uint64_t size, uint64_t cluster_size, BaseFill base = nullptr,
            BaseZero base_zero = nullptr);

  uint64_t size() const { return size_; }
  // Growing exposes what lies beyond the old end: the base, since shrinking
  // forgets every change beyond the new end (a lost grow takes the writes
  // past the old end with it).
  void resize(uint64_t size);

  void write(uint64_t pos, const uint8_t *data, uint64_t len);
  void zero(uint64_t pos, uint64_t len);
  // Clusters the range covers entirely may read zero from now on.
  void trim(uint64_t pos, uint64_t len);
  // The range may read anything (a request on it failed half way).
  void forget(uint64_t pos, uint64_t len);

  // Compares what the image returned for [pos, pos+len) and settles it.
  // Returns "" or a description of the first byte that may not read so.
  std::string check_read(uint64_t pos, const uint8_t *data, uint64_t len);
  // The image said the range reads as zeroes (an extent of kind zero): true
  // if every byte may be zero; settles them to zero.
  bool settle_zero(uint64_t pos, uint64_t len);

  // The candidates of one byte: value and state; of a range, into arrays.
  State state_at(uint64_t pos, uint8_t &value) const;
  void states(uint64_t pos, uint64_t n, uint8_t *values, uint8_t *states) const;
  // Sets one byte to a known value (after a crash the reader decides).
  void settle(uint64_t pos, uint8_t value);

  // Indices of pages ever changed (written, zeroed, trimmed or settled).
  std::vector<uint64_t> touched_pages() const;

private:
  struct Page {
    uint8_t value[kPageBytes];
    uint8_t state[kPageBytes];
  };
  Page &page(uint64_t index);  // made or unshared for a change
  std::string check_touched(uint64_t pos, const uint8_t *data, uint64_t len);
  Page &own(std::shared_ptr<Page> &slot);
  const Page *find(uint64_t index) const;

  uint64_t size_;
  uint64_t cluster_size_;
  BaseFill base_;
  BaseZero base_zero_;
  std::unordered_map<uint64_t, std::shared_ptr<Page>> pages_;
};

}  // namespace fuzz
