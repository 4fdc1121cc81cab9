// Recording a run: a fresh image, nbdkit with the preload library, a
// workload, and what the run left (see recording.h).
#include "tests/syscall/recording.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <iterator>

namespace qsys {

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
  for (size_t at = 0; at < s.options.size();) {
    const size_t end = std::min(s.options.find(' ', at), s.options.size());
    if (end > at)
      args.push_back(s.options.substr(at, end - at));
    at = end + 1;
  }
  return args;
}

// The random workload of `spec` (see workload.h).
Driver random_workload(WorkloadSpec spec, const Scenario &s, uint64_t seed) {
  spec.disk_bytes = s.disk_bytes;
  spec.cluster_size = s.cluster_size;
  spec.connections = s.connections;
  spec.ops_per_connection = s.ops;
  spec.reads = s.options.find("copy-on-read=true") != std::string::npos;
  spec.seed = seed;
  return [spec](const std::string &socket, const Recording &rec) {
    WorkloadSpec with_disk = spec;
    with_disk.initial_disk = rec.initial_disk;
    return run_workload(socket, with_disk);
  };
}

// Records the workload of `s` into `rec` (whose dir is set). False only when
// the run could not be made at all; problems of the plugin go to
// rec.violations.
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
  rec.effects = ops_that_matter(rec.log_ops);
  rec.states = std::make_unique<crash::CrashStates>(rec.initial_file, effects_of(rec.effects));
  for (Op &op : rec.effects)
    op.data = {};  // the states hold the bytes
  if (!read_file(rec.image, rec.final_file)) {
    why = "cannot read " + rec.image;
    return false;
  }
  // The log must explain the file: if replaying it does not give the file
  // nbdkit left, the preload missed a call (or the replay is wrong) and no
  // crash state built from it means anything.
  if (rec.states->final_file() != rec.final_file) {
    why = s.name + ": replaying " + std::to_string(rec.effects.size()) +
          " logged calls does not give the file nbdkit left (" +
          std::to_string(rec.final_file.size()) + " bytes)";
    return false;
  }
  rec.oracle = std::make_unique<Oracle>(rec.work.requests, rec.initial_disk);
  return true;
}

}  // namespace qsys
