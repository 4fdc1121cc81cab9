#include "tests/fuzz/request_harness.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>

#include "tests/fuzz/crash_sweep.h"
#include "tests/fuzz/fuzz_image.h"
#include "tests/support/test_helpers.h"

namespace fuzz {

namespace {

constexpr uint64_t kMiB = 1 << 20;

// QED_FUZZ_TRACE=1 prints every request as it runs (to read a finding).
// `line()` builds the text only then: strings cost a tenth of a run under ASan.
template <typename Line>
void trace(Line &&line) {
  static const bool on = std::getenv("QED_FUZZ_TRACE") != nullptr;
  if (on)
    std::fprintf(stderr, "qed-fuzz: %s\n", std::string(line()).c_str());
}

std::string range(uint64_t pos, uint64_t len) {
  return std::to_string(pos) + "+" + std::to_string(len);
}

}  // namespace

std::shared_ptr<qed::MemoryFile> Harness::memory_file(std::vector<uint8_t> bytes) const {
  return std::make_shared<qed::MemoryFile>(std::move(bytes), path_);
}

Harness::Harness(size_t geometry, Below below, uint64_t cache_bytes)
    : geo_(kGeometries[geometry]),
      path_(world_image_path(geometry, below)),
      cache_bytes_(cache_bytes),
      base_bytes_(base_bytes(below)),
      model_(geo_.disk_bytes, geo_.cluster_size,
             [below](uint64_t pos, uint8_t *out, uint64_t n) { fill_base(below, pos, out, n); },
             [below](uint64_t pos, uint64_t n) { return base_is_zero(below, pos, n); }),
      at_open_(model_) {
  mem_ = memory_file(world_image(geometry, below));
}

void Harness::check_file(qed::File &file, const char *when, uint64_t *leaks) {
  qed::HeaderBytes hb;
  check_ok(file.pread(hb.data(), hb.size(), 0), "read the header");
  auto report = qed::check_image(file, qed::decode_header(hb), qed::CheckMode::kReport);
  if (!report)
    fail(std::string("check ") + when + ": " + report.status().message());
  // Entries past the end of the file are allowed only in an image marked
  // NEED_CHECK, which is not checked here.
  if (!report->clean())
    fail(std::string("check ") + when + " finds more than leaks: " + report->problems.front());
  *leaks = report->leaked_clusters;
}

void Harness::open_session(std::shared_ptr<qed::MemoryFile> mem, uint64_t grow_to, bool record,
                           bool crashed) {
  mem_ = std::move(mem);
  if (record)
    initial_ = mem_->contents();
  qed::HeaderBytes hb;
  check_ok(mem_->pread(hb.data(), hb.size(), 0), "read the header");
  const qed::Header header = qed::decode_header(hb);
  size_before_open_ = header.image_size;
  const uint64_t size_at_open = *mem_->size();
  // The check of what the open finds: a dirty image is checked (and
  // repaired) by the open itself, whose report is looked at below; a clean
  // one here. The first open is of what create_image made: nothing to check.
  const char *when = crashed ? "after a power loss" : "after a close";
  if (reopens_ > 0 && !header.needs_check()) {
    uint64_t leaks = 0;
    check_file(*mem_, when, &leaks);
    if (!crashed && leaks > leaks_after_open_)
      fail("a session without errors leaked " + std::to_string(leaks - leaks_after_open_) +
           " clusters");
    leaks_after_open_ = leaks;
  }
  std::unique_ptr<qed::File> file;
  fault_.reset();
  if (record) {
    fault_ = std::make_shared<qed::FaultFile>(mem_);
    fault_->set_recording(true);
    file = std::make_unique<qt::SharedFile>(fault_);
  } else {
    file = std::make_unique<qt::SharedFile>(mem_);
  }
  qed::OpenOptions o;
  o.read_only = false;
  o.cache_bytes = cache_bytes_;
  o.grow_to = grow_to;
  qed::ChainState chain;
  trace([&] { return "open" + (grow_to ? " growing to " + std::to_string(grow_to) : std::string()) +
        (record ? ", recording" : ""); });
  auto img = qed::Image::open_file(path_, std::move(file), o, chain);
  check_ok(img.status(), "open");
  image_ = std::move(*img);
  changes_.clear();
  flushes_.clear();
  marker(open_tag_);
  if (const auto &report = image_->check_report()) {
    if (!crashed)
      fail("a clean close left NEED_CHECK set");
    if (!report->consistent())
      fail(std::string("check ") + when + " finds more than leaks: " + report->problems.front());
    // The repair gave the leaks back: the ones at the end by cutting the
    // file, the others by punching holes, which still count as leaks (no
    // entry uses them). fuzz_check checks what repairs leave.
    const uint64_t clusters_before = (size_at_open + cs() - 1) / cs();
    const uint64_t clusters_after = (*mem_->size() + cs() - 1) / cs();
    if (clusters_after > clusters_before ||
        clusters_before - clusters_after > report->leaked_clusters)
      fail("the repair took the file from " + std::to_string(clusters_before) + " to " +
           std::to_string(clusters_after) + " clusters, with " +
           std::to_string(report->leaked_clusters) + " leaked");
    leaks_after_open_ = report->leaked_clusters - (clusters_before - clusters_after);
  }
  const uint64_t grown = (grow_to + 511) / 512 * 512;
  if (!crashed && image_->size() != std::max(size(), grown))
    fail("the size after an open is " + std::to_string(image_->size()) + ", not " +
         std::to_string(std::max(size(), grown)));
}

void Harness::marker(uint64_t &tag) {
  tag = next_tag_++;
  if (fault_)
    fault_->add_marker(tag);
}

void Harness::changed(Change c) {
  marker(c.tag);  // the marker that follows the request
  changes_.push_back(c);
}

uint64_t Harness::grow_target(uint8_t pick) const {
  // The engine refuses to grow a disk over a larger backing file (the new
  // space would show the backing data); unit-image tests that refusal.
  if (base_bytes_ > size())
    return 0;
  const uint64_t deltas[] = {512, cs(), cs() + 512, span(), span() + cs() + 1536, 3 * kMiB};
  return std::min<uint64_t>(size() + deltas[pick % std::size(deltas)], 24 * kMiB);
}

uint64_t Harness::resolve_pos(const Place &p) const {
  const uint64_t n = size();
  const uint64_t skew = uint64_t(int64_t(int8_t(p.pos_kind)) >> 2);  // -32..31
  uint64_t pos;
  switch (p.pos_kind & 3) {
  case 0: pos = p.pos_raw % n; break;
  case 1: pos = p.pos_raw % (n / cs() + 1) * cs() + skew; break;
  case 2: pos = p.pos_raw % (n / span() + 1) * span() + skew * 64; break;
  default: pos = n - 1 - p.pos_raw % std::min(n, 3 * cs()); break;
  }
  return pos < n ? pos : n - 1 - (pos % std::min<uint64_t>(n, 512));
}

uint64_t Harness::resolve_len(const Place &p, uint64_t pos) const {
  uint64_t len;
  switch (p.len_kind & 3) {
  case 0: len = 1 + p.len_raw % 700; break;
  // Mostly short: a run costs about the bytes it moves. Two clusters and a
  // bit still cross every kind of edge.
  case 1: len = cs() * (1 + (p.len_kind >> 2) % 2) + (p.len_kind >> 4) * 37; break;
  case 2: len = 1 + p.len_raw % 8192; break;
  default: len = 512 * (1 + (p.len_kind >> 2) % 8); break;
  }
  return std::max<uint64_t>(1, std::min(len, size() - pos));
}

void Harness::do_write(const Request &r) {
  const bool fua = r.flags & 4;
  uint64_t pos = resolve_pos(r.where), len = resolve_len(r.where, pos);
  if ((r.flags & 3) == 1) {  // sector-aligned
    pos &= ~uint64_t(511);
    len = std::min((len + 511) & ~uint64_t(511), size() - pos);
  } else if ((r.flags & 3) == 2) {  // whole clusters
    pos = pos / cs() * cs();
    len = std::min((len + cs() - 1) / cs() * cs(), size() - pos);
  }
  const uint64_t id = next_id_++;
  buf_.resize(len);
  fill_data(id, pos, buf_.data(), len);
  check_ok(image_->write(buf_.data(), len, pos, fua),
           "write " + std::to_string(pos) + "+" + std::to_string(len));
  model_.write(pos, buf_.data(), len);
  trace([&] { return "write " + range(pos, len) + (fua ? " fua" : "") + " id " + std::to_string(id); });
  changed({Change::kWrite, pos, len, id, fua, 0});
}

void Harness::do_zero(const Request &r) {
  const uint64_t pos = resolve_pos(r.where), len = resolve_len(r.where, pos);
  qed::ZeroFlags z;
  z.may_trim = r.flags & 1;
  z.fua = r.flags & 2;
  z.fast = (r.flags & 12) == 12;
  const qed::Status s = image_->zero(pos, len, z);
  if (z.fast && s.code() == qed::Status::Code::kNotSupported) {
    // A fast zero that would have to write is refused before anything
    // changes (the client then writes zeroes itself): the model stays.
    trace([&] { return "zero " + range(pos, len) + " fast: refused, not fast"; });
    return;
  }
  check_ok(s, "zero " + std::to_string(pos) + "+" + std::to_string(len));
  model_.zero(pos, len);
  trace([&] { return "zero " + range(pos, len) + (z.may_trim ? " may_trim" : "") + (z.fua ? " fua" : "") +
        (z.fast ? " fast" : ""); });
  changed({Change::kZero, pos, len, 0, z.fua, 0});
}

void Harness::do_trim(const Request &r) {
  const bool fua = r.flags & 1;
  const uint64_t pos = resolve_pos(r.where), len = resolve_len(r.where, pos);
  check_ok(image_->trim(pos, len, fua), "trim " + std::to_string(pos) + "+" + std::to_string(len));
  model_.trim(pos, len);
  trace([&] { return "trim " + range(pos, len) + (fua ? " fua" : ""); });
  changed({Change::kTrim, pos, len, 0, fua, 0});
}

void Harness::do_flush() {
  FlushDone f{changes_.size(), 0};
  check_ok(image_->flush(), "flush");
  trace([&] { return "flush"; });
  marker(f.tag);
  flushes_.push_back(f);
}

void Harness::read_and_check(uint64_t pos, uint64_t len, const std::string &what) {
  buf_.resize(len);
  check_ok(image_->read(buf_.data(), len, pos), what);
  const std::string problem = model_.check_read(pos, buf_.data(), len);
  if (!problem.empty())
    fail(what + " " + std::to_string(pos) + "+" + std::to_string(len) + ": " + problem);
}

void Harness::do_read(const Request &r) {
  const uint64_t pos = resolve_pos(r.where), len = resolve_len(r.where, pos);
  trace([&] { return "read " + range(pos, len); });
  read_and_check(pos, len, "read");
}

void Harness::do_extents(const Request &r) {
  const size_t max = r.flags & 1 ? 1 + r.count % 4 : 1024;
  const uint64_t pos = resolve_pos(r.where);
  const uint64_t len = r.flags & 2 ? size() - pos : resolve_len(r.where, pos);
  trace([&] { return "extents " + range(pos, len) + " max " + std::to_string(max); });
  auto ex = image_->extents(pos, len, max);
  check_ok(ex.status(), "extents");
  const std::string problem = check_extents(*ex, pos, len, max, &model_);
  if (!problem.empty())
    fail("extents " + std::to_string(pos) + "+" + std::to_string(len) + ": " + problem);
}

std::vector<uint64_t> Harness::session_pages() const {
  std::vector<uint64_t> pages;
  for (const Change &c : changes_)
    for (uint64_t p = c.pos / DiskModel::kPageBytes; p * DiskModel::kPageBytes < c.pos + c.len; p++)
      pages.push_back(p);
  std::sort(pages.begin(), pages.end());
  pages.erase(std::unique(pages.begin(), pages.end()), pages.end());
  return pages;
}

void Harness::verify(const std::vector<uint64_t> &pages, const char *when) {
  for (uint64_t page : pages) {
    const uint64_t pos = page * DiskModel::kPageBytes;
    if (pos >= size())
      break;
    read_and_check(pos, std::min(DiskModel::kPageBytes, size() - pos),
                   std::string("read ") + when);
  }
}

std::string Harness::check_after_crash(uint64_t pos, const uint8_t *got, uint64_t len,
                                       const std::vector<const Change *> &changes,
                                       const std::vector<bool> &durable) {
  // Per byte: accepted (some change that may show wrote what it reads), or
  // closed (a durable change lies between it and anything older).
  enum : uint8_t { kOpen, kAccepted, kClosed };
  std::vector<uint8_t> verdict(len, kOpen), wrote(len);
  const uint64_t end = pos + len;
  // From the latest change back to the last durable one that set a value.
  for (size_t i = changes.size(); i-- > 0;) {
    const Change &c = *changes[i];
    const uint64_t from = std::max(pos, c.pos), to = std::min(end, c.pos + c.len);
    if (from >= to)
      continue;
    if (c.kind == Change::kWrite)
      fill_data(c.id, from, wrote.data() + (from - pos), to - from);
    for (uint64_t b = from; b < to; b++) {
      uint8_t &v = verdict[b - pos];
      if (v != kOpen)
        continue;
      const uint8_t have = got[b - pos];
      switch (c.kind) {
      case Change::kWrite:
        v = have == wrote[b - pos] ? kAccepted : durable[i] ? kClosed : kOpen;
        break;
      case Change::kZero:
        v = have == 0 ? kAccepted : durable[i] ? kClosed : kOpen;
        break;
      case Change::kTrim: {  // only whole clusters may read zero; never a floor
        const uint64_t start = b / cs() * cs();
        if (have == 0 && start >= c.pos && start + cs() <= c.pos + c.len)
          v = kAccepted;
        break;
      }
      }
    }
  }
  std::vector<uint8_t> was(len), state(len);
  at_open_.states(pos, len, was.data(), state.data());
  for (uint64_t i = 0; i < len; i++) {
    const uint8_t have = got[i];
    const bool ok = verdict[i] == kAccepted ||
                    (verdict[i] == kOpen && (state[i] == DiskModel::kUnknown || have == was[i] ||
                                             (state[i] == DiskModel::kMaybeZero && have == 0)));
    if (!ok) {
      uint8_t now;
      model_.state_at(pos + i, now);
      return "byte " + std::to_string(pos + i) + " reads " + std::to_string(have) +
             ", which no durable or later change left (the model held " + std::to_string(now) +
             ", the disk at the open " + std::to_string(was[i]) + ")";
    }
  }
  return "";
}

bool Harness::reads_as_model(uint64_t pos, const uint8_t *got, uint64_t len) const {
  std::vector<uint8_t> values(len), states(len);
  model_.states(pos, len, values.data(), states.data());
  if (std::memcmp(values.data(), got, len) != 0)
    return false;
  return std::all_of(states.begin(), states.end(),
                     [](uint8_t st) { return st == DiskModel::kKnown; });
}

void Harness::crash_and_reopen(const Request &r, bool record_next) {
  image_.reset();  // never closed: the power went out
  crash::Log log = fault_->take_records();
  const size_t log_size = log.size();
  std::map<uint64_t, size_t> at;  // marker tag -> log index
  for (size_t i = 0; i < log.size(); i++)
    if (log[i].kind == crash::Kind::kMarker)
      at[log[i].offset] = i;
  // Mostly at the end of the log (every request returned); else anywhere.
  const size_t k = r.point < 128 ? log.size() : size_t(r.point - 128) * (log.size() + 1) / 128;
  const auto how = r.survival % 3 == 0   ? crash::Survival::kNone
                   : r.survival % 3 == 1 ? crash::Survival::kAll
                                         : crash::Survival::kRandom;
  std::mt19937_64 rng(r.seed);
  trace([&] { return "power loss at log position " + std::to_string(k) + " of " + std::to_string(log_size) +
        (how == crash::Survival::kNone  ? ", unsynced operations lost"
         : how == crash::Survival::kAll ? ", unsynced operations kept"
                                        : ", unsynced operations torn"); });
  crash::CrashStates states(std::move(initial_), std::move(log));
  std::vector<uint8_t> bytes = states.state_at(k, how, rng);

  // Which changes may show (a record of theirs, or of a later request that
  // wrote their metadata, is in the state), and which are durable (a flush
  // that began after them returned, or they were FUA and returned).
  size_t floor = 0;
  for (const FlushDone &f : flushes_)
    if (at.at(f.tag) < k)
      floor = std::max(floor, f.changes_before);
  std::vector<const Change *> shown;
  std::vector<bool> durable;
  uint64_t before_it = open_tag_;  // the last marker before the request began
  for (size_t i = 0; i < changes_.size(); i++) {
    const Change &c = changes_[i];
    if (at.at(before_it) + 1 >= k)
      break;
    shown.push_back(&c);
    durable.push_back(i < floor || (c.fua && at.at(c.tag) < k));
    before_it = c.tag;
  }
  // Flush markers lie between changes too: the test above uses the change
  // before, which only lets more through.
  const bool opened = at.at(open_tag_) < k;
  const uint64_t before = size_before_open_, after = size();

  std::vector<uint64_t> pages = model_.touched_pages();
  reopens_++;
  const bool has_backing = base_bytes_ != 0;
  const std::string structure =
      qt::check_structure(bytes, past_eof_allowed(bytes, has_backing));
  if (!structure.empty())
    fail("structural check after a power loss: " + structure);
  // The structure of many more states this log allows (crash_sweep.h).
  const std::string swept = sweep_structure(states, has_backing, r.seed);
  if (!swept.empty())
    fail("structural check after a power loss (sweep) " + swept);
  const uint64_t grow_to = r.flags & 2 ? grow_target(r.count) : 0;
  open_session(memory_file(std::move(bytes)), grow_to, record_next,
               true);
  // The size: the growing open of the lost session may not have reached the
  // disk; this open may grow it again.
  const uint64_t got = image_->size();
  const uint64_t grown = (grow_to + 511) / 512 * 512;
  if (got != std::max(after, grown) && (opened || got != std::max(before, grown)))
    fail("the size after a power loss is " + std::to_string(got) + ", expected " +
         std::to_string(std::max(after, grown)));
  model_.resize(got);
  std::vector<const Change *> here;
  std::vector<bool> here_durable;
  for (uint64_t page : pages) {
    const uint64_t pos = page * DiskModel::kPageBytes;
    if (pos >= got)
      break;
    const uint64_t len = std::min(DiskModel::kPageBytes, got - pos);
    buf_.resize(len);
    check_ok(image_->read(buf_.data(), len, pos), "read after a power loss");
    here.clear();
    here_durable.clear();
    for (size_t i = 0; i < shown.size(); i++) {
      if (shown[i]->pos < pos + len && pos < shown[i]->pos + shown[i]->len) {
        here.push_back(shown[i]);
        here_durable.push_back(durable[i]);
      }
    }
    // A page no change of the session reached holds what it held at the open
    // (at_open_ is replaced below, so it may settle as it compares).
    std::string problem;
    if (here.empty()) {
      problem = at_open_.check_read(pos, buf_.data(), len);
    } else if (shown.size() < changes_.size() || !reads_as_model(pos, buf_.data(), len)) {
      // Reading what the model holds is always allowed when every change may
      // show: the latest change of a byte is never older than its last
      // durable one. Otherwise, byte by byte.
      problem = check_after_crash(pos, buf_.data(), len, here, here_durable);
    }
    if (!problem.empty())
      fail("after a power loss at log position " + std::to_string(k) + " of " +
           std::to_string(log_size) + ": " + problem);
    model_.write(pos, buf_.data(), len);  // what the disk holds now
  }
  if (record_next)
    at_open_ = model_;
}

void Harness::do_reopen(const Request &r, bool record_next) {
  if (r.flags & 1) {
    crash_and_reopen(r, record_next);
    return;
  }
  check_ok(image_->close(), "close");
  trace([&] { return "close"; });
  image_.reset();
  // What the session changed must read the same after the reopen (all of it
  // is checked after the last one).
  const std::vector<uint64_t> pages = session_pages();
  reopens_++;
  open_session(mem_, r.flags & 2 ? grow_target(r.count) : 0, record_next, false);
  model_.resize(image_->size());
  if (record_next)  // the snapshot a power loss is judged by
    at_open_ = model_;
  verify(pages, "after a reopen");
}

void Harness::run(const std::vector<Request> &requests) {
  // A session keeps its file's log only if it ends in a power loss.
  std::vector<size_t> reopens;
  for (size_t i = 0; i < requests.size() && reopens.size() < kMaxReopens; i++)
    if (requests[i].kind == Request::kReopen)
      reopens.push_back(i);
  auto crash_ends = [&](size_t session) {
    return session < reopens.size() && (requests[reopens[session]].flags & 1);
  };
  open_session(mem_, 0, crash_ends(0), false);
  size_t session = 0;
  for (size_t i = 0; i < requests.size(); i++) {
    const Request &r = requests[i];
    switch (r.kind) {
    case Request::kWrite: do_write(r); break;
    case Request::kZero: do_zero(r); break;
    case Request::kTrim: do_trim(r); break;
    case Request::kFlush: do_flush(); break;
    case Request::kRead: do_read(r); break;
    case Request::kExtents: do_extents(r); break;
    case Request::kReopen:
      if (session < reopens.size() && reopens[session] == i) {
        session++;
        do_reopen(r, crash_ends(session));
      }
      break;
    }
  }
  check_ok(image_->close(), "close at the end");
  image_.reset();
  reopens_++;
  open_session(mem_, 0, false, false);
  verify(model_.touched_pages(), "after the last reopen");
  image_.reset();
}

}  // namespace fuzz
