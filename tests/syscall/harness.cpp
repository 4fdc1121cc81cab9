// System-call-level crash and fault testing of the plugin inside a real nbdkit.
//
//   syscall-harness crash   PLUGIN PRELOAD DIR [ASAN_RUNTIME]
//   syscall-harness faults  PLUGIN PRELOAD DIR [ASAN_RUNTIME]
//   syscall-harness extend  PLUGIN PRELOAD DIR [ASAN_RUNTIME]
//   syscall-harness schedule PLUGIN PRELOAD DIR [ASAN_RUNTIME]  (see schedule.h)
//   syscall-harness preload PLUGIN PRELOAD DIR [ASAN_RUNTIME]  (tests the library)
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
// are built from the log (the crash model of tests/support/crash_model.h,
// over the effects of the logged calls) and each is checked (state_check.cpp):
// the engine's check finds nothing but leaks before any repair; the image
// opens read-write with check=auto (repairing); every byte reads back as the
// oracle (oracle.h) allows; the check after repair finds nothing but leaks.
// A sample of the states goes through qemu-img check after the repair, and a
// sample is opened by the plugin in a real nbdkit (unrepaired copy) and read
// over NBD, then qemu-img checked.
//
// Why most states are checked in process: starting nbdkit per state costs
// about 100 ms (several times that under ASan), opening the state with the
// engine linked into the harness a few ms, so 2,400 states take half a
// minute instead of several. The in-process path is the engine's own open
// (Image::open on the file, through PosixFile, check=auto, read-write), the
// same code the plugin's .open runs; what it skips, the plugin layer and
// nbdkit, is covered by the nbdkit sample (1 state in 60, plus the file each
// run left), and QEMU's view by qemu-img check (1 state in 10).
//
// Which acknowledgements constrain a crash state
// -----------------------------------------------
// The preload holds one lock across each call and the logging of its record,
// so the calls are serialised in log order and record k's t_start is later
// than record k-1's t_end. The crash state "at k" (ops [0, k) made, none of
// the later ones) therefore describes a power loss at any moment t between
// the end of op k-1 and the start of op k; we pick t just before
// ops[k].t_start (check_crash_states). For that moment:
//   - the disk holds what crash_model.h says: synced ops as made, later ops
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
// page-cache model of crash_model.h (barriers are fsync/fdatasync, sectors of 512
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
// failed fdatasync, crash_model.h lets the unsynced writes vanish for good, as
// Linux may). A file left clean (NEED_CHECK clear) must not end in clusters
// nothing uses: no open would ever reclaim them. One more run per scenario
// makes the last of 8 allocating writes fail with ENOSPC, right before close.
//
// extend: issue 10 fault 1. With fallocate failing (EOPNOTSUPP, as on ext2),
// PosixFile::extend_to() falls back to fstat + ftruncate. 16 connections
// write 4 KiB into fresh clusters with cache-size=0 (so nearly every write
// flushes), each flushing at the end; every write must read back, over NBD
// and after a reopen. The preload delays each ftruncate (QED_SYSCALL_DELAY)
// to widen the window between fstat and ftruncate, and the log shows any
// ftruncate that cut off bytes an earlier write had stored.
//
// schedule: seeded random delays around the image's system calls while
// allocating writes fail and other connections write and flush; a clean
// restart must read back every flushed byte (schedule.h).
//
// preload: a test of the preload library itself (preload_selftest.h).
//
// Environment: QED_SYSCALL_STATES (crash states over all scenarios; default
// QED_SYSCALL_STATES_DEFAULT, which meson sets, or 2400), QED_SYSCALL_SEED,
// QED_SYSCALL_KEEP=1 (keep DIR: logs, images and the states that failed),
// QED_SYSCALL_ONLY (faults: only the runs whose QED_SYSCALL_FAIL contains
// this), QED_SYSCALL_VERBOSE=1 (faults: a line per run),
// QED_SYSCALL_EXTEND_WRITES (extend: writes per connection, default 64),
// QED_SYSCALL_EXTEND_DELAY=0 (extend: no ftruncate delay).
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "tests/syscall/preload_selftest.h"
#include "tests/syscall/recording.h"
#include "tests/syscall/schedule.h"
#include "tests/syscall/state_check.h"

namespace qsys {
namespace {

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
      // Golden images (issue 20): reads copy what they fetch from the base,
      // racing the writes (the recording lasts some 60 ms); and a stream,
      // unlimited, that copies the base and detaches it (the header
      // rewrite) as the workload starts.
      {"c4k-t2-cor", 4096, 2, 4 << 20, 3 << 20, "64K", 4, 150, "", "", "copy-on-read=true"},
      {"c4k-t2-stream", 4096, 2, 4 << 20, 3 << 20, "64K", 4, 150, "", "",
       "copy-on-read=true stream=true"},
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
    checker.run_violations_of(*rec);
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
    recorded_ops += rec->effects.size();
    requests += rec->work.requests.size();
    std::printf("%-22s %5zu requests, %5zu calls logged, %5llu crash states, %llu violations\n",
                s.name.c_str(), rec->work.requests.size(), rec->effects.size(),
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
  checker.run_violations_of(rec);
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
      // A copy that fails must not fail the read that fetched its data.
      {"f-c4k-t2-cor-stream", 4096, 2, 2 << 20, 1536 << 10, "64K", 3, 60, "", "",
       "copy-on-read=true stream=true stream-rate=2M"},
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
  if (argc == 3 && std::string(argv[1]) == "preload-child")
    return qsys::preload_child(argv[2]);
  if (argc == 3 && std::string(argv[1]) == "preload-schedule-child")
    return qsys::preload_schedule_child(argv[2]);
  if (argc < 5) {
    std::fprintf(stderr,
                 "usage: %s crash|faults|extend|schedule|preload PLUGIN PRELOAD DIR "
                 "[ASAN_RUNTIME]\n"
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
  if (mode == "schedule")
    return qsys::schedule_mode(tools, dir);
  if (mode == "preload")
    return qsys::preload_selftest(tools, "/proc/self/exe", dir);
  std::fprintf(stderr, "%s: unknown mode %s\n", argv[0], mode.c_str());
  return 2;
}
