// Helpers of the unit tests: temporary directories, a File wrapper that counts
// and delays reads, images in memory, whole-disk reads and comparisons. The
// ones the fuzz targets share (random generator, patterns, the forwarding
// SharedFile, the independent structural checker) are in
// tests/support/test_helpers.h.
#pragma once

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "lib/backing.h"
#include "lib/create.h"
#include "tests/support/fault_file.h"
#include "lib/file.h"
#include "lib/format.h"
#include "lib/image.h"
#include "tests/support/test_helpers.h"

namespace qt {

// A directory under /tmp, removed with everything in it on destruction.
class TempDir {
public:
  TempDir() {
    char tmpl[] = "/tmp/qed-unit-XXXXXX";
    char *p = ::mkdtemp(tmpl);
    REQUIRE(p != nullptr);
    path_ = p;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir &) = delete;
  TempDir &operator=(const TempDir &) = delete;
  const std::string &path() const { return path_; }
  std::string file(const std::string &name) const { return path_ + "/" + name; }

private:
  std::string path_;
};

// Concatenates strings and numbers. GCC 12 at -O3 warns (-Wrestrict, a false
// positive) on "literal" + std::to_string(n); appending avoids it.
template <typename... Parts>
std::string cat(const Parts &...parts) {
  std::string out;
  auto add = [&out](const auto &p) {
    if constexpr (std::is_arithmetic_v<std::decay_t<decltype(p)>>)
      out += std::to_string(p);
    else
      out += p;
  };
  (add(parts), ...);
  return out;
}

inline std::vector<uint8_t> read_whole_file(const std::string &path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in.good());
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

inline void write_whole_file(const std::string &path, const std::vector<uint8_t> &bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  REQUIRE(out.good());
  out.write(reinterpret_cast<const char *>(bytes.data()), std::streamsize(bytes.size()));
  REQUIRE(out.good());
}

// Writes `bytes` at `offset` of an existing file without truncating it.
inline void patch_file(const std::string &path, uint64_t offset, const void *bytes, size_t n) {
  std::fstream f(path, std::ios::binary | std::ios::in | std::ios::out);
  REQUIRE(f.good());
  f.seekp(std::streamoff(offset));
  f.write(static_cast<const char *>(bytes), std::streamsize(n));
  REQUIRE(f.good());
}

// Forwards to a shared inner file, counts reads per offset and can delay
// reads at chosen offsets (to make concurrent misses overlap).
class CountingFile final : public SharedFile {
public:
  struct Shared {
    std::mutex mu;
    std::map<uint64_t, uint64_t> reads_at;  // offset -> preads starting there
    std::map<uint64_t, int> delay_ms_at;    // offset -> sleep before the read
    uint64_t total_reads = 0;
    size_t delay_writes_of = 0;             // writes of exactly this many bytes...
    int write_delay_ms = 0;                 // ...sleep this long first
    std::atomic<int> delayed_writes{0};     // delayed writes begun so far
  };

  CountingFile(std::shared_ptr<qed::File> inner, std::shared_ptr<Shared> shared)
      : SharedFile(std::move(inner)), shared_(std::move(shared)) {}

  qed::Status pread(void *buf, size_t count, uint64_t offset) override {
    int delay = 0;
    {
      std::lock_guard lock(shared_->mu);
      shared_->reads_at[offset]++;
      shared_->total_reads++;
      auto it = shared_->delay_ms_at.find(offset);
      if (it != shared_->delay_ms_at.end())
        delay = it->second;
    }
    if (delay)
      std::this_thread::sleep_for(std::chrono::milliseconds(delay));
    return inner_->pread(buf, count, offset);
  }
  qed::Status pwrite(const void *buf, size_t count, uint64_t offset) override {
    int delay = 0;
    {
      std::lock_guard lock(shared_->mu);
      if (shared_->delay_writes_of == count)
        delay = shared_->write_delay_ms;
    }
    if (delay) {
      shared_->delayed_writes++;
      std::this_thread::sleep_for(std::chrono::milliseconds(delay));
    }
    return inner_->pwrite(buf, count, offset);
  }

private:
  std::shared_ptr<Shared> shared_;
};

// Creates an image file with qed::create_image; REQUIREs success.
inline void make_image(const std::string &path, uint64_t size, uint32_t cs, uint32_t ts,
                       const std::string &backing = "", const std::string &backing_fmt = "") {
  qed::CreateOptions o;
  o.size = size;
  o.cluster_size = cs;
  o.table_size = ts;
  o.backing_file = backing;
  o.backing_format = backing_fmt;
  qed::Status s = qed::create_image(path, o);
  INFO(s.message());
  REQUIRE(s.is_ok());
}

// An image living in a MemoryFile that outlives every Image opened on it.
struct MemImage {
  std::string path;
  std::shared_ptr<qed::MemoryFile> mem;
  std::shared_ptr<qed::FaultFile> last_fault;  // of the last open_mem()

