// System-call-level crash and fault testing of the plugin inside a real nbdkit.
//
//   syscall-harness crash   PLUGIN PRELOAD DIR [ASAN_RUNTIME]
//   syscall-harness faults  PLUGIN PRELOAD DIR [ASAN_RUNTIME]
//   syscall-harness extend  PLUGIN PRELOAD DIR [ASAN_RUNTIME]
//   syscall-harness dump    LOG      (prints a log of the preload library)
//
// nbdkit runs the plugin with qed_syscalls.so preloaded, which logs every call
// that changes the image file (in the order of their effects, each stamped
// with CLOCK_MONOTONIC before and after the call) and injects failures. A
// multi-connection NBD workload (workload.cpp) stamps every request's send
// and reply with the same clock.
//
// crash: for each scenario (geometry, backing file or not, cache size, with
// or without a working fallocate) the workload is recorded, then crash states
// are built from the log (replay.h) and each is checked (check_state below):
// the engine's check finds nothing but leaks before any repair; the image
// opens read-write with check=auto (repairing); every byte reads back as the
// oracle (oracle.h) allows; the check after repair finds nothing but leaks.
// A sample of the states goes through qemu-img check after the repair, and a
// sample is opened by the plugin in a real nbdkit (unrepaired copy) and read
// over NBD, then qemu-img checked.
//
// Which acknowledgements constrain a crash state
// -----------------------------------------------
// The preload holds one lock across each call and the logging of its record,
// so the calls are serialised in log order and record k's t_start is later
// than record k-1's t_end. The crash state "at k" (ops [0, k) made, none of
// the later ones) therefore describes a power loss at any moment t between
// the end of op k-1 and the start of op k; we pick t just before
// ops[k].t_start (Replay::crash_time_bound). For that moment:
//   - the disk holds what replay.h says: synced ops as made, later ops
//     present, absent or torn;
//   - a flush whose reply the client had received before t (reply_ns < t)
//     was acknowledged before the crash, because the server sent the reply
//     before the client received it. So it constrains the state: every
//     request answered (reply_ns) before that flush was sent (send_ns) is
//     durable. A FUA request answered before t is durable by itself.
//     Comparing client times with the server's record times is sound
//     because both read the same system-wide CLOCK_MONOTONIC.
//   - a flush answered after t constrains nothing, even if its syncs are in
//     [0, k): the crash may have come before the server replied. (The data
//     it synced is still present in the state, through the replay; it is
//     only not *required* by the oracle.)
//   - a request sent after t cannot have reached the disk: it is no
//     candidate (a byte holding its data would be a violation).
// Choosing t as late as possible makes the largest set of acknowledgements
// binding, and every choice within the interval is a moment a real power
// loss could hit, so no state is held to a promise the server had not made
// yet: there are no false violations from timing. The one assumption is the
// page-cache model of replay.h (barriers are fsync/fdatasync, sectors of 512
// bytes are atomic, nothing else is ordered).
//
// faults: for each scenario, a run per injected failure (each call kind:
// write, fallocate, ftruncate, sync; EIO and ENOSPC, and EOPNOTSUPP for
// fallocate; at several points, some sticky like a full disk, some random).
// Each connection keeps to its own range and reads back every acknowledged
// write at once (an acknowledged write must read back: never a success for
// data that was not stored). After the workload a new connection must still
// be served. Then nbdkit stops, and the image, reopened by the plugin in a
// fresh nbdkit and in process, must pass the checks above with every flushed
// byte intact; a few crash states of each fault run are checked too (after a
// failed fdatasync, replay.h lets the unsynced writes vanish for good, as
// Linux may).
//
// extend: issue 10 fault 1. With fallocate failing (EOPNOTSUPP, as on ext2),
// PosixFile::extend_to() falls back to fstat + ftruncate. 16 connections
// write 4 KiB into fresh clusters with cache-size=0 (so nearly every write
// flushes), each flushing at the end; every write must read back, over NBD
// and after a reopen. The preload delays each ftruncate (QED_SYSCALL_DELAY)
// to widen the window between fstat and ftruncate, and the log shows any
// ftruncate that cut off bytes an earlier write had stored.
//
// Environment: QED_SYSCALL_STATES (crash states over all scenarios; default
// QED_SYSCALL_STATES_DEFAULT, which meson sets, or 2400), QED_SYSCALL_SEED, QED_SYSCALL_KEEP=1 (keep DIR: logs, images and the
// states that failed), QED_SYSCALL_EXTEND_WRITES (writes per connection in
// extend mode, default 64), QED_SYSCALL_ONLY (faults: only the runs whose
// QED_SYSCALL_FAIL contains this), QED_SYSCALL_VERBOSE=1 (faults: a line per
// run).
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "check.h"
#include "fault_file.h"
#include "format.h"
#include "image.h"
#include "oracle.h"
#include "process.h"
#include "replay.h"
#include "syscall_log.h"
#include "workload.h"

