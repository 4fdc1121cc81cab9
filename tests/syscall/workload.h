// A multi-connection NBD workload against a running nbdkit, with the send and
// reply time (CLOCK_MONOTONIC, the clock the preload library stamps its
// records with) of every request.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace qsys {

uint64_t now_ns();

enum class ReqKind { kWrite, kZero, kTrim, kFlush };

struct Request {
  ReqKind kind;
  unsigned conn;
  uint32_t flags = 0;  // LIBNBD_CMD_FLAG_FUA, _NO_HOLE, _FAST_ZERO
  uint64_t offset = 0, length = 0;
  uint64_t send_ns = 0;   // just before the request was issued
  uint64_t reply_ns = 0;  // just after its reply arrived
  int err = 0;            // 0: acknowledged; else the errno the client saw
  std::vector<uint8_t> data;  // kWrite

  bool ok() const { return err == 0; }
  bool fua() const;
  std::string describe() const;
};

struct WorkloadSpec {
  uint64_t disk_bytes = 0;
  uint32_t cluster_size = 65536;
  unsigned connections = 4;
  unsigned ops_per_connection = 100;
  // Each connection keeps to its own byte range (the ranges share clusters at
  // their edges). Needed for read_back, whose expectations must not race.
  bool own_regions = false;
  // After every acknowledged write or zero, read the range back and compare.
  bool read_back = false;
  bool fast_zero = true;  // some zero requests carry FAST_ZERO
  // Also reads random ranges (not recorded as requests: they change nothing
  // a crash could lose), for copy-on-read; with read_back, the bytes known
  // are checked.
  bool reads = false;
  uint64_t seed = 1;
  std::vector<uint8_t> initial_disk;  // what the disk reads before (read_back)
};

struct WorkloadResult {
  std::vector<Request> requests;        // every connection's, in no particular order
  std::vector<std::string> violations;  // read-back mismatches, failed reads
  uint64_t failed = 0;                  // requests that got an error
  uint64_t expected_failures = 0;       // of which FAST_ZERO refused (ENOTSUP)
};

// Runs the workload on the nbdkit listening on `socket`. Each connection
// flushes once more at the end.
WorkloadResult run_workload(const std::string &socket, const WorkloadSpec &spec);

// Issues fixed requests: connection c sends per_connection[c] in order, all
// connections at once. Fills in the times and results.
WorkloadResult run_requests(const std::string &socket,
                            std::vector<std::vector<Request>> per_connection);

// Whether a server answers on `socket`: connects and reads `count` bytes at
// `offset`.
bool server_answers(const std::string &socket, uint64_t count, std::string &why,
                    uint64_t offset = 0);

// Reads the whole disk through nbdkit on `socket`.
bool read_disk(const std::string &socket, std::vector<uint8_t> &disk, std::string &why);

}  // namespace qsys
