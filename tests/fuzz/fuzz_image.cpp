#include "tests/fuzz/fuzz_image.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "tests/fuzz/disk_model.h"
#include "lib/table.h"
#include "tests/support/test_helpers.h"

namespace fuzz {

void fail(const std::string &what) {
  std::fprintf(stderr, "fuzz finding: %s\n", what.c_str());
  std::abort();
}

qed::Status BytesFile::pread(void *buf, size_t count, uint64_t offset) {
  auto *out = static_cast<uint8_t *>(buf);
  const uint64_t have = offset < size_ ? std::min<uint64_t>(count, size_ - offset) : 0;
  if (have)
    std::memcpy(out, data_ + offset, have);
  if (count > have)
    std::memset(out + have, 0, count - have);
  return qed::Status::ok();
}

Layout decode_layout(const uint8_t *data, size_t size) {
  qed::HeaderBytes hb{};
  std::memcpy(hb.data(), data, std::min(size, hb.size()));
  return decode_layout(data, size, qed::decode_header(hb));
}

Layout decode_layout(const uint8_t *data, size_t size, const qed::Header &h) {
  Layout l;
  l.header = h;
  l.file_size = size;
  l.valid = qed::validate_header(h, size).is_ok();
  if (!l.valid)
    return l;
  l.geo = qed::Geometry(h);
  BytesFile file(data, size);
  const uint64_t l1_inside = (size - h.l1_table_offset) / 8;  // validated: the L1 fits
  l.l1.resize(std::min(l.geo.l1_entries_used(), l1_inside));
  (void)qed::read_table_entries(file, h.l1_table_offset, l.l1);
  const uint64_t cs = h.cluster_size;
  for (uint64_t i = 0; i < l.l1.size() && l.tables.size() < Layout::kMaxTables; i++) {
    const uint64_t off = l.l1[i];
    if (off == 0 || off % cs != 0 || off < l.geo.header_bytes() || off >= size)
      continue;
    Layout::Table t{i, off, {}};
    t.entries.resize(std::min(l.geo.l2_entries_used(i), (size - off) / 8));
    (void)qed::read_table_entries(file, off, t.entries);
    l.tables.push_back(std::move(t));
  }
  return l;
}

qed::Header make_translatable(qed::Header h, uint64_t file_size, uint64_t &needed) {
  h.magic = qed::kMagic;
  if (!qed::is_valid_cluster_size(h.cluster_size) || h.cluster_size > 65536)
    h.cluster_size = 4096u << (h.cluster_size % 5);
  if (!qed::is_valid_table_size(h.table_size))
    h.table_size = 1u << (h.table_size % 5);
  while (h.table_size > 1 && uint64_t(h.table_size) * h.cluster_size > (16u << 10))
    h.table_size >>= 1;
  if (h.header_size == 0 || h.header_size > 4)
    h.header_size = 1 + h.header_size % 4;
  // The fuzzer must not open files by name.
  h.features &= qed::kFeatureNeedCheck | qed::kFeatureBackingNoProbe;
  h.image_size &= ~uint64_t(511);
  h.image_size = std::min(h.image_size, qed::max_image_size(h.cluster_size, h.table_size));
  const uint64_t cs = h.cluster_size;
  const uint64_t header_bytes = uint64_t(h.header_size) * cs;
  const uint64_t table_bytes = uint64_t(h.table_size) * cs;
  const uint64_t l1 = h.l1_table_offset;
  if (l1 % cs != 0 || l1 < header_bytes || l1 > std::max(file_size, header_bytes))
    h.l1_table_offset = header_bytes;
  needed = std::max(file_size, h.l1_table_offset + table_bytes);
  return h;
}

std::unique_ptr<qed::Image> open_memory(std::vector<uint8_t> bytes, bool read_only,
                                        qed::CheckPolicy check) {
  auto file = std::make_unique<qed::MemoryFile>(std::move(bytes), "/nonexistent/fuzz.qed");
  qed::OpenOptions o;
  o.read_only = read_only;
  o.cache_bytes = 64 * 1024;  // small: tables are evicted and loaded again
  o.allow_backing = false;    // the fuzzer must not open files by name
  o.check = check;
  qed::ChainState chain;
  auto image = qed::Image::open_file("/nonexistent/fuzz.qed", std::move(file), o, chain);
  return image ? std::move(*image) : nullptr;
}

std::vector<uint64_t> probe_points(const Layout &l, size_t max) {
  std::vector<uint64_t> p;
  if (!l.valid || l.geo.image_size() == 0)
    return p;
  const uint64_t size = l.geo.image_size(), cs = l.geo.cluster_size();
  const uint64_t span = l.geo.l2_span_bytes();
  auto add = [&](uint64_t pos) {
    if (pos < size)
      p.push_back(pos);
  };
  add(0);
  add(size - 1);
  add(l.geo.cluster_start(size - 1));
  for (uint64_t i = 0; i < l.l1.size(); i++) {
    if (l.l1[i] == 0)
      continue;
    const uint64_t start = l.geo.l2_span_start(i);
    add(start);
    add(start + std::min(span, size - start) - 1);
  }
  for (const Layout::Table &t : l.tables) {
    const uint64_t start = l.geo.l2_span_start(t.l1_index);
    unsigned taken = 0;
    for (uint64_t j = 0; j < t.entries.size() && taken < 24; j++) {
      if (t.entries[j] == 0)
        continue;
      add(start + j * cs);
      taken++;
    }
  }
  std::sort(p.begin(), p.end());
  p.erase(std::unique(p.begin(), p.end()), p.end());
  if (p.size() > max) {  // an even sample, keeping both ends
    std::vector<uint64_t> sample;
    for (size_t i = 0; i < max; i++)
      sample.push_back(p[i * (p.size() - 1) / (max - 1)]);
    p = std::move(sample);
  }
  return p;
}

std::string check_extents(const std::vector<qed::Extent> &ex, uint64_t pos, uint64_t len,
                          size_t max, DiskModel *model) {
  if (len > 0 && ex.empty())
    return "no extent for a non-empty range";
  if (ex.size() > max)
    return std::to_string(ex.size()) + " extents, more than the " + std::to_string(max) +
           " asked for";
  uint64_t at = pos;
  for (const qed::Extent &e : ex) {
    if (e.offset != at || e.length == 0 || e.length > pos + len - at)
      return "extent at " + std::to_string(e.offset) + " (+" + std::to_string(e.length) +
             ") does not continue the run at " + std::to_string(at) + " within " +
             std::to_string(pos) + "+" + std::to_string(len);
    if (e.zero && model && !model->settle_zero(e.offset, e.length))
      return "extent at " + std::to_string(e.offset) + " (+" + std::to_string(e.length) +
             ") says zero, but the disk holds data there";
    at += e.length;
  }
  return "";
}

namespace {

// At most this many bytes are read per exercise, so big clusters stay cheap.
constexpr uint64_t kReadBudget = 128 * 1024;

void read_checked(qed::Image &image, uint64_t pos, uint64_t len, DiskModel *model,
                  std::vector<uint8_t> &buf, const char *what) {
  buf.resize(len);
  qed::Status s = image.read(buf.data(), len, pos);
  if (!s.is_ok()) {
    if (model)
      fail(std::string(what) + ": read at " + std::to_string(pos) + " failed on an image "
           "the check found consistent: " + s.message());
    return;
  }
  if (model) {
    std::string problem = model->check_read(pos, buf.data(), len);
    if (!problem.empty())
      fail(std::string(what) + ": read " + std::to_string(pos) + "+" + std::to_string(len) +
           ": " + problem);
  }
}

}  // namespace

void exercise_read(qed::Image &image, const std::vector<uint64_t> &probes, DiskModel *model) {
  const uint64_t size = image.size(), cs = image.geometry().cluster_size();
  std::vector<uint8_t> buf;
  uint64_t budget = kReadBudget;
  for (uint64_t p : probes) {
    // The cluster at p with a few bytes of each neighbour, or only its edges
    // once the budget is spent.
    const uint64_t start = p - std::min<uint64_t>(p, 17);
    uint64_t len = std::min(size - start, (p - start) + cs + 17);
    if (len > budget)
      len = std::min<uint64_t>(len, 600);
    budget -= std::min(budget, len);
    read_checked(image, start, len, model, buf, "exercise_read");
    const uint64_t end = std::min(size, p + cs + 17);
    if (start + len < end) {  // only the head was read: the tail too
      const uint64_t from = std::max(start + len, end - std::min<uint64_t>(end, 317));
      read_checked(image, from, end - from, model, buf, "exercise_read (cluster end)");
    }
  }
  auto whole = image.extents(0, size, 64);
  if (whole) {
    std::string problem = check_extents(*whole, 0, size, 64, model);
    if (!problem.empty())
      fail("extents of the whole disk: " + problem);
  } else if (model) {
    fail("extents failed on a consistent image: " + whole.status().message());
  }
  for (size_t i = 0; i < probes.size(); i += 1 + probes.size() / 4) {
    const uint64_t p = probes[i], len = std::min(size - p, 4 * cs);
    auto ex = image.extents(p, len, 3);
    if (!ex)
      continue;
    std::string problem = check_extents(*ex, p, len, 3, model);
    if (!problem.empty())
      fail("extents at " + std::to_string(p) + ": " + problem);
  }
}

void exercise_write(qed::Image &image, const std::vector<uint64_t> &probes, uint64_t seed,
                    DiskModel *model) {
  const uint64_t size = image.size(), cs = image.geometry().cluster_size();
  if (size == 0)
    return;
  qt::Rng rng(seed);
  std::vector<uint8_t> data, back;
  std::vector<uint64_t> targets;
  for (size_t i = 0; i < probes.size() && targets.size() < 8; i += 1 + probes.size() / 8)
    targets.push_back(probes[i]);
  targets.push_back(size - 1);  // the end of the disk
  for (uint64_t p : targets) {
    const unsigned op = unsigned(rng.below(5));
    uint64_t pos = p, len = 0;
    qed::Status s;
    switch (op) {
    case 0:  // byte-granular, across the end of the cluster
      len = rng.range(1, 700);
      pos = image.geometry().cluster_start(p) + cs - std::min(cs, len / 2 + 1);
      break;
    case 1:  // the whole cluster
      pos = image.geometry().cluster_start(p);
      len = cs;
      break;
    case 2:  // zero from inside the cluster to inside the next
    case 3:  // trim two clusters
      pos = image.geometry().cluster_start(p) + (op == 2 ? rng.below(cs) : 0);
      len = op == 2 ? cs : 2 * cs;
      break;
    default:
      len = rng.range(1, 100);
      break;
    }
    if (pos >= size)
      pos = size - 1;
    len = std::min(len, size - pos);
    if (op == 2) {
      qed::ZeroFlags z;
      z.may_trim = rng.below(2);
      s = image.zero(pos, len, z);
      if (model)
        s.is_ok() ? model->zero(pos, len) : model->forget(pos, len);
    } else if (op == 3) {
      s = image.trim(pos, len, false);
      if (model)
        s.is_ok() ? model->trim(pos, len) : model->forget(pos, len);
    } else {
      data.resize(len);
      qt::fill_pattern(data.data(), len, rng.next());
      s = image.write(data.data(), len, pos, rng.below(8) == 0);
      if (model)
        s.is_ok() ? model->write(pos, data.data(), len) : model->forget(pos, len);
    }
    if (!s.is_ok() && model)
      fail("request " + std::to_string(op) + " at " + std::to_string(pos) + "+" +
           std::to_string(len) + " failed on a consistent image: " + s.message());
    if (model && op != 3)
      read_checked(image, pos, len, model, back, "read after write");
  }
  qed::Status s = image.flush();
  if (!s.is_ok() && model)
    fail("flush failed on a consistent image: " + s.message());
}

void exercise_read_write(std::vector<uint8_t> file, const std::vector<uint64_t> &probes,
                         uint64_t seed, bool consistent) {
  auto mem = std::make_shared<qed::MemoryFile>(std::move(file), "/nonexistent/fuzz.qed");
  qed::OpenOptions o;
  o.read_only = false;
  o.cache_bytes = 64 * 1024;
  o.allow_backing = false;
  qed::ChainState chain;
  auto opened = qed::Image::open_file(mem->name(), std::make_unique<qt::SharedFile>(mem), o, chain);
  if (!opened)
    return;
  qed::Image &image = **opened;
  std::unique_ptr<DiskModel> model;
  if (consistent)
    model = std::make_unique<DiskModel>(image.size(), image.geometry().cluster_size(), nullptr);
  // Reads before the writes are fuzz_translate's read-only pass; here the
  // writes read back what they wrote, then everything is read again.
  exercise_write(image, probes, seed, model.get());
  exercise_read(image, probes, model.get());
  qed::Status closed = image.close();
  if (!model)
    return;
  if (!closed.is_ok())
    fail("close failed on a consistent image: " + closed.message());
  opened->reset();
  // What the engine wrote into a consistent image is consistent, and it
  // reads back after a reopen.
  const std::vector<uint8_t> after = mem->contents();
  qed::HeaderBytes hb;
  std::memcpy(hb.data(), after.data(), hb.size());
  const qed::Header h = qed::decode_header(hb);
  if (h.needs_check())
    fail("NEED_CHECK is still set after a clean close");
  BytesFile bytes(after.data(), after.size());
  auto report = qed::check_image(bytes, h, qed::CheckMode::kReport);
  if (!report || !report->clean())
    fail("the check after a clean close finds: " +
         (report ? report->problems.front() : report.status().message()));
  auto again = open_memory(after, true, qed::CheckPolicy::kOff);
  if (!again)
    fail("the image does not open after a clean close");
  // Only what was written can have changed: read those pages again.
  std::vector<uint8_t> buf;
  for (uint64_t page : model->touched_pages()) {
    const uint64_t pos = page * DiskModel::kPageBytes;
    if (pos < again->size())
      read_checked(*again, pos, std::min(DiskModel::kPageBytes, again->size() - pos), model.get(),
                   buf, "read after a reopen");
  }
}

}  // namespace fuzz