namespace qsys {
namespace {

// ---- files -----------------------------------------------------------------

bool read_file(const std::string &path, std::vector<uint8_t> &out) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return false;
  out.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  return true;
}

bool write_file(const std::string &path, const std::vector<uint8_t> &bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char *>(bytes.data()), std::streamsize(bytes.size()));
  return bool(out);
}

uint64_t env_u64(const char *name, uint64_t fallback) {
  const char *v = std::getenv(name);
  return v && *v ? std::strtoull(v, nullptr, 10) : fallback;
}

bool keep() { return env_u64("QED_SYSCALL_KEEP", 0) != 0; }

// ---- scenarios and recordings ------------------------------------------------

struct Scenario {
  std::string name;
  uint32_t cluster_size;
  uint32_t table_size;
  uint64_t disk_bytes;
  uint64_t backing_bytes;  // 0: no backing file
  std::string cache_size;  // the plugin's cache-size=
  unsigned connections;
  unsigned ops;
  std::string fail;   // QED_SYSCALL_FAIL for the whole recording
  std::string delay;  // QED_SYSCALL_DELAY
};

// One recorded run: the images before and after, the log, the requests.
struct Recording {
  Scenario scenario;
  std::string dir, image, log;
  std::vector<uint8_t> initial_file, initial_disk, final_file;
  WorkloadResult work;
  std::vector<Op> log_ops;             // every record
  std::unique_ptr<Replay> replay;      // of the records that matter
  std::unique_ptr<Oracle> oracle;      // refers to work.requests
  std::vector<std::string> violations;
  CallCounts counts;
};

// Creates DIR/base.raw (random bytes, never 0) and DIR/image.qed with qemu-img.
bool make_images(const Scenario &s, Recording &rec, std::mt19937_64 &rng, std::string &why) {
  mkdir(rec.dir.c_str(), 0755);
  rec.image = rec.dir + "/image.qed";
  unlink(rec.image.c_str());
  rec.initial_disk.assign(s.disk_bytes, 0);
  std::vector<std::string> create = {"qemu-img", "create", "-q", "-f", "qed", "-o",
                                     "cluster_size=" + std::to_string(s.cluster_size) +
                                         ",table_size=" + std::to_string(s.table_size)};
  if (s.backing_bytes) {
    std::vector<uint8_t> base(s.backing_bytes);
    for (auto &b : base)
      b = uint8_t(1 + rng() % 255);
    if (!write_file(rec.dir + "/base.raw", base)) {
      why = "cannot write " + rec.dir + "/base.raw";
      return false;
    }
    std::copy(base.begin(), base.begin() + long(std::min(s.backing_bytes, s.disk_bytes)),
              rec.initial_disk.begin());
    create.insert(create.end(), {"-b", "base.raw", "-F", "raw"});
  }
  create.insert(create.end(), {rec.image, std::to_string(s.disk_bytes)});
  std::string out;
  if (run(create, &out) != 0) {
    why = "qemu-img create failed: " + out;
    return false;
  }
  if (!read_file(rec.image, rec.initial_file)) {
    why = "cannot read " + rec.image;
    return false;
  }
  return true;
}

std::vector<std::pair<std::string, std::string>> preload_env(const Recording &rec,
                                                             const Scenario &s, bool data) {
  std::vector<std::pair<std::string, std::string>> env = {{"QED_SYSCALL_PATH", rec.image},
                                                          {"QED_SYSCALL_LOG", rec.log}};
  if (!data)
    env.emplace_back("QED_SYSCALL_DATA", "0");
  if (!s.fail.empty())
    env.emplace_back("QED_SYSCALL_FAIL", s.fail);
  if (!s.delay.empty())
    env.emplace_back("QED_SYSCALL_DELAY", s.delay);
  return env;
}

std::vector<std::string> plugin_args(const std::string &image, const Scenario &s) {
  std::vector<std::string> args = {"file=" + image};
  if (!s.cache_size.empty())
    args.push_back("cache-size=" + s.cache_size);
  return args;
}

// Records the workload of `s` into `rec` (whose dir is set). False only when
// the run could not be made at all; problems of the plugin go to
// rec.violations.
using Driver = std::function<WorkloadResult(const std::string &socket, const Recording &rec)>;