  // Builds a fresh image with create_image in `dir` and loads it into memory.
  static MemImage create(const TempDir &dir, const std::string &name, uint64_t size, uint32_t cs,
                         uint32_t ts) {
    MemImage m;
    m.path = dir.file(name);
    make_image(m.path, size, cs, ts);
    m.mem = std::make_shared<qed::MemoryFile>(read_whole_file(m.path), m.path);
    return m;
  }
};

inline qed::OpenOptions rw_options(uint64_t cache_bytes = 64ull << 20) {
  qed::OpenOptions o;
  o.read_only = false;
  o.cache_bytes = cache_bytes;
  return o;
}

// Opens an Image on `file` (which the Image then owns); REQUIREs success.
inline std::unique_ptr<qed::Image> open_on(const std::string &path, std::unique_ptr<qed::File> file,
                                           const qed::OpenOptions &options) {
  qed::ChainState chain;
  auto r = qed::Image::open_file(path, std::move(file), options, chain);
  INFO(r.status().message());
  REQUIRE(r.is_ok());
  return std::move(*r);
}

// Opens the image in `m.mem` through a fresh FaultFile (kept in m.last_fault).
inline std::unique_ptr<qed::Image> open_mem(MemImage &m, const qed::OpenOptions &options) {
  m.last_fault = std::make_shared<qed::FaultFile>(m.mem);
  return open_on(m.path, std::make_unique<SharedFile>(m.last_fault), options);
}

inline std::unique_ptr<qed::Image> open_path(const std::string &path,
                                             const qed::OpenOptions &options) {
  auto r = qed::Image::open(path, options);
  INFO(r.status().message());
  REQUIRE(r.is_ok());
  return std::move(*r);
}

// Reads the whole virtual disk into `out` (reusing its memory).
inline void read_all_into(qed::Image &img, std::vector<uint8_t> &out) {
  out.resize(img.size());
  const size_t chunk = 8u << 20;
  for (uint64_t pos = 0; pos < out.size(); pos += chunk) {
    const size_t n = size_t(std::min<uint64_t>(chunk, out.size() - pos));
    qed::Status s = img.read(out.data() + pos, n, pos);
    INFO(s.message());
    REQUIRE(s.is_ok());
  }
}

inline std::vector<uint8_t> read_all(qed::Image &img) {
  std::vector<uint8_t> out;
  read_all_into(img, out);
  return out;
}

// First differing offset, or -1.
inline int64_t first_diff(const std::vector<uint8_t> &a, const std::vector<uint8_t> &b) {
  if (a.size() != b.size())
    return int64_t(std::min(a.size(), b.size()));
  // memcmp by chunks first: byte loops are slow under the sanitizers.
  for (size_t at = 0; at < a.size(); at += 65536) {
    const size_t n = std::min<size_t>(65536, a.size() - at);
    if (std::memcmp(a.data() + at, b.data() + at, n) == 0)
      continue;
    for (size_t i = at; i < at + n; i++)
      if (a[i] != b[i])
        return int64_t(i);
  }
  return -1;
}

#define QT_CHECK_SAME(actual, expected)                                   \
  do {                                                                    \
    const int64_t qt_diff_ = ::qt::first_diff((actual), (expected));      \
    INFO("first difference at byte " << qt_diff_);                        \
    CHECK(qt_diff_ == -1);                                                \
  } while (0)

}  // namespace qt
