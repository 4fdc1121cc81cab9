#include "tests/fuzz/request_world.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "lib/create.h"
#include "tests/fuzz/fuzz_image.h"
#include "lib/image.h"

namespace fuzz {

namespace {

constexpr uint64_t kMiB = 1 << 20;

// The backing files are smaller than most disks, so requests cross their end.
constexpr uint64_t kRawBytes = 3 * kMiB + 1000;  // not a multiple of 512
constexpr uint64_t kQedBytes = 2 * kMiB + 512;
// Where the QED backing file holds data (the rest is unallocated).
struct Range {
  uint64_t pos, len;
};
constexpr Range kQedData[] = {{0, 256 * 1024}, {kMiB - 100, 5000}, {2 * kMiB, 512}};

uint64_t mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace

namespace {
void fill_data_edges(uint64_t key, uint64_t pos, uint8_t *out, uint64_t n);
}  // namespace

// A value per 8-byte word of the disk, mixed with the write's id.
void fill_data(uint64_t id, uint64_t pos, uint8_t *out, uint64_t n) {
  const uint64_t key = mix(id);
  uint64_t i = 0;
  // Whole aligned words at once (the bytes of a word are its value in
  // little-endian order); the loop below does the edges.
  if (n >= 16) {
    const uint64_t head = (8 - (pos & 7)) & 7;
    fill_data_edges(key, pos, out, head);
    uint64_t w = (pos + head) >> 3;
    for (i = head; i + 8 <= n; i += 8, w++) {
      const uint64_t v = (w * 0x9E3779B97F4A7C15ull) ^ key;
      uint8_t word[8];
      for (unsigned b = 0; b < 8; b++)
        word[b] = uint8_t(v >> (8 * b));
      std::memcpy(out + i, word, 8);
    }
  }
  fill_data_edges(key, pos + i, out + i, n - i);
}

namespace {

void fill_data_edges(uint64_t key, uint64_t pos, uint8_t *out, uint64_t n) {
  uint64_t i = 0;
  while (i < n) {
    const uint64_t at = pos + i;
    const uint64_t v = ((at >> 3) * 0x9E3779B97F4A7C15ull) ^ key;
    uint8_t word[8];
    for (unsigned b = 0; b < 8; b++)
      word[b] = uint8_t(v >> (8 * b));
    const unsigned from = unsigned(at & 7);
    const uint64_t k = std::min<uint64_t>(8 - from, n - i);
    std::memcpy(out + i, word + from, k);
    i += k;
  }
}

}  // namespace

// What an untouched byte of the disk reads: the backing file's data where it
// has some, else zero.
void fill_base(Below below, uint64_t pos, uint8_t *out, uint64_t n) {
  std::memset(out, 0, n);
  auto data = [&](uint64_t from, uint64_t to) {
    from = std::max(from, pos);
    to = std::min(to, pos + n);
    if (from < to)
      fill_data(0, from, out + (from - pos), to - from);
  };
  if (below == kRawBacking)
    data(0, kRawBytes);
  else if (below == kQedBacking)
    for (const Range &r : kQedData)
      data(r.pos, r.pos + r.len);
}

bool base_is_zero(Below below, uint64_t pos, uint64_t n) {
  if (below == kRawBacking)
    return pos >= kRawBytes;
  if (below == kQedBacking)
    for (const Range &r : kQedData)
      if (pos < r.pos + r.len && r.pos < pos + n)
        return false;
  return true;
}

uint64_t base_bytes(Below below) {
  switch (below) {
  case kRawBacking: return kRawBytes;
  case kQedBacking: return kQedBytes;
  default: return 0;
  }
}

namespace {

struct World {
  std::string dir;
  std::string path[kGeometryCount][kBelowCount];
  std::vector<uint8_t> image[kGeometryCount][kBelowCount];
};

World *world = nullptr;

void remove_world() {
  if (world)
    std::filesystem::remove_all(world->dir);
}

std::vector<uint8_t> read_file(const std::string &path) {
  auto f = qed::open_posix_file(path, qed::OpenMode::kReadOnly);
  check_ok(f.status(), "open " + path);
  auto size = (*f)->size();
  check_ok(size.status(), "size of " + path);
  std::vector<uint8_t> bytes(*size);
  check_ok((*f)->pread(bytes.data(), bytes.size(), 0), "read " + path);
  return bytes;
}

void make_backing_files() {
  std::vector<uint8_t> raw(kRawBytes);
  fill_data(0, 0, raw.data(), raw.size());
  auto f = qed::open_posix_file(world->dir + "/below.raw", qed::OpenMode::kCreate);
  check_ok(f.status(), "create below.raw");
  check_ok((*f)->pwrite(raw.data(), raw.size(), 0), "write below.raw");

  qed::CreateOptions o;
  o.size = kQedBytes;
  o.cluster_size = 4096;
  o.table_size = 1;
  const std::string path = world->dir + "/below.qed";
  check_ok(qed::create_image(path, o), "create below.qed");
  qed::OpenOptions oo;
  oo.read_only = false;
  auto img = qed::Image::open(path, oo);
  check_ok(img.status(), "open below.qed");
  std::vector<uint8_t> buf;
  for (const Range &r : kQedData) {
    buf.resize(r.len);
    fill_data(0, r.pos, buf.data(), r.len);
    check_ok((*img)->write(buf.data(), r.len, r.pos, false), "write below.qed");
  }
  check_ok((*img)->close(), "close below.qed");
}

}  // namespace

void check_ok(const qed::Status &s, const std::string &what) {
  if (!s.is_ok())
    fail(what + ": " + s.message());
}

void make_world() {
  char tmpl[] = "/tmp/qed-fuzz-requests-XXXXXX";
  if (!::mkdtemp(tmpl))
    fail("mkdtemp failed");
  world = new World;
  world->dir = tmpl;
  std::atexit(remove_world);
  make_backing_files();
  static const char *const kBelowName[] = {"", "below.raw", "below.qed"};
  static const char *const kBelowFormat[] = {"", "raw", "qed"};
  for (size_t g = 0; g < kGeometryCount; g++) {
    for (size_t b = 0; b < kBelowCount; b++) {
      qed::CreateOptions o;
      o.size = kGeometries[g].disk_bytes;
      o.cluster_size = kGeometries[g].cluster_size;
      o.table_size = kGeometries[g].table_size;
      o.backing_file = kBelowName[b];
      o.backing_format = kBelowFormat[b];
      std::string path = world->dir + "/top-";
      path.append(std::to_string(g)).append("-").append(std::to_string(b)).append(".qed");
      check_ok(qed::create_image(path, o), "create " + path);
      world->path[g][b] = path;
      world->image[g][b] = read_file(path);
    }
  }
}


const std::string &world_image_path(size_t geometry, Below below) {
  return world->path[geometry][below];
}

const std::vector<uint8_t> &world_image(size_t geometry, Below below) {
  return world->image[geometry][below];
}

}  // namespace fuzz