// The random workload of `spec` (see workload.h).
Driver random_workload(WorkloadSpec spec, const Scenario &s, uint64_t seed) {
  spec.disk_bytes = s.disk_bytes;
  spec.cluster_size = s.cluster_size;
  spec.connections = s.connections;
  spec.ops_per_connection = s.ops;
  spec.seed = seed;
  return [spec](const std::string &socket, const Recording &rec) {
    WorkloadSpec with_disk = spec;
    with_disk.initial_disk = rec.initial_disk;
    return run_workload(socket, with_disk);
  };
}

bool record(const Tools &tools, const Scenario &s, const Driver &drive, uint64_t seed,
            Recording &rec, std::string &why) {
  rec.scenario = s;
  rec.log = rec.dir + "/syscalls.log";
  std::mt19937_64 rng(seed);
  if (!make_images(s, rec, rng, why))
    return false;
  unlink(rec.log.c_str());

  Nbdkit server;
  if (!server.start(tools, rec.dir, plugin_args(rec.image, s), preload_env(rec, s, true), true,
                    why))
    return false;
  rec.work = drive(server.socket(), rec);
  for (auto &v : rec.work.violations)
    rec.violations.push_back(v);
  std::string alive_why;
  if (!server.alive() || !server_answers(server.socket(), 4096, alive_why))
    rec.violations.push_back("the server stopped serving after the workload: " + alive_why +
                             "\n" + server.log());
  std::string stop_why;
  if (!server.stop(stop_why))
    rec.violations.push_back(stop_why);

  if (!read_log(rec.log, rec.log_ops, why))
    return false;
  rec.counts = count_calls(rec.log_ops);
  std::vector<Op> ops;
  for (const Op &op : rec.log_ops)
    if (op.matters())
      ops.push_back(op);
  rec.replay = std::make_unique<Replay>(rec.initial_file, std::move(ops));
  if (!read_file(rec.image, rec.final_file)) {
    why = "cannot read " + rec.image;
    return false;
  }
  // The log must explain the file: if replaying it does not give the file
  // nbdkit left, the preload missed a call (or the replay is wrong) and no
  // crash state built from it means anything.
  if (rec.replay->final_file() != rec.final_file) {
    why = s.name + ": replaying " + std::to_string(rec.replay->size()) +
          " logged calls does not give the file nbdkit left (" +
          std::to_string(rec.final_file.size()) + " bytes)";
    return false;
  }
  rec.oracle = std::make_unique<Oracle>(rec.work.requests, rec.initial_disk);
  return true;
}

// ---- checking one state ------------------------------------------------------

struct Counters {
  uint64_t states = 0, via_nbdkit = 0, via_qemu = 0, violations = 0;
};

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

class StateChecker {
public:
  StateChecker(const Tools &tools, Counters &counters) : tools_(tools), c_(counters) {}

