// Shared by the fuzz targets and the mutator that work on whole images: a
// read-only File over fuzz input, the layout of an image (header, L1 entries,
// L2 tables) decoded with the engine's own functions, the header fix-up of
// fuzz_translate, and the exercisers that read and write where the tables
// point and at the edges (never the whole disk, so a run stays cheap).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "tests/support/fault_file.h"
#include "lib/format.h"
#include "lib/geometry.h"
#include "lib/image.h"

namespace fuzz {

// A read-only File over bytes the caller keeps alive, so the engine's table
// decoder can read fuzz input in place. Bytes past the end read as zeroes.
class BytesFile final : public qed::File {
public:
  BytesFile(const uint8_t *data, size_t size) : data_(data), size_(size) {}
  const std::string &name() const override { return name_; }
  qed::Status pread(void *buf, size_t count, uint64_t offset) override;
  qed::Status pwrite(const void *, size_t, uint64_t) override { return refuse(); }
  qed::Status sync() override { return qed::Status::ok(); }
  qed::Result<uint64_t> size() override { return uint64_t(size_); }
  qed::Status truncate(uint64_t) override { return refuse(); }
  qed::Status extend_to(uint64_t, uint64_t) override { return refuse(); }
  qed::Status punch_hole(uint64_t, uint64_t) override { return refuse(); }
  qed::Status zero_range(uint64_t, uint64_t) override { return refuse(); }

private:
  qed::Status refuse() const { return qed::Status::read_only(name_ + ": read-only"); }
  const uint8_t *data_;
  size_t size_;
  const std::string name_ = "fuzz input";
};

// Where the metadata of an image lies, as far as the bytes at hand hold it.
struct Layout {
  qed::Header header;
  bool valid = false;   // the header passed validate_header()
  qed::Geometry geo;    // only when valid
  uint64_t file_size = 0;
  // The L1 entries the engine uses (geo.l1_entries_used()), as far as they
  // lie inside the bytes.
  std::vector<uint64_t> l1;
  struct Table {
    uint64_t l1_index;
    uint64_t offset;               // file offset of the table
    std::vector<uint64_t> entries; // the used entries that lie inside the bytes
  };
  // L2 tables of valid-looking L1 entries (aligned, past the header, inside
  // the bytes), at most kMaxTables of them.
  std::vector<Table> tables;
  static constexpr size_t kMaxTables = 64;

  uint64_t l1_offset() const { return header.l1_table_offset; }
  // File offset of L1 entry i, and of entry j of table t.
  uint64_t l1_slot(uint64_t i) const { return header.l1_table_offset + 8 * i; }
  uint64_t l2_slot(const Table &t, uint64_t j) const { return t.offset + 8 * j; }
};

// Decodes the layout of the image in data[0, size) whose header is `header`
// (fuzz_translate fixes the header up first; the others take it as it is).
Layout decode_layout(const uint8_t *data, size_t size, const qed::Header &header);
Layout decode_layout(const uint8_t *data, size_t size);

// fuzz_translate tests translation, not header validation (fuzz_header and
// fuzz_check do that): it turns any header into a valid one of a small
// geometry (4 to 64 KiB clusters, tables of at most 16 KiB or one cluster, no
// backing file) so that every input reaches the tables. `needed` is the file
// size the header then requires (the L1 table must fit), at least `file_size`.
qed::Header make_translatable(qed::Header h, uint64_t file_size, uint64_t &needed);

std::unique_ptr<qed::Image> open_memory(std::vector<uint8_t> bytes, bool read_only,
                                        qed::CheckPolicy check = qed::CheckPolicy::kAuto);

// Virtual offsets worth probing: the first and last byte, the edges of every
// L2 span the L1 table uses, and the clusters the L2 entries name (where the
// hostile cases live). Sorted, without duplicates, at most `max`.
std::vector<uint64_t> probe_points(const Layout &layout, size_t max);

// Reads around the probes and asks for extents; any failure must be a clean
// Status. With `model`, every read that succeeds must agree with it.
class DiskModel;
void exercise_read(qed::Image &image, const std::vector<uint64_t> &probes,
                   DiskModel *model = nullptr);

// "" or what is wrong with extents returned for [pos, pos+len) when at most
// `max` were asked for: they must cover a prefix of the range, in order; with
// `model`, an extent of zeroes must be somewhere the disk may read zero.
std::string check_extents(const std::vector<qed::Extent> &extents, uint64_t pos, uint64_t len,
                          size_t max, DiskModel *model);

// Writes, zeroes and trims at the probes, then flushes. With `model` (only
// for images the check found consistent) every write is read back.
void exercise_write(qed::Image &image, const std::vector<uint64_t> &probes, uint64_t seed,
                    DiskModel *model = nullptr);

// The whole round on a read-write image: opens `file` (kAuto: a dirty image
// is repaired), writes at the probes and reads there, closes it. When
// `consistent` (the check found nothing but leaks, or the open repairs the
// image), every read must agree with what was written, the closed file must
// pass the check, and it must read the same after opening it again.
void exercise_read_write(std::vector<uint8_t> file, const std::vector<uint64_t> &probes,
                         uint64_t seed, bool consistent);

// Aborts with a message (a finding: libFuzzer saves the input).
[[noreturn]] void fail(const std::string &what);

}  // namespace fuzz
