// The fixed part of fuzz_requests' world: the geometries and backing files a
// run picks from, the fresh images made once per process, and the data that
// writes and backing files hold, a function of the write and the offset (so
// any byte can be recomputed instead of stored).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "lib/status.h"

namespace fuzz {

struct GeometryChoice {
  uint32_t cluster_size;
  uint32_t table_size;
  uint64_t disk_bytes;
};

// Small disks that still span several L2 tables where the geometry allows,
// and end inside a cluster. Small tables too: a run costs about the table
// entries its checks walk (the big-cluster arithmetic is the other targets').
inline constexpr GeometryChoice kGeometries[] = {
    {4096, 1, (5u << 20) - 1536},  // three L2 tables of 2 MiB
    {4096, 2, (9u << 20) + 512},   // three of 4 MiB, the last one barely used
    {8192, 1, 3u << 20},
    {16384, 1, (4u << 20) + 3584},
};
inline constexpr size_t kGeometryCount = sizeof kGeometries / sizeof kGeometries[0];

enum Below { kNoBacking, kRawBacking, kQedBacking, kBelowCount };

// Makes the backing files and the fresh images, once per process, in a
// temporary folder removed at exit (images name their backing files relative
// to themselves).
void make_world();
const std::string &world_image_path(size_t geometry, Below below);
const std::vector<uint8_t> &world_image(size_t geometry, Below below);

// What write `id` wrote at [pos, pos+n) (id 0: the backing files).
void fill_data(uint64_t id, uint64_t pos, uint8_t *out, uint64_t n);
// What an untouched byte of the disk reads over `below`, and whether a range
// of them is all zero.
void fill_base(Below below, uint64_t pos, uint8_t *out, uint64_t n);
bool base_is_zero(Below below, uint64_t pos, uint64_t n);
// The size of the backing file (its virtual size for QED), 0 without one.
uint64_t base_bytes(Below below);

// fail()s with `what` and the message unless `s` is ok.
void check_ok(const qed::Status &s, const std::string &what);

}  // namespace fuzz
