#include "tests/fuzz/qed_mutator.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <string>
#include <vector>

#include "lib/byte_order.h"
#include "lib/format.h"
#include "tests/fuzz/fuzz_image.h"
#include "lib/table.h"
#include "tests/support/test_helpers.h"

extern "C" size_t LLVMFuzzerMutate(uint8_t *data, size_t size, size_t max_size);

namespace fuzz {

namespace {

bool structured() {
  static const bool on = [] {
    const char *v = std::getenv("QED_FUZZ_MUTATOR");
    return !(v && (std::strcmp(v, "off") == 0 || std::strcmp(v, "0") == 0));
  }();
  return on;
}

uint64_t round_up(uint64_t v, uint64_t to) { return (v + to - 1) / to * to; }

// One mutation session over a copy of the input.
class ImageMutator {
public:
  ImageMutator(const uint8_t *data, size_t size, size_t max_size, unsigned seed,
               const MutatorProfile &profile)
      : f_(data, data + size), max_(max_size), rng_(seed), profile_(profile) {}

  // False when the input is not an image this mutator can read.
  bool decode();
  void mutate_once();
  const std::vector<uint8_t> &bytes() const { return f_; }

private:
  // A place holding a table entry: its file offset, and the table it is in.
  struct Slot {
    uint64_t at;
    uint64_t table;  // file offset of the table holding it
    bool l1;
  };

  bool pick_slot(Slot &s, int want_l1);  // want_l1: 1 L1, 0 L2, -1 either
  uint64_t entry(const Slot &s) const { return qed::load_le64(&f_[s.at]); }
  void set_entry(const Slot &s, uint64_t v) {
    const std::vector<uint8_t> bytes = qed::encode_entries({&v, 1});
    std::memcpy(&f_[s.at], bytes.data(), 8);
  }
  uint64_t interesting_offset(const Slot &s);
  uint64_t some_table_offset();
  uint64_t some_data_offset();
  void write_header(const qed::Header &h);

  void set_entry_to_target();
  void copy_entry();
  void swap_entries();
  void header_field();
  void resize_file();
  void append_cluster();
  void append_table();
  void bytes_of_a_table();
  void backing_name();

