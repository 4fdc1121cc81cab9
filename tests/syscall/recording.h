// A recorded run: a fresh image (made by qemu-img, with or without a raw
// backing file), nbdkit serving it with the preload library, a workload, and
// what the run left: the log, the requests with their times, the file.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "tests/support/crash_model.h"
#include "tests/syscall/oracle.h"
#include "tests/syscall/process.h"
#include "tests/syscall/syscall_log.h"
#include "tests/syscall/workload.h"

namespace qsys {

bool read_file(const std::string &path, std::vector<uint8_t> &out);
bool write_file(const std::string &path, const std::vector<uint8_t> &bytes);
uint64_t env_u64(const char *name, uint64_t fallback);
// QED_SYSCALL_KEEP=1: leave the work files (and failed states) behind.
bool keep();

struct Scenario {
  std::string name;
  uint32_t cluster_size;
  uint32_t table_size;
  uint64_t disk_bytes;
  uint64_t backing_bytes;  // 0: no backing file
  std::string cache_size;  // the plugin's cache-size=
  unsigned connections;
  unsigned ops;            // per connection
  std::string fail;        // QED_SYSCALL_FAIL for the whole recording
  std::string delay;       // QED_SYSCALL_DELAY
  // More plugin options, space-separated (copy-on-read=true stream=true ...).
  std::string options;
};

struct Recording {
  Scenario scenario;
  std::string dir, image, log;
  std::vector<uint8_t> initial_file, initial_disk, final_file;
  WorkloadResult work;
  std::vector<Op> log_ops;         // every record
  // The records that matter (Op::matters(), without their data), and the
  // crash states of their effects: state k is a crash before effects[k].
  std::vector<Op> effects;
  std::unique_ptr<crash::CrashStates> states;
  std::unique_ptr<Oracle> oracle;  // refers to work.requests
  std::vector<std::string> violations;
  CallCounts counts;
};

// Creates rec.dir/base.raw (random bytes, never 0) if the scenario has a
// backing file, and rec.dir/image.qed; fills rec.image, initial_file and
// initial_disk.
bool make_images(const Scenario &s, Recording &rec, std::mt19937_64 &rng, std::string &why);
// The environment for the preload library (QED_SYSCALL_*); `data` false:
// records without the bytes written.
std::vector<std::pair<std::string, std::string>> preload_env(const Recording &rec,
                                                             const Scenario &s, bool data);
// file=IMAGE and the scenario's plugin options.
std::vector<std::string> plugin_args(const std::string &image, const Scenario &s);

// Drives the server on `socket` once the images exist.
using Driver = std::function<WorkloadResult(const std::string &socket, const Recording &rec)>;
// The random workload of `spec` (workload.h) with the scenario's sizes.
Driver random_workload(WorkloadSpec spec, const Scenario &s, uint64_t seed);

// Records a run of `s` driven by `drive` into `rec` (whose dir is set). False
// only when the run could not be made at all (or the log does not explain
// the file it left); problems of the plugin go to rec.violations.
bool record(const Tools &tools, const Scenario &s, const Driver &drive, uint64_t seed,
            Recording &rec, std::string &why);

}  // namespace qsys
