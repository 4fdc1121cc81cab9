#include "tests/syscall/state_check.h"

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "lib/check.h"
#include "tests/support/fault_file.h"
#include "lib/format.h"
#include "lib/image.h"

namespace qsys {
namespace {

using crash::Survival;

std::string first_problem(const qed::CheckReport &r) {
  return r.problems.empty() ? r.summary() : r.problems.front();
}

// The engine's check of the file at `path`, without repairing.
std::string engine_check(const std::string &path, const char *when) {
  auto file = qed::open_posix_file(path, qed::OpenMode::kReadOnly);
  if (!file)
    return std::string(when) + ": " + file.status().message();
  auto size = (*file)->size();
  qed::HeaderBytes hb;
  if (!size || !(*file)->pread(hb.data(), hb.size(), 0).is_ok())
    return std::string(when) + ": cannot read the header";
  const qed::Header h = qed::decode_header(hb);
  if (qed::Status st = qed::validate_header(h, *size); !st.is_ok())
    return std::string(when) + ": header: " + st.message();
  auto report = qed::check_image(**file, h, qed::CheckMode::kReport);
  if (!report)
    return std::string(when) + ": " + report.status().message();
  if (!report->consistent())
    return std::string(when) + ": " + first_problem(*report);
  return {};
}

// The in-process oracle: check, open read-write with check=auto (the engine's
// own open path, repairing), read everything, close, check again.
std::string check_in_process(const std::string &path, const Oracle &oracle, uint64_t bound,
                             uint64_t disk_bytes) {
  if (std::string bad = engine_check(path, "check before repair"); !bad.empty())
    return bad;
  qed::OpenOptions o;
  o.read_only = false;
  o.check = qed::CheckPolicy::kAuto;
  auto image = qed::Image::open(path, o);
  if (!image)
    return "open read-write: " + image.status().message();
  std::vector<uint8_t> disk(disk_bytes);
  if (qed::Status st = (*image)->read(disk.data(), disk.size(), 0); !st.is_ok())
    return "read: " + st.message();
  if (std::string bad = oracle.check(disk.data(), bound); !bad.empty())
    return "data: " + bad;
  if (qed::Status st = (*image)->close(); !st.is_ok())
    return "close: " + st.message();
  image->reset();
  return engine_check(path, "check after repair");
}

// The plugin's path: a fresh nbdkit on the file (check=auto repairs it), the
// whole disk read over NBD, then qemu-img check of what nbdkit left.
std::string check_through_nbdkit(const Tools &tools, const std::string &dir,
                                 const std::string &path, const Oracle &oracle, uint64_t bound) {
  Nbdkit server;
  std::string why;
  if (!server.start(tools, dir, {"file=" + path}, {}, false, why))
    return "nbdkit refused the image: " + why;
  std::vector<uint8_t> disk;
  std::string bad;
  if (!read_disk(server.socket(), disk, why))
    bad = "reading through nbdkit: " + why;
  else if (std::string b = oracle.check(disk.data(), bound); !b.empty())
    bad = "data through nbdkit: " + b;
  if (!server.stop(why) && bad.empty())
    bad = why;
  std::string report;
  if (bad.empty() && !qemu_check(path, report))
    bad = "qemu-img check after nbdkit: " + report;
  return bad;
}

const char *survival_name(Survival s) {
  return s == Survival::kNone ? "none" : s == Survival::kAll ? "all" : "random";
}

// Crash points: two thirds uniform over the log, a third just after a
// successful barrier (inside the metadata writes of a flush), increasing.
std::vector<size_t> crash_points(const std::vector<Op> &ops, uint64_t count,
                                 std::mt19937_64 &rng) {
  std::vector<size_t> barriers;
  for (size_t i = 0; i < ops.size(); i++)
    if (ops[i].is_barrier() && ops[i].ok())
      barriers.push_back(i);
  std::vector<size_t> points;
  for (uint64_t i = 0; i < count; i++) {
    if (i % 3 == 2 && !barriers.empty())
      points.push_back(std::min(ops.size(), barriers[rng() % barriers.size()] + 1 + rng() % 4));
    else
      points.push_back(size_t(rng() % (ops.size() + 1)));
  }
  std::sort(points.begin(), points.end());
  return points;
}

}  // namespace

// A clean image (NEED_CHECK clear) is never checked at open, so whatever it
// leaks stays leaked: it must at least not end in clusters nothing uses (a
// failed allocation must give its clusters back, close must cut the tail).
// The engine's repair, run on an in-memory copy, says how much it would cut.
std::string clean_tail_check(const std::vector<uint8_t> &bytes, uint64_t &leaked) {
  qed::MemoryFile file(bytes, "copy");
  qed::HeaderBytes hb;
  if (bytes.size() < hb.size())
    return "file too small";
  std::memcpy(hb.data(), bytes.data(), hb.size());
  const qed::Header h = qed::decode_header(hb);
  if (h.needs_check())
    return {};  // the next open checks and repairs it
  auto report = qed::check_image(file, h, qed::CheckMode::kRepair);
  if (!report)
    return "check of the clean image: " + report.status().message();
  leaked = report->leaked_clusters;
  auto size = file.size();
  if (size && *size < bytes.size())
    return "the image was left clean (NEED_CHECK clear), yet its last " +
           std::to_string(bytes.size() - *size) + " bytes are clusters nothing uses (" +
           std::to_string(report->leaked_clusters) + " leaked clusters in all); no open will " +
           "reclaim them";
  return {};
}

void StateChecker::check(Recording &rec, const std::vector<uint8_t> &bytes, uint64_t bound,
                         const std::string &label, bool via_qemu, bool via_nbdkit) {
  const std::string path = rec.dir + "/state.qed";
  c_.states++;
  std::string bad;
  if (!write_file(path, bytes)) {
    bad = "cannot write " + path;
  } else {
    bad = check_in_process(path, *rec.oracle, bound, rec.scenario.disk_bytes);
    std::string report;
    if (bad.empty() && via_qemu) {
      c_.via_qemu++;
      if (!qemu_check(path, report))
        bad = "qemu-img check after repair: " + report;
    }
  }
  if (bad.empty() && via_nbdkit) {
    c_.via_nbdkit++;
    const std::string copy = rec.dir + "/state-nbdkit.qed";
    bad = write_file(copy, bytes) ? check_through_nbdkit(tools_, rec.dir, copy, *rec.oracle, bound)
                                  : "cannot write " + copy;
  }
  if (!bad.empty())
    violation(rec, label, bad, bytes);
}

void StateChecker::reopen(Recording &rec) {
  c_.via_nbdkit++;
  const std::string copy = rec.dir + "/reopen.qed";
  std::string bad = write_file(copy, rec.final_file)
                        ? check_through_nbdkit(tools_, rec.dir, copy, *rec.oracle, UINT64_MAX)
                        : "cannot write " + copy;
  if (!bad.empty())
    violation(rec, "reopen by the plugin", bad, rec.final_file);
}

void StateChecker::violation(Recording &rec, const std::string &label, const std::string &why,
                             const std::vector<uint8_t> &bytes) {
  c_.violations++;
  std::string saved;
  if (keep() && !bytes.empty()) {
    saved = rec.dir + "/violation-" + std::to_string(c_.violations) + ".qed";
    write_file(saved, bytes);
    saved = " (state saved as " + saved + ")";
  }
  if (run_violations_++ < per_run_ && printed_++ < 40)
    std::printf("VIOLATION %s %s%s:\n    %s\n", rec.scenario.name.c_str(), label.c_str(),
                saved.c_str(), why.c_str());
  if (first_.empty())
    first_ = label + ": " + why.substr(0, why.find('\n'));
}

void StateChecker::begin_run(uint64_t per_run) {
  per_run_ = per_run;
  run_violations_ = 0;
  first_.clear();
}

void StateChecker::run_violations_of(Recording &rec) {
  for (const std::string &v : rec.violations)
    violation(rec, "run", v);
}

// Checks `count` crash states of `rec`; every `qemu_every`-th through
// qemu-img, every `nbdkit_every`-th through nbdkit (0: never).
void check_crash_states(Recording &rec, StateChecker &checker, uint64_t count, uint64_t seed,
                        uint64_t qemu_every, uint64_t nbdkit_every) {
  std::mt19937_64 rng(seed ^ 0x5eed);
  uint64_t i = 0;
  const std::vector<Op> &ops = rec.effects;
  for (size_t k : crash_points(ops, count, rng)) {
    const unsigned r = unsigned(rng() % 10);
    const Survival survival = r < 2 ? Survival::kNone : r < 4 ? Survival::kAll : Survival::kRandom;
    const bool lose = rec.states->failed_sync_before(k) && (rng() & 1);
    std::vector<uint8_t> bytes = rec.states->state_at(k, survival, rng, lose);
    // An upper bound of the moment of the crash: the start of the call it
    // came before (no call was made after it), or never.
    const uint64_t bound = k < ops.size() ? ops[k].t_start : UINT64_MAX;
    std::string label = "crash at " + std::to_string(k) + "/" + std::to_string(ops.size()) +
                        " (before " + (k < ops.size() ? ops[k].describe() : "the end") +
                        "), later calls " + survival_name(survival) +
                        (lose ? ", unsynced writes before the failed sync lost" : "");
    i++;
    checker.check(rec, bytes, bound, label, qemu_every && i % qemu_every == 0,
                  nbdkit_every && i % nbdkit_every == 0);
  }
}

}  // namespace qsys
