// Schedules, not just states: see schedule.h.
#include "tests/syscall/schedule.h"

#include <limits.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "lib/check.h"
#include "tests/support/crash_model.h"
#include "tests/support/fault_file.h"
#include "lib/format.h"
#include "tests/syscall/oracle.h"
#include "tests/syscall/reach.h"
#include "tests/syscall/recording.h"

namespace qsys {

namespace {

struct Shape {
  const char *name;
  uint32_t cluster_size, table_size;
  uint64_t disk_bytes;
};

// Small tables over disks of 8 to 12 of them: new tables come often, and a
// table short of the end of the file loses a whole span.
constexpr Shape kShapes[] = {
    {"c4k-t1", 4096, 1, 24 << 20},
    {"c4k-t2", 4096, 2, 32 << 20},
    {"c16k-t1", 16384, 1, 64 << 20},
    {"c64k-t1", 65536, 1, 16 << 20},
};

struct Plan {
  uint64_t seed;
  Scenario s;
  std::string jitter;  // QED_SYSCALL_JITTER
};

Plan plan_for(uint64_t seed) {
  std::mt19937_64 rng(seed);
  const Shape &shape = kShapes[rng() % std::size(kShapes)];
  Plan p;
  p.seed = seed;
  Scenario &s = p.s;
  s.name = shape.name;
  s.cluster_size = shape.cluster_size;
  s.table_size = shape.table_size;
  s.disk_bytes = shape.disk_bytes;
  s.backing_bytes = rng() % 2 ? shape.disk_bytes / 4 * 3 : 0;
  static const char *const kCaches[] = {"0", "0", "64K", "1M"};
  s.cache_size = kCaches[rng() % std::size(kCaches)];
  s.connections = unsigned(4 + rng() % 5);
  s.ops = unsigned(40 + rng() % 41);
  const char *err = rng() % 2 ? "EIO" : "ENOSPC";
  s.fail = "data:%" + std::to_string(3 + rng() % 8) + "@" + std::to_string(seed) + ":" + err;
  if (s.backing_bytes)
    s.fail += ",read:%" + std::to_string(8 + rng() % 17) + "@" + std::to_string(seed + 1) +
              ":EIO";
  for (const char *kind : {"write", "fallocate", "ftruncate", "sync", "read"}) {
    // A flush's extension most often: a write that fails while it is late
    // gives its space back in the middle of it.
    const bool wide = std::strcmp(kind, "fallocate") == 0;
    p.jitter += std::string(p.jitter.empty() ? "" : ",") + kind + ":" +
                std::to_string(wide ? 40 + rng() % 51 : 10 + rng() % 51) + ":" +
                std::to_string(wide ? 500 + rng() % 2501 : 50 + rng() % 1951);
  }
  return p;
}

std::string describe(const Plan &p) {
  const Scenario &s = p.s;
  return s.name + (s.backing_bytes ? "-backing" : "") + " cache-size=" + s.cache_size + ", " +
         std::to_string(s.connections) + "x" + std::to_string(s.ops) + " requests, fail " +
         s.fail + ", jitter " + p.jitter;
}

// What the preload counted (QED_SYSCALL_COUNTS): kind -> (calls, injected).
std::map<std::string, std::pair<uint64_t, uint64_t>> read_counts(const std::string &path) {
  std::map<std::string, std::pair<uint64_t, uint64_t>> out;
  std::ifstream in(path);
  std::string kind;
  uint64_t calls, injected;
  while (in >> kind >> calls >> injected)
    out[kind] = {calls, injected};
  return out;
}

// The file nbdkit left, as the engine's check sees it: entries past the end
// of a clean file are what no open would ever look at again.
std::string check_left_file(const std::vector<uint8_t> &bytes) {
  if (bytes.size() < qed::kHeaderBytes)
    return "the file left is " + std::to_string(bytes.size()) + " bytes";
  qed::HeaderBytes hb;
  std::memcpy(hb.data(), bytes.data(), hb.size());
  const qed::Header h = qed::decode_header(hb);
  if (qed::Status st = qed::validate_header(h, bytes.size()); !st.is_ok())
    return "the header of the file left: " + st.message();
  qed::MemoryFile file(bytes, "left");
  auto report = qed::check_image(file, h, qed::CheckMode::kReport);
  if (!report)
    return "check of the file left: " + report.status().message();
  const std::string first = report->problems.empty() ? report->summary() : report->problems[0];
  if (!report->consistent())
    return "the file left is corrupt: " + first;
  if (!h.needs_check() && report->interrupted_entries)
    return "the file was left clean (NEED_CHECK clear) with " +
           std::to_string(report->interrupted_entries) +
           " entries past its end, which the next open drops: " + first;
  return {};
}

struct Outcome {
  std::vector<std::string> violations;
  uint64_t requests = 0, client_errors = 0, logged = 0;
  std::map<std::string, std::pair<uint64_t, uint64_t>> counts;
};

Outcome run_plan(const Tools &tools, const std::string &dir, const Plan &p) {
  Outcome out;
  Recording rec;
  rec.scenario = p.s;
  rec.dir = dir + "/seed-" + std::to_string(p.seed);
  std::mt19937_64 rng(p.seed);
  std::string why;
  if (!make_images(p.s, rec, rng, why)) {
    out.violations.push_back("set-up: " + why);
    return out;
  }
  const std::string counts = rec.dir + "/counts";
  rec.log = rec.dir + "/syscalls.log";
  std::vector<std::pair<std::string, std::string>> env = {
      {"QED_SYSCALL_PATH", rec.image},
      {"QED_SYSCALL_LOG", rec.log},
      {"QED_SYSCALL_FAIL", p.s.fail},
      {"QED_SYSCALL_JITTER", p.jitter},
      {"QED_SYSCALL_JITTER_SEED", std::to_string(p.seed)},
      {"QED_SYSCALL_COUNTS", counts}};
  if (p.s.backing_bytes)
    env.emplace_back("QED_SYSCALL_BACKING", rec.dir + "/base.raw");

  Nbdkit server;
  if (!server.start(tools, rec.dir, plugin_args(rec.image, p.s), env, true, why)) {
    out.violations.push_back("nbdkit: " + why);
    return out;
  }
  WorkloadSpec spec;
  spec.disk_bytes = p.s.disk_bytes;
  spec.cluster_size = p.s.cluster_size;
  spec.connections = p.s.connections;
  spec.ops_per_connection = p.s.ops;
  spec.seed = p.seed;
  rec.work = run_workload(server.socket(), spec);
  out.requests = rec.work.requests.size();
  out.client_errors = rec.work.failed - rec.work.expected_failures;
  for (auto &v : rec.work.violations)
    out.violations.push_back(v);
  // Past the backing file, whose reads may be failing.
  if (!server.alive() ||
      !server_answers(server.socket(), 4096, why, p.s.disk_bytes - 4096))
    out.violations.push_back("the server stopped serving after the workload: " + why + "\n" +
                             server.log());
  if (!server.stop(why))
    out.violations.push_back(why);
  out.counts = read_counts(counts);

  if (!read_file(rec.image, rec.final_file)) {
    out.violations.push_back("cannot read " + rec.image);
    return out;
  }
  // Every state the file went through while it was served.
  if (!read_log(rec.log, rec.log_ops, why)) {
    out.violations.push_back("the log: " + why);
  } else {
    out.logged = rec.log_ops.size();
    const std::vector<Op> effects = ops_that_matter(rec.log_ops);
    // The log must explain the file, or its states mean nothing.
    if (crash::CrashStates(rec.initial_file, effects_of(effects)).final_file() != rec.final_file)
      out.violations.push_back("replaying the log does not give the file nbdkit left");
    else if (std::string bad = entry_past_end_in_log(rec.initial_file, effects); !bad.empty())
      out.violations.push_back("while serving, an entry pointed past the end of the file " +
                               bad);
  }
  if (std::string bad = check_left_file(rec.final_file); !bad.empty())
    out.violations.push_back(bad);

  // The clean restart: every flushed byte, and every FUA write, reads back.
  const Oracle oracle(rec.work.requests, rec.initial_disk);
  Nbdkit again;
  std::vector<uint8_t> disk;
  if (!again.start(tools, rec.dir, {"file=" + rec.image}, {}, false, why)) {
    out.violations.push_back("the restarted nbdkit refused the image: " + why);
  } else {
    if (!read_disk(again.socket(), disk, why))
      out.violations.push_back("reading after the restart: " + why);
    else if (std::string bad = oracle.check(disk.data(), UINT64_MAX); !bad.empty())
      out.violations.push_back("after a clean restart, flushed data is lost: " + bad);
    if (!again.stop(why))
      out.violations.push_back(why);
  }
  return out;
}

std::string self_path() {
  char buf[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  return n > 0 ? std::string(buf, size_t(n)) : "syscall-harness";
}

std::string rerun_command(const Tools &tools, uint64_t seed) {
  std::string cmd = "QED_SCHEDULE_SEEDS=" + std::to_string(seed) + " " + self_path() +
                    " schedule " + tools.plugin + " " + tools.preload + " \"$(mktemp -d)\"";
  if (!tools.asan.empty())
    cmd += " " + tools.asan;
  return cmd;
}

std::vector<uint64_t> seeds_to_run() {
  std::vector<uint64_t> seeds;
  if (const char *list = std::getenv("QED_SCHEDULE_SEEDS"); list && *list) {
    std::stringstream in(list);
    std::string item;
    while (std::getline(in, item, ','))
      if (!item.empty())
        seeds.push_back(std::strtoull(item.c_str(), nullptr, 10));
    return seeds;
  }
  const uint64_t first = env_u64("QED_SYSCALL_SEED", 20261801);
  const uint64_t runs = env_u64("QED_SCHEDULE_RUNS", 30);
  for (uint64_t i = 0; i < runs; i++)
    seeds.push_back(first + i);
  return seeds;
}

}  // namespace

int schedule_mode(const Tools &tools, const std::string &dir) {
  const std::vector<uint64_t> seeds = seeds_to_run();
  const uint64_t budget_s = env_u64("QED_SCHEDULE_SECONDS", 0);
  const bool stop_at_first = env_u64("QED_SCHEDULE_STOP", 0) != 0;
  const uint64_t start = now_ns();
  uint64_t runs = 0, requests = 0, client_errors = 0, logged = 0;
  std::map<std::string, std::pair<uint64_t, uint64_t>> totals;
  std::vector<uint64_t> failed;
  for (uint64_t seed : seeds) {
    if (budget_s && now_ns() - start > budget_s * 1000000000ull) {
      std::printf("time budget of %llu s reached: %llu of %zu runs made\n",
                  (unsigned long long)budget_s, (unsigned long long)runs, seeds.size());
      break;
    }
    const Plan plan = plan_for(seed);
    const uint64_t t0 = now_ns();
    Outcome o = run_plan(tools, dir, plan);
    runs++;
    requests += o.requests;
    client_errors += o.client_errors;
    logged += o.logged;
    for (const auto &[kind, c] : o.counts) {
      totals[kind].first += c.first;
      totals[kind].second += c.second;
    }
    auto inj = [&](const char *k) { return (unsigned long long)o.counts[k].second; };
    std::printf("seed %llu: %s: %llu requests, %llu client errors (%llu data writes and %llu "
                "backing reads failed), %llu fallocates, %llu calls logged, %.1f s: %s\n",
                (unsigned long long)seed, describe(plan).c_str(), (unsigned long long)o.requests,
                (unsigned long long)o.client_errors, inj("data"), inj("read"),
                (unsigned long long)o.counts["fallocate"].first, (unsigned long long)o.logged,
                double(now_ns() - t0) / 1e9, o.violations.empty() ? "ok" : "VIOLATION");
    if (!o.violations.empty()) {
      failed.push_back(seed);
      for (const auto &v : o.violations)
        std::printf("  VIOLATION seed %llu: %s\n", (unsigned long long)seed, v.c_str());
      std::printf("  rerun: %s\n", rerun_command(tools, seed).c_str());
    } else if (!keep()) {
      run({"rm", "-rf", dir + "/seed-" + std::to_string(seed)});
    }
    std::fflush(stdout);
    if (stop_at_first && !failed.empty())
      break;
  }
  std::string failed_list;
  for (uint64_t s : failed)
    failed_list += (failed_list.empty() ? "" : ",") + std::to_string(s);
  std::printf("syscall schedule: %llu runs, %llu requests, %llu client errors, %llu data writes "
              "and %llu backing reads failed by injection, %llu fallocates, %llu calls logged "
              "(every state checked), %zu runs with violations%s%s (%.0f s)\n",
              (unsigned long long)runs, (unsigned long long)requests,
              (unsigned long long)client_errors, (unsigned long long)totals["data"].second,
              (unsigned long long)totals["read"].second,
              (unsigned long long)totals["fallocate"].first, (unsigned long long)logged,
              failed.size(), failed.empty() ? "" : ": seeds ", failed_list.c_str(),
              double(now_ns() - start) / 1e9);
  return failed.empty() ? 0 : 1;
}

}  // namespace qsys