  // Checks `bytes` as the state `label` of `rec`; the sampling decides
  // whether qemu-img and nbdkit see it too.
  void check(Recording &rec, const std::vector<uint8_t> &bytes, uint64_t bound,
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

  // The plugin reopening the file nbdkit left (a copy: it repairs).
  void reopen(Recording &rec) {
    c_.via_nbdkit++;
    const std::string copy = rec.dir + "/reopen.qed";
    std::string bad = write_file(copy, rec.final_file)
                          ? check_through_nbdkit(tools_, rec.dir, copy, *rec.oracle, UINT64_MAX)
                          : "cannot write " + copy;
    if (!bad.empty())
      violation(rec, "reopen by the plugin", bad, rec.final_file);
  }

  void violation(Recording &rec, const std::string &label, const std::string &why,
                 const std::vector<uint8_t> &bytes = {}) {
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

  // Violations are printed at most `per_run` times per run (begin_run()).
  void begin_run(uint64_t per_run) {
    per_run_ = per_run;
    run_violations_ = 0;
    first_.clear();
  }
  uint64_t run_violations() const { return run_violations_; }
  const std::string &first_violation() const { return first_; }

private:
  const Tools &tools_;
  Counters &c_;
  uint64_t per_run_ = 12, run_violations_ = 0, printed_ = 0;
  std::string first_;
};

// Crash points: two thirds uniform over the log, a third just after a
// successful barrier (inside the metadata writes of a flush), increasing.
std::vector<size_t> crash_points(const Replay &replay, uint64_t count, std::mt19937_64 &rng) {
  std::vector<size_t> barriers;
  for (size_t i = 0; i < replay.size(); i++)
    if (replay.ops()[i].is_barrier() && replay.ops()[i].ok())
      barriers.push_back(i);
  std::vector<size_t> points;
  for (uint64_t i = 0; i < count; i++) {
    if (i % 3 == 2 && !barriers.empty())
      points.push_back(std::min(replay.size(), barriers[rng() % barriers.size()] + 1 + rng() % 4));
    else
      points.push_back(size_t(rng() % (replay.size() + 1)));
  }
  std::sort(points.begin(), points.end());
  return points;
}

// Checks `count` crash states of `rec`; every `qemu_every`-th through
// qemu-img, every `nbdkit_every`-th through nbdkit (0: never).
void check_crash_states(Recording &rec, StateChecker &checker, uint64_t count, uint64_t seed,
                        uint64_t qemu_every, uint64_t nbdkit_every) {
  std::mt19937_64 rng(seed ^ 0x5eed);
  uint64_t i = 0;
  for (size_t k : crash_points(*rec.replay, count, rng)) {
    const unsigned r = unsigned(rng() % 10);
    const Survival survival = r < 2 ? Survival::kNone : r < 4 ? Survival::kAll : Survival::kRandom;
    const bool lose = rec.replay->failed_barrier_before(k) && (rng() & 1);
    std::vector<uint8_t> bytes = rec.replay->state_at(k, survival, lose, rng);
    const uint64_t bound = rec.replay->crash_time_bound(k);
    std::string label = "crash at " + std::to_string(k) + "/" + std::to_string(rec.replay->size()) +
                        " (before " +
                        (k < rec.replay->size() ? rec.replay->ops()[k].describe() : "the end") +
                        "), later calls " + survival_name(survival) +
                        (lose ? ", unsynced writes before the failed sync lost" : "");
    i++;
    checker.check(rec, bytes, bound, label, qemu_every && i % qemu_every == 0,
                  nbdkit_every && i % nbdkit_every == 0);
  }
}

void print_violations(Recording &rec, StateChecker &checker) {
  for (const std::string &v : rec.violations)
    checker.violation(rec, "run", v);
}

// ---- crash mode ---------------------------------------------------------------

std::vector<Scenario> crash_scenarios() {
  // 4 MiB disks; qemu-img check's false leaks start past cluster_size-1
  // clusters in the file, far beyond these. No table size 1: qemu cannot open
  // such images at all (its table offset check is off by one).
  return {
      {"c64k-t4", 65536, 4, 4 << 20, 0, "", 4, 120, "", ""},
      {"c4k-t2-backing", 4096, 2, 4 << 20, 3 << 20, "64K", 4, 150, "", ""},
      {"c16k-t2-backing", 16384, 2, 4 << 20, 4 << 20, "256K", 4, 120, "", ""},
      // As on ext2 or NFSv3: extend_to() falls back to fstat + ftruncate.
      // cache-size=0 makes nearly every allocating write flush, so extensions
      // race allocations; a short delay before each ftruncate widens the race.
      {"c64k-t2-nofallocate", 65536, 2, 4 << 20, 0, "0", 4, 120, "fallocate:1+:EOPNOTSUPP",
       "ftruncate:200"},
  };
}

int crash_mode(const Tools &tools, const std::string &dir) {
  const uint64_t total =
      env_u64("QED_SYSCALL_STATES", env_u64("QED_SYSCALL_STATES_DEFAULT", 2400));
  const uint64_t seed = env_u64("QED_SYSCALL_SEED", 20261126);
  Counters c;
  StateChecker checker(tools, c);
  const auto scenarios = crash_scenarios();
  uint64_t recorded_ops = 0, requests = 0;
  bool ok = true;
  for (size_t i = 0; i < scenarios.size(); i++) {
    const Scenario &s = scenarios[i];
    auto rec = std::make_unique<Recording>();
    rec->dir = dir + "/" + s.name;
    std::string why;
    if (!record(tools, s, random_workload(WorkloadSpec{}, s, seed + i), seed + i, *rec, why)) {
      std::printf("FAIL %s: %s\n", s.name.c_str(), why.c_str());
      ok = false;
      continue;
    }
    const uint64_t before = c.violations, states_before = c.states;
    checker.begin_run(5);
    print_violations(*rec, checker);
    uint64_t leaked = 0;
    if (std::string bad = clean_tail_check(rec->final_file, leaked); !bad.empty())
      checker.violation(*rec, "final file (no crash)", bad, rec->final_file);
    if (rec->work.failed != rec->work.expected_failures)
      for (const Request &r : rec->work.requests)
        if (!r.ok() && !(r.kind == ReqKind::kZero && r.err == ENOTSUP))
          checker.violation(*rec, "run", "request failed without an injected fault: " +
                                             r.describe());
    // The file as nbdkit left it (no crash) first, then the crash states.
    checker.check(*rec, rec->final_file, UINT64_MAX, "final file (no crash)", true, true);
    check_crash_states(*rec, checker, total / scenarios.size(), seed + i, 10, 60);
    recorded_ops += rec->replay->size();
    requests += rec->work.requests.size();
    std::printf("%-22s %5zu requests, %5zu calls logged, %5llu crash states, %llu violations\n",
                s.name.c_str(), rec->work.requests.size(), rec->replay->size(),
                (unsigned long long)(c.states - states_before),
                (unsigned long long)(c.violations - before));
    std::fflush(stdout);
  }
  std::printf("syscall crash: %llu states checked over %zu scenarios (%llu requests, %llu "
              "logged calls; %llu also by qemu-img check, %llu through nbdkit), %llu violations "
              "(seed %llu)\n",
              (unsigned long long)c.states, scenarios.size(), (unsigned long long)requests,
              (unsigned long long)recorded_ops, (unsigned long long)c.via_qemu,
              (unsigned long long)c.via_nbdkit, (unsigned long long)c.violations,
              (unsigned long long)seed);
  return ok && c.violations == 0 ? 0 : 1;
}

// ---- fault mode ---------------------------------------------------------------

struct Injection {
  std::string spec;  // QED_SYSCALL_FAIL
  std::string what;  // for people
};

// Points spread over [1, count]: the first call, one in the middle third and
// one in the last third.
std::vector<uint64_t> points(uint64_t count, std::mt19937_64 &rng) {
  if (count == 0)
    return {};
  std::vector<uint64_t> p = {1};
  if (count >= 3) {
    p.push_back(count / 3 + 1 + rng() % (count / 3));
    p.push_back(2 * count / 3 + 1 + rng() % (count - 2 * count / 3));
  }
  p.erase(std::unique(p.begin(), p.end()), p.end());
  return p;
}

std::vector<Injection> plan(const CallCounts &plain, const CallCounts &nofallocate,
                            std::mt19937_64 &rng) {
  const std::string sticky_eopnotsupp = "fallocate:1+:EOPNOTSUPP";
  std::vector<Injection> out;
  auto add = [&](const std::string &kind, uint64_t count, const char *err,
                 const std::string &also) {
    for (uint64_t n : points(count, rng)) {
      std::string spec = kind + ":" + std::to_string(n) + ":" + err;
      out.push_back({also.empty() ? spec : also + "," + spec,
                     kind + " call " + std::to_string(n) + " of ~" + std::to_string(count) +
                         " fails with " + err + (also.empty() ? "" : " (fallocate unsupported)")});
    }
  };
  for (const char *err : {"EIO", "ENOSPC"}) {
    add("write", plain.write, err, "");
    add("fallocate", plain.fallocate, err, "");
    add("sync", plain.sync, err, "");
    add("ftruncate", nofallocate.ftruncate, err, sticky_eopnotsupp);
  }
  add("fallocate", plain.fallocate, "EOPNOTSUPP", "");
  // A full disk stays full; so does a file system without fallocate.
  const uint64_t mid = std::max<uint64_t>(1, plain.write / 2);
  out.push_back({"write:" + std::to_string(mid) + "+:ENOSPC",
                 "every write from call " + std::to_string(mid) + " on fails with ENOSPC"});
  const uint64_t fmid = std::max<uint64_t>(1, plain.fallocate / 2);
  out.push_back({"fallocate:" + std::to_string(fmid) + "+:ENOSPC",
                 "every fallocate from call " + std::to_string(fmid) + " on fails with ENOSPC"});
  out.push_back({sticky_eopnotsupp, "every fallocate fails with EOPNOTSUPP"});
  const std::string seed = std::to_string(rng() % 100000);
  out.push_back({"write:%25@" + seed + ":EIO,sync:%6@" + seed + ":EIO,fallocate:%8@" + seed +
                     ":ENOSPC",
                 "random: 1 in 25 writes EIO, 1 in 6 syncs EIO, 1 in 8 fallocates ENOSPC"});
  return out;
}

// Checks a finished fault run: the file nbdkit left, reopened by the plugin
// in a fresh nbdkit and in process, and some crash states of its log.
void check_fault_run(Recording &rec, StateChecker &checker, uint64_t seed) {
  print_violations(rec, checker);
  uint64_t leaked = 0;
  if (std::string bad = clean_tail_check(rec.final_file, leaked); !bad.empty())
    checker.violation(rec, "the file left", bad, rec.final_file);
  checker.reopen(rec);
  checker.check(rec, rec.final_file, UINT64_MAX, "the file left (no crash)", true, false);
  check_crash_states(rec, checker, 12, seed, 0, 0);
}

// A failed allocation as the last write of a session (issue 10, fault 5):
// one connection writes 8 fresh clusters and the pwrite of the 8th fails
// with ENOSPC (nothing else writes to the file before close: the first
// flush is at close). The client disconnects, nbdkit closes the image and
// marks it clean; the clusters reserved for the failed write must not be
// left at the end of the file.
Driver failed_last_allocation(uint64_t cluster_size) {
  return [cluster_size](const std::string &socket, const Recording &) {
    std::vector<std::vector<Request>> per(1);
    for (uint64_t i = 0; i < 8; i++) {
      Request r;
      r.kind = ReqKind::kWrite;
      r.conn = 0;
      r.offset = i * cluster_size;
      r.length = cluster_size;
      r.data.assign(cluster_size, uint8_t(0x11 * (i + 1)));
      per[0].push_back(std::move(r));
    }
    return run_requests(socket, std::move(per));
  };
}

int fault_mode(const Tools &tools, const std::string &dir) {
  const uint64_t seed = env_u64("QED_SYSCALL_SEED", 20261127);
  std::mt19937_64 rng(seed);
  const std::vector<Scenario> scenarios = {
      {"f-c64k-t4", 65536, 4, 2 << 20, 0, "", 3, 60, "", ""},
      {"f-c4k-t2-backing", 4096, 2, 2 << 20, 1536 << 10, "64K", 3, 60, "", ""},
  };
  WorkloadSpec spec;
  spec.own_regions = true;
  spec.read_back = true;
  Counters c;
  StateChecker checker(tools, c);
  uint64_t runs = 0, injected = 0, client_errors = 0, runs_without_injection = 0;
  std::vector<std::string> bad_runs;
  bool ok = true;
  for (size_t si = 0; si < scenarios.size(); si++) {
    // Two runs without faults count the calls (with and without fallocate),
    // and are checked like the others.
    CallCounts counts[2];
    for (int v = 0; v < 2; v++) {
      Scenario s = scenarios[si];
      s.fail = v ? "fallocate:1+:EOPNOTSUPP" : "";
      auto rec = std::make_unique<Recording>();
      rec->dir = dir + "/" + s.name + (v ? "-nofallocate" : "-plain");
      std::string why;
      if (!record(tools, s, random_workload(spec, s, seed + si), seed + si, *rec, why)) {
        std::printf("FAIL %s: %s\n", s.name.c_str(), why.c_str());
        ok = false;
        continue;
      }
      counts[v] = rec->counts;
      checker.begin_run(3);
      check_fault_run(*rec, checker, seed + si);
      if (checker.run_violations())
        bad_runs.push_back(rec->scenario.name + (v ? " [no fallocate]" : " [no fault]") + ": " +
                           std::to_string(checker.run_violations()) + " violations, first: " +
                           checker.first_violation());
    }
    const auto injections = plan(counts[0], counts[1], rng);
    const uint64_t before = c.violations;
    uint64_t scenario_injected = 0;
    const char *only = std::getenv("QED_SYSCALL_ONLY");
    auto selected = [&](const std::string &fail) {
      return !only || fail.find(only) != std::string::npos;
    };
    for (size_t j = 0; j < injections.size(); j++) {
      Scenario s = scenarios[si];
      s.fail = injections[j].spec;
      if (!selected(s.fail))
        continue;
      auto rec = std::make_unique<Recording>();
      rec->dir = dir + "/" + s.name + "-" + std::to_string(j);
      std::string why;
      if (!record(tools, s, random_workload(spec, s, seed + si * 100 + j), seed + si * 100 + j,
                  *rec, why)) {
        std::printf("FAIL %s [%s]: %s\n", s.name.c_str(), s.fail.c_str(), why.c_str());
        ok = false;
        continue;
      }
      rec->scenario.name = s.name + " [" + s.fail + "]";
      runs++;
      const uint64_t fired = rec->counts.injected;
      scenario_injected += fired;
      runs_without_injection += fired == 0;
      client_errors += rec->work.failed - rec->work.expected_failures;
      checker.begin_run(1);
      check_fault_run(*rec, checker, seed + si * 100 + j);
      if (checker.run_violations())
        bad_runs.push_back(rec->scenario.name + ": " + std::to_string(checker.run_violations()) +
                           " violations, first: " + checker.first_violation());
      if (std::getenv("QED_SYSCALL_VERBOSE"))
        std::printf("  %-40s %llu injected, %llu client errors\n", injections[j].what.c_str(),
                    (unsigned long long)fired,
                    (unsigned long long)(rec->work.failed - rec->work.expected_failures));
      if (!keep())
        run({"rm", "-rf", rec->dir});
    }
    if (selected("write:8:ENOSPC")) {
      Scenario s = scenarios[si];
      s.fail = "write:8:ENOSPC";
      auto rec = std::make_unique<Recording>();
      rec->dir = dir + "/" + s.name + "-last-allocation";
      std::string why;
      if (!record(tools, s, failed_last_allocation(s.cluster_size), seed, *rec, why)) {
        std::printf("FAIL %s [%s]: %s\n", s.name.c_str(), s.fail.c_str(), why.c_str());
        ok = false;
      } else {
        rec->scenario.name = s.name + " [" + s.fail + ", the last write of 8]";
        runs++;
        scenario_injected += rec->counts.injected;
        runs_without_injection += rec->counts.injected == 0;
        client_errors += rec->work.failed;
        checker.begin_run(1);
        if (rec->work.failed != 1)
          checker.violation(*rec, "run", "expected the 8th write to fail, " +
                                             std::to_string(rec->work.failed) + " failed");
        check_fault_run(*rec, checker, seed);
        if (checker.run_violations())
          bad_runs.push_back(rec->scenario.name + ": " +
                             std::to_string(checker.run_violations()) +
                             " violations, first: " + checker.first_violation());
      }
    }
    injected += scenario_injected;
    std::printf("%-22s %3zu fault runs, %4llu injected failures, %llu violations (calls without "
                "faults: %llu writes, %llu fallocates, %llu syncs; %llu ftruncates without "
                "fallocate)\n",
                scenarios[si].name.c_str(), injections.size() + 1,
                (unsigned long long)scenario_injected,
                (unsigned long long)(c.violations - before), (unsigned long long)counts[0].write,
                (unsigned long long)counts[0].fallocate, (unsigned long long)counts[0].sync,
                (unsigned long long)counts[1].ftruncate);
    std::fflush(stdout);
  }
  if (!bad_runs.empty()) {
    std::printf("fault runs with violations:\n");
    for (const auto &b : bad_runs)
      std::printf("  %s\n", b.c_str());
  }
  std::printf("syscall faults: %llu runs, %llu injected failures (%llu runs where the chosen "
              "call did not come), %llu client errors, %llu states checked (%llu through "
              "nbdkit), %llu violations (seed %llu)\n",
              (unsigned long long)runs, (unsigned long long)injected,
              (unsigned long long)runs_without_injection, (unsigned long long)client_errors,
              (unsigned long long)c.states, (unsigned long long)c.via_nbdkit,
              (unsigned long long)c.violations, (unsigned long long)seed);
  return ok && c.violations == 0 ? 0 : 1;
}

// ---- extend mode (issue 10, fault 1) -------------------------------------------

int extend_mode(const Tools &tools, const std::string &dir) {
  const unsigned conns = 16;
  const uint64_t per_conn = env_u64("QED_SYSCALL_EXTEND_WRITES", 64);
  const uint64_t cs = 65536, unit = 4096;
  Scenario s{"extend-nofallocate", uint32_t(cs), 4, conns * per_conn * cs, 0, "0", conns,
             0, "fallocate:1+:EOPNOTSUPP", env_u64("QED_SYSCALL_EXTEND_DELAY", 1) ? "ftruncate:500" : ""};
  Recording rec;
  rec.scenario = s;
  rec.dir = dir + "/" + s.name;
  rec.log = rec.dir + "/syscalls.log";
  std::mt19937_64 rng(1);
  std::string why;
  if (!make_images(s, rec, rng, why)) {
    std::printf("FAIL: %s\n", why.c_str());
    return 1;
  }
  Nbdkit server;
  if (!server.start(tools, rec.dir, plugin_args(rec.image, s), preload_env(rec, s, false), true,
                    why)) {
    std::printf("FAIL: %s\n", why.c_str());
    return 1;
  }
  // Connection c writes cluster i * conns + c, i = 0, 1, ...: every write
  // allocates, and the allocations of the 16 connections interleave.
  auto stamp = [&](uint64_t cluster, std::vector<uint8_t> &buf) {
    buf.resize(unit);
    for (uint64_t i = 0; i < unit; i += 8)
      for (int b = 0; b < 8; b++)
        buf[i + b] = uint8_t(((cluster + 1) * 0x9E3779B97F4A7C15ull + i) >> (8 * b)) | 1;
  };
  std::vector<std::vector<Request>> per(conns);
  for (unsigned c = 0; c < conns; c++) {
    for (uint64_t i = 0; i < per_conn; i++) {
      Request r;
      r.kind = ReqKind::kWrite;
      r.conn = c;
      r.offset = (i * conns + c) * cs;
      r.length = unit;
      stamp(i * conns + c, r.data);
      per[c].push_back(std::move(r));
    }
    Request f;
    f.kind = ReqKind::kFlush;
    f.conn = c;
    per[c].push_back(std::move(f));
  }
  rec.work = run_requests(server.socket(), std::move(per));
  rec.violations = rec.work.violations;
  uint64_t failed = 0, writes = 0;
  for (const Request &r : rec.work.requests) {
    failed += !r.ok();
    writes += r.kind == ReqKind::kWrite;
  }
  // Each connection's writes were answered before its flush was sent, so
  // every acknowledged write is flushed.
  // Read back over NBD, from the running server.
  std::vector<uint8_t> disk;
  auto lost = [&](const std::vector<uint8_t> &d) {
    uint64_t n = 0;
    for (const Request &r : rec.work.requests)
      if (r.kind == ReqKind::kWrite && r.ok() &&
          std::memcmp(d.data() + r.offset, r.data.data(), unit) != 0)
        n++;
    return n;
  };
  uint64_t lost_live = 0, lost_reopen = 0;
  if (!read_disk(server.socket(), disk, why))
    rec.violations.push_back("reading back: " + why);
  else
    lost_live = lost(disk);
  std::string stop_why;
  if (!server.stop(stop_why))
    rec.violations.push_back(stop_why);
  // The log: did an ftruncate cut off what an earlier write had stored?
  uint64_t cuts = 0;
  std::vector<Op> ops;
  if (read_log(rec.log, ops, why)) {
    uint64_t end = 0;
    for (const Op &op : ops) {
      if (op.kind == QSYS_WRITE && op.ok())
        end = std::max(end, op.offset + op.length);
      if (op.kind == QSYS_TRUNCATE && op.ok() && op.call == QSYS_CALL_FTRUNCATE) {
        if (op.offset < end) {
          if (cuts++ < 3)
            std::printf("  %s cut off bytes up to %llu that earlier writes had stored\n",
                        op.describe().c_str(), (unsigned long long)end);
        }
        end = std::min(end, op.offset);
      }
    }
  }
  // And after a reopen by the plugin.
  if (read_file(rec.image, rec.final_file)) {
    Nbdkit again;
    if (!again.start(tools, rec.dir, {"file=" + rec.image}, {}, false, why) ||
        !read_disk(again.socket(), disk, why))
      rec.violations.push_back("reopen: " + why);
    else
      lost_reopen = lost(disk);
    if (!again.stop(why))
      rec.violations.push_back(why);
  }
  std::string report;
  if (!qemu_check(rec.image, report))
    rec.violations.push_back("qemu-img check: " + report);
  if (failed)
    rec.violations.push_back(std::to_string(failed) + " requests failed");
  if (lost_live || lost_reopen)
    rec.violations.push_back(std::to_string(lost_live) + " flushed writes read back wrong " +
                             "over NBD, " + std::to_string(lost_reopen) + " after a reopen");
  for (const auto &v : rec.violations)
    std::printf("VIOLATION %s: %s\n", s.name.c_str(), v.c_str());
  std::printf("syscall extend: %u connections wrote %llu fresh clusters with fallocate "
              "unsupported (cache-size=0): %llu lost over NBD, %llu after a reopen; %llu "
              "ftruncates cut stored bytes; %zu violations\n",
              conns, (unsigned long long)writes, (unsigned long long)lost_live,
              (unsigned long long)lost_reopen, (unsigned long long)cuts, rec.violations.size());
  return rec.violations.empty() ? 0 : 1;
}

// Prints a log, one call a line, for reading a failure.
int dump_mode(const std::string &path) {
  std::vector<Op> ops;
  std::string why;
  if (!read_log(path, ops, why)) {
    std::fprintf(stderr, "%s\n", why.c_str());
    return 1;
  }
  for (const Op &op : ops)
    std::printf("%llu..%llu fd %d %s\n", (unsigned long long)op.t_start,
                (unsigned long long)op.t_end, op.fd, op.describe().c_str());
  return 0;
}

}  // namespace
}  // namespace qsys

int main(int argc, char **argv) {
  if (argc == 3 && std::string(argv[1]) == "dump")
    return qsys::dump_mode(argv[2]);
  if (argc < 5) {
    std::fprintf(stderr,
                 "usage: %s crash|faults|extend PLUGIN PRELOAD DIR [ASAN_RUNTIME]\n"
                 "       %s dump LOG\n",
                 argv[0], argv[0]);
    return 2;
  }
  qsys::Tools tools{argv[2], argv[3], argc > 5 ? argv[5] : ""};
  const std::string mode = argv[1], dir = argv[4];
  setvbuf(stdout, nullptr, _IOLBF, 0);
  if (mode == "crash")
    return qsys::crash_mode(tools, dir);
  if (mode == "faults")
    return qsys::fault_mode(tools, dir);
  if (mode == "extend")
    return qsys::extend_mode(tools, dir);
  std::fprintf(stderr, "%s: unknown mode %s\n", argv[0], mode.c_str());
  return 2;
}