  std::vector<uint8_t> f_;
  const size_t max_;
  qt::Rng rng_;
  const MutatorProfile &profile_;
  Layout l_;
  qed::Header h_;
};

bool ImageMutator::decode() {
  if (f_.size() < qed::kHeaderBytes)
    return false;
  qed::HeaderBytes hb;
  std::memcpy(hb.data(), f_.data(), hb.size());
  h_ = qed::decode_header(hb);
  if (profile_.translatable) {
    uint64_t needed;
    h_ = make_translatable(h_, f_.size(), needed);
    write_header(h_);  // the input says what the target sees
    if (needed > f_.size()) {
      if (needed > max_)
        return false;
      f_.resize(needed);
    }
  } else if (!qed::validate_header(h_, f_.size()).is_ok()) {
    // Now and then a broken header is mended, so the tables behind it count.
    if (rng_.below(4) != 0)
      return false;
    uint64_t needed;
    const uint64_t backing = h_.features & qed::kFeatureBackingFile;
    h_ = make_translatable(h_, f_.size(), needed);
    if (needed > max_)
      return false;
    f_.resize(needed);
    if (backing) {  // keep a backing file name valid if it was asked for
      h_.features |= qed::kFeatureBackingFile;
      h_.backing_filename_offset = 64;
      h_.backing_filename_size = 8;
    }
    write_header(h_);
    if (!qed::validate_header(h_, f_.size()).is_ok())
      return false;
  }
  l_ = decode_layout(f_.data(), f_.size(), h_);
  return l_.valid;
}

void ImageMutator::write_header(const qed::Header &h) {
  const qed::HeaderBytes hb = qed::encode_header(h);
  std::memcpy(f_.data(), hb.data(), hb.size());
}

bool ImageMutator::pick_slot(Slot &s, int want_l1) {
  const bool have_l2 = !l_.tables.empty();
  bool l1 = want_l1 == 1 || !have_l2 || (want_l1 < 0 && rng_.below(10) < 3);
  if (l1) {
    // Mostly the entries in use; sometimes any entry of the table (the check
    // walks them all).
    const uint64_t n = rng_.below(8) == 0 ? l_.geo.table_entries() : l_.l1.size();
    if (n == 0)
      return false;
    s = {l_.l1_slot(rng_.below(n)), l_.l1_offset(), true};
  } else {
    const Layout::Table &t = l_.tables[rng_.below(l_.tables.size())];
    if (t.entries.empty())
      return false;
    // Prefer entries in use: that is where the reader goes.
    uint64_t j = rng_.below(t.entries.size());
    for (int tries = 0; tries < 4 && t.entries[j] == 0; tries++)
      j = rng_.below(t.entries.size());
    s = {l_.l2_slot(t, j), t.offset, false};
  }
  return s.at + 8 <= f_.size();
}

uint64_t ImageMutator::some_table_offset() {
  if (l_.tables.empty())
    return l_.l1_offset();
  return l_.tables[rng_.below(l_.tables.size())].offset;
}

uint64_t ImageMutator::some_data_offset() {
  for (int tries = 0; tries < 8 && !l_.tables.empty(); tries++) {
    const Layout::Table &t = l_.tables[rng_.below(l_.tables.size())];
    if (t.entries.empty())
      continue;
    const uint64_t e = t.entries[rng_.below(t.entries.size())];
    if (e > qed::kEntryZero)
      return e;
  }
  return round_up(f_.size(), l_.geo.cluster_size());
}

uint64_t ImageMutator::interesting_offset(const Slot &s) {
  const uint64_t cs = l_.geo.cluster_size(), tb = l_.geo.table_bytes();
  const uint64_t hb = l_.geo.header_bytes(), l1 = l_.l1_offset();
  const uint64_t size = f_.size(), end = round_up(size, cs);
  uint64_t v;
  switch (rng_.below(22)) {
  case 0: v = 0; break;
  case 1: v = qed::kEntryZero; break;
  case 2: v = end; break;                                   // just past the end
  case 3: v = end + cs * rng_.range(1, 4); break;           // well past it
  case 4: v = end >= cs ? end - cs : 0; break;              // the last cluster
  case 5: v = end >= tb ? end - tb : 0; break;              // a table that just fits
  case 6: v = end >= tb ? end - tb + cs : cs; break;        // one that does not
  case 7: v = cs * rng_.below(l_.header.header_size + 1); break;  // header, or just after
  case 8: v = l1; break;                                    // the L1 table
  case 9: v = l1 + cs * rng_.below(l_.geo.table_size_clusters()); break;
  case 10: v = l1 + tb; break;                              // just after L1
  case 11: v = l1 >= cs ? l1 - cs : 0; break;               // just before it
  case 12: v = s.table; break;                              // its own table
  case 13: v = s.table + cs * rng_.below(l_.geo.table_size_clusters()); break;
  case 14: v = some_table_offset(); break;                  // another table
  case 15: v = some_data_offset(); break;                   // shared data
  case 16: v = UINT64_MAX; break;
  case 17: v = UINT64_MAX & ~(cs - 1); break;               // offset + cs overflows
  case 18: v = uint64_t(1) << rng_.range(32, 63); break;
  case 19: v = hb; break;
  case 20: v = size; break;                                 // the exact (unaligned) end
  default: v = some_data_offset() + cs; break;              // a neighbour of data
  }
  switch (rng_.below(10)) {
  case 0: {  // unaligned
    static const uint64_t kSkew[] = {1, 8, 511, 512, 4095};
    v += rng_.below(2) ? kSkew[rng_.below(5)] : cs / 2;
    break;
  }
  case 1:
    v -= std::min(v, cs);
    break;
  default:
    break;
  }
  return v;
}

void ImageMutator::set_entry_to_target() {
  Slot s;
  if (pick_slot(s, -1))
    set_entry(s, interesting_offset(s));
}

void ImageMutator::copy_entry() {
  // Which kinds meet: data and data (shared cluster), table and table (a
  // table shared by two L1 entries), data at a table, a table at data.
  const int kinds = int(rng_.below(4));
  Slot from, to;
  if (pick_slot(from, kinds == 1 || kinds == 3) && pick_slot(to, kinds == 1 || kinds == 2))
    set_entry(to, entry(from));
}

void ImageMutator::swap_entries() {
  Slot a, b;
  if (pick_slot(a, -1) && pick_slot(b, -1)) {
    const uint64_t va = entry(a), vb = entry(b);
    set_entry(a, vb);
    set_entry(b, va);
  }
}

void ImageMutator::header_field() {
  qed::Header h = l_.header;
  const uint64_t cs = h.cluster_size, size = f_.size();
  switch (rng_.below(11)) {
  case 0: {
    static const uint32_t kSizes[] = {4096, 8192, 16384, 65536, 2048, 4095, 4097,
                                      3 * 4096, 64u << 20, 128u << 20, 0, UINT32_MAX};
    h.cluster_size = kSizes[rng_.below(std::size(kSizes))];
    break;
  }
  case 1: {
    static const uint32_t kSizes[] = {1, 2, 4, 8, 16, 0, 3, 17, 32, UINT32_MAX};
    h.table_size = kSizes[rng_.below(std::size(kSizes))];
    break;
  }
  case 2: {
    const uint32_t in_file = uint32_t(std::min<uint64_t>(size / cs, UINT32_MAX));
    const uint32_t kSizes[] = {0, 1, 2, in_file, in_file + 1, UINT32_MAX, 1u << 20};
    h.header_size = kSizes[rng_.below(std::size(kSizes))];
    break;
  }
  case 3: {  // one feature bit flipped: known ones mostly
    static const uint64_t kBits[] = {qed::kFeatureBackingFile, qed::kFeatureNeedCheck,
                                     qed::kFeatureBackingNoProbe, qed::kFeatureNeedCheck,
                                     8, uint64_t(1) << 63};
    h.features ^= kBits[rng_.below(std::size(kBits))];
    break;
  }
  case 4:
    h.compat_features ^= uint64_t(1) << rng_.below(64);
    break;
  case 5:
    h.autoclear_features ^= uint64_t(1) << rng_.below(64);
    break;
  case 6:
  case 7: {  // the image size at the edges of tables, spans and the maximum
    const uint64_t max = qed::max_image_size(h.cluster_size, h.table_size);
    const uint64_t span = l_.geo.l2_span_bytes();
    const uint64_t k = rng_.range(1, 4);
    const uint64_t kSizes[] = {0, 512, 511, max, max + 512, max - 512, span * k,
                               span * k + 512, span * k - 512, UINT64_MAX,
                               UINT64_MAX - 511, h.image_size + 512, h.image_size * 2,
                               h.image_size - std::min<uint64_t>(h.image_size, 512),
                               cs * k, cs * k + 512};
    h.image_size = kSizes[rng_.below(std::size(kSizes))];
    break;
  }
  case 8: {  // the L1 table elsewhere
    Slot s{0, h.l1_table_offset, true};
    h.l1_table_offset = interesting_offset(s);
    break;
  }
  default:
    backing_name();
    return;
  }
  write_header(h);
}

void ImageMutator::backing_name() {
  qed::Header h = l_.header;
  const uint64_t hb = l_.geo.header_bytes();
  h.features |= qed::kFeatureBackingFile;
  switch (rng_.below(4)) {
  case 0: {  // a plausible name right after the header
    static const char *const kNames[] = {"base.qed", "/dev/null", "../x", "a\0b"};
    const char *name = kNames[rng_.below(4)];
    const size_t len = std::strlen(name) + (name[0] == 'a' ? 2 : 0);
    if (64 + len <= f_.size()) {
      std::memcpy(&f_[64], name, len);
      h.backing_filename_offset = 64;
      h.backing_filename_size = uint32_t(len);
    }
    break;
  }
  case 1: {
    const uint32_t len = h.backing_filename_size ? h.backing_filename_size : 8;
    const uint64_t kOffsets[] = {0, 63, 64, 65, hb - std::min<uint64_t>(hb, len),
                                 hb - std::min<uint64_t>(hb, len) + 1, hb, UINT32_MAX,
                                 (uint64_t(1) << 32) - len};
    h.backing_filename_offset = uint32_t(kOffsets[rng_.below(std::size(kOffsets))]);
    break;
  }
  case 2: {
    const uint64_t off = h.backing_filename_offset;
    const uint64_t kSizes[] = {0, 1, 4096, 4097, UINT32_MAX, hb - std::min(hb, off),
                               hb - std::min(hb, off) + 1};
    h.backing_filename_size = uint32_t(kSizes[rng_.below(std::size(kSizes))]);
    break;
  }
  default:  // no backing file after all, or a raw one
    h.features ^= rng_.below(2) ? qed::kFeatureBackingFile : qed::kFeatureBackingNoProbe;
    break;
  }
  write_header(h);
}

void ImageMutator::resize_file() {
  const uint64_t cs = l_.geo.cluster_size(), size = f_.size();
  const uint64_t l1_end = l_.l1_offset() + l_.geo.table_bytes();
  uint64_t to;
  switch (rng_.below(7)) {
  case 0: to = size - 1; break;
  case 1: to = size - std::min(size, cs); break;
  case 2: to = size / cs * cs; break;
  case 3: to = l1_end - rng_.below(2); break;
  case 4: {  // in the middle of a table
    const uint64_t t = some_table_offset();
    to = t + rng_.below(l_.geo.table_bytes());
    break;
  }
  case 5: to = size + 1; break;
  default: to = round_up(size, cs) + cs * rng_.range(1, 2); break;
  }
  if (to >= qed::kHeaderBytes && to <= max_)
    f_.resize(to);
}

void ImageMutator::append_cluster() {
  const uint64_t cs = l_.geo.cluster_size();
  const uint64_t at = round_up(f_.size(), cs);
  Slot s;
  if (at + cs > max_ || !pick_slot(s, 0))
    return;
  f_.resize(at + cs);
  qt::fill_pattern(&f_[at], cs, rng_.next());
  set_entry(s, at);
}

void ImageMutator::append_table() {
  const uint64_t cs = l_.geo.cluster_size(), tb = l_.geo.table_bytes();
  const uint64_t at = round_up(f_.size(), cs);
  Slot s;
  if (at + tb + cs > max_ || !pick_slot(s, 1))
    return;
  const uint64_t l1_index = (s.at - l_.l1_offset()) / 8;
  const uint64_t used = std::max<uint64_t>(1, l_.geo.l2_entries_used(l1_index));
  f_.resize(at + tb);
  // A few entries: new data, zero clusters, and references to what exists.
  const uint64_t n = rng_.range(1, 6);
  for (uint64_t k = 0; k < n; k++) {
    const uint64_t j = rng_.below(used);
    uint64_t v;
    switch (rng_.below(4)) {
    case 0: v = qed::kEntryZero; break;
    case 1: v = some_data_offset(); break;
    default:
      v = round_up(f_.size(), cs);
      if (v + cs > max_)
        continue;
      f_.resize(v + cs);
      qt::fill_pattern(&f_[v], cs, rng_.next());
      break;
    }
    const std::vector<uint8_t> bytes = qed::encode_entries({&v, 1});
    std::memcpy(&f_[at + 8 * j], bytes.data(), 8);
  }
  set_entry(s, at);
}

void ImageMutator::bytes_of_a_table() {
  // libFuzzer's byte mutations, confined to a few entries of one table or to
  // the header cluster (a table of garbage is mostly invalid entries, which
  // the check reports one by one: slow, and shallow).
  uint64_t off = l_.l1_offset(), len = l_.l1.size() * 8;
  const unsigned pick = unsigned(rng_.below(4));
  if (pick < 2 && !l_.tables.empty()) {
    const Layout::Table &t = l_.tables[rng_.below(l_.tables.size())];
    off = t.offset;
    len = t.entries.size() * 8;
  } else if (pick == 2) {
    off = qed::kHeaderBytes;
    len = l_.geo.header_bytes() - qed::kHeaderBytes;
  }
  len = std::min<uint64_t>(len, f_.size() > off ? f_.size() - off : 0);
  if (len > 256) {  // a window of 32 entries
    off += rng_.below((len - 256) / 8 + 1) * 8;
    len = 256;
  }
  if (len > 0)
    (void)LLVMFuzzerMutate(&f_[off], len, len);
}

void ImageMutator::mutate_once() {
  if (rng_.below(100) < profile_.header_percent) {
    header_field();
    return;
  }
  switch (rng_.below(20)) {
  case 0: case 1: case 2: case 3: case 4: case 5: case 6: case 7:
    set_entry_to_target();
    break;
  case 8: case 9: case 10:
    copy_entry();
    break;
  case 11:
    swap_entries();
    break;
  case 12: case 13:
    resize_file();
    break;
  case 14: case 15:
    append_cluster();
    break;
  case 16: case 17:
    append_table();
    break;
  case 18:
    copy_entry();
    break;
  default:
    bytes_of_a_table();
    break;
  }
}

// The layout as the target sees it (fuzz_translate mends the header first).
Layout layout_as_seen(const uint8_t *data, size_t size, const MutatorProfile &profile) {
  if (!profile.translatable || size < qed::kHeaderBytes)
    return decode_layout(data, size);
  qed::HeaderBytes hb;
  std::memcpy(hb.data(), data, hb.size());
  uint64_t needed;
  return decode_layout(data, size, make_translatable(qed::decode_header(hb), size, needed));
}

size_t emit(const std::vector<uint8_t> &bytes, uint8_t *out, size_t max_size) {
  const size_t n = std::min(bytes.size(), max_size);
  std::memcpy(out, bytes.data(), n);
  return n;
}

}  // namespace

size_t mutate_image(uint8_t *data, size_t size, size_t max_size, unsigned seed,
                    const MutatorProfile &profile) {
  if (!structured())
    return LLVMFuzzerMutate(data, size, max_size);
  qt::Rng rng(seed);
  if (rng.below(100) < 15)  // byte mutation stays in the mix
    return LLVMFuzzerMutate(data, size, max_size);
  ImageMutator m(data, size, max_size, seed ^ 0x5a5a, profile);
  if (!m.decode())
    return LLVMFuzzerMutate(data, size, max_size);
  const unsigned n = unsigned(rng.range(1, 3));
  for (unsigned i = 0; i < n; i++) {
    m.mutate_once();
    if (i + 1 < n && !m.decode())
      break;
  }
  return emit(m.bytes(), data, max_size);
}

size_t cross_over_images(const uint8_t *a, size_t a_size, const uint8_t *b, size_t b_size,
                         uint8_t *out, size_t max_out, unsigned seed,
                         const MutatorProfile &profile) {
  qt::Rng rng(seed);
  const Layout la = layout_as_seen(a, a_size, profile), lb = layout_as_seen(b, b_size, profile);
  const bool tables = structured() && la.valid && lb.valid && !lb.tables.empty() &&
                      !la.l1.empty() && rng.below(4) != 0;
  if (!tables) {
    // A splice: the first part of one, the rest of the other, cut at a
    // 4 KiB boundary (the smallest cluster) when the structure matters.
    const size_t unit = structured() ? 4096 : 1;
    const size_t cut = std::min(a_size, size_t(rng.below(a_size / unit + 1) * unit));
    std::vector<uint8_t> f(a, a + cut);
    if (b_size > cut)
      f.insert(f.end(), b + cut, b + b_size);
    return emit(f, out, max_out);
  }
  // One of b's tables, entries as they are, linked from an L1 entry of a:
  // a's clusters seen through b's entries.
  std::vector<uint8_t> f(a, a + a_size);
  const Layout::Table &t = lb.tables[rng.below(lb.tables.size())];
  const uint64_t cs = la.geo.cluster_size();
  const uint64_t at = round_up(f.size(), cs);
  if (at + la.geo.table_bytes() > max_out)
    return emit(f, out, max_out);
  f.resize(at + la.geo.table_bytes());
  const uint64_t i = rng.below(la.l1.size());
  const size_t n = std::min<size_t>(t.entries.size(), la.geo.table_entries());
  const std::vector<uint8_t> bytes = qed::encode_entries({t.entries.data(), n});
  if (!bytes.empty())
    std::memcpy(&f[at], bytes.data(), bytes.size());
  const uint64_t v = at;
  const std::vector<uint8_t> entry = qed::encode_entries({&v, 1});
  std::memcpy(&f[la.l1_slot(i)], entry.data(), 8);
  return emit(f, out, max_out);
}

}  // namespace fuzz
