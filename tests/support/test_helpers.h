// Test helpers without a test framework, shared by the unit tests and the fuzz
// targets: a deterministic random generator, data patterns, little-endian
// helpers of their own (independent of lib/endian.h), a File that forwards to a
// shared inner file, and an independent structural checker for QED files.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "lib/file.h"

namespace qt {

// xorshift64*: deterministic and independent of the standard library.
class Rng {
public:
  explicit Rng(uint64_t seed) : s_(seed * 0x9E3779B97F4A7C15ull | 1) {}
  uint64_t next() {
    s_ ^= s_ >> 12;
    s_ ^= s_ << 25;
    s_ ^= s_ >> 27;
    return s_ * 0x2545F4914F6CDD1Dull;
  }
  // Uniform-ish in [0, n).
  uint64_t below(uint64_t n) { return n ? next() % n : 0; }
  uint64_t range(uint64_t lo, uint64_t hi) { return lo + below(hi - lo + 1); }
  bool chance(unsigned percent) { return below(100) < percent; }

private:
  uint64_t s_;
};

inline void put_le32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++)
    p[i] = uint8_t(v >> (8 * i));
}
inline void put_le64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++)
    p[i] = uint8_t(v >> (8 * i));
}
inline uint64_t get_le64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--)
    v = v << 8 | p[i];
  return v;
}
inline uint32_t get_le32(const uint8_t *p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; i--)
    v = v << 8 | p[i];
  return v;
}

// A File that forwards every call to a shared inner file, so the test keeps a
// handle on it (a FaultFile: arm failures, count calls) while the Image owns
// this. Wrappers that change a few calls derive from it.
class SharedFile : public qed::File {
public:
  explicit SharedFile(std::shared_ptr<qed::File> inner) : inner_(std::move(inner)) {}
  const std::string &name() const override { return inner_->name(); }
  qed::Status pread(void *buf, size_t count, uint64_t offset) override {
    return inner_->pread(buf, count, offset);
  }
  qed::Status pwrite(const void *buf, size_t count, uint64_t offset) override {
    return inner_->pwrite(buf, count, offset);
  }
  qed::Status sync() override { return inner_->sync(); }
  qed::Result<uint64_t> size() override { return inner_->size(); }
  qed::Status truncate(uint64_t size) override { return inner_->truncate(size); }
  qed::Status extend_to(uint64_t size, uint64_t preferred = 0) override {
    return inner_->extend_to(size, preferred);
  }
  qed::Status punch_hole(uint64_t offset, uint64_t count) override {
    return inner_->punch_hole(offset, count);
  }
  qed::Status zero_range(uint64_t offset, uint64_t count) override {
    return inner_->zero_range(offset, count);
  }
  qed::Result<Region> probe_run(uint64_t offset, uint64_t limit) override {
    return inner_->probe_run(offset, limit);
  }

protected:
  std::shared_ptr<qed::File> inner_;
};

inline void fill_pattern(uint8_t *p, size_t n, uint64_t seed) {
  Rng r(seed);
  uint64_t v = 0;
  for (size_t i = 0; i < n; i++) {
    if (i % 8 == 0)
      v = r.next();
    p[i] = uint8_t(v >> (8 * (i % 8))) | 1;  // never zero, so zeroes stand out
  }
}

// An independent structural check of a QED file's bytes: the header is
// valid, every table and data cluster lies inside the file, is aligned, is not
// inside the header or the L1 table, and no cluster is referenced twice.
// Entries past the end of the file are allowed only if `allow_past_eof`, L1
// and L2 entries alike: an L2 entry there reads as unallocated, and an L1
// entry whose table does not fit in the file names no table (every cluster of
// its span unallocated), as the engine and QEMU's check treat them. A power
// loss without a backing file leaves both: the L1 sector of a flush may reach
// the disk while the file's growth to the new table does not (the protocol at
// the top of lib/image_write.cpp). Returns an empty string when consistent.
inline std::string check_structure(const std::vector<uint8_t> &f, bool allow_past_eof = false) {
  if (f.size() < 64)
    return "file too small";
  const uint32_t cs = get_le32(&f[4]);
  const uint32_t ts = get_le32(&f[8]);
  const uint32_t hs = get_le32(&f[12]);
  const uint64_t l1 = get_le64(&f[40]);
  const uint64_t size = get_le64(&f[48]);
  const uint64_t tb = uint64_t(cs) * ts;
  const uint64_t entries = tb / 8;
  const uint64_t span = entries * cs;
  const uint64_t fsize = f.size();
  if (l1 % cs || l1 < uint64_t(hs) * cs || l1 + tb > fsize)
    return "bad L1 offset";
  std::map<uint64_t, std::string> owner;  // cluster index -> what uses it
  auto claim = [&](uint64_t off, uint64_t n, const std::string &what) -> std::string {
    for (uint64_t c = off / cs; c < off / cs + n; c++) {
      auto [it, fresh] = owner.emplace(c, what);
      if (!fresh)
        return what + " reuses cluster " + std::to_string(c) + " of " + it->second;
    }
    return "";
  };
  std::string e = claim(0, hs, "header");
  if (e.empty())
    e = claim(l1, ts, "L1");
  if (!e.empty())
    return e;
  const uint64_t l1_used = (size + span - 1) / span;
  for (uint64_t i = 0; i < entries; i++) {
    const uint64_t t = get_le64(&f[l1 + 8 * i]);
    if (t == 0)
      continue;
    if (i >= l1_used)
      return "L1 entry " + std::to_string(i) + " beyond the image is set";
    if (t % cs || t < uint64_t(hs) * cs)
      return "L1 entry " + std::to_string(i) + " invalid: " + std::to_string(t);
    if (t + tb > fsize) {
      if (allow_past_eof)
        continue;  // no table: nothing in it is used
      return "L2 table " + std::to_string(i) + " at " + std::to_string(t) + " past EOF " +
             std::to_string(fsize);
    }
    if (!(e = claim(t, ts, "L2 table " + std::to_string(i))).empty())
      return e;
    for (uint64_t j = 0; j < entries; j++) {
      const uint64_t d = get_le64(&f[t + 8 * j]);
      if (d <= 1)
        continue;
      const uint64_t vpos = i * span + j * cs;
      if (vpos >= size)
        return "L2 entry beyond the image at virtual " + std::to_string(vpos);
      if (d % cs || d < uint64_t(hs) * cs)
        return "L2 entry for virtual " + std::to_string(vpos) + " invalid: " + std::to_string(d);
      if (d + cs > fsize) {
        if (allow_past_eof)
          continue;
        return "L2 entry for virtual " + std::to_string(vpos) + " past EOF";
      }
      if (!(e = claim(d, 1, "data for virtual " + std::to_string(vpos))).empty())
        return e;
    }
  }
  return "";
}

}  // namespace qt
