// What the disk may hold after a crash, byte by byte, from the requests the
// clients made and the times they were sent and answered.
//
// A request C is durable at a crash moment t when the client had, before t,
// the reply of a flush sent after C's reply (any connection: the plugin
// advertises multi-conn), or C's own reply if C carried FUA. A byte then
// holds the value of one of its candidates:
//   - a request covering it that was sent before t and that no durable
//     request covering it superseded (D supersedes C if D was sent after C
//     was answered); failed requests are candidates but never durable;
//   - the disk's initial value, unless a durable write or zero covers it.
// A trim leaves zero or what was there, so it is a candidate (of zero) that
// supersedes nothing. Bytes of writes are never 0, so a lost write cannot
// pass for a zeroed range.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tests/syscall/workload.h"

namespace qsys {

class Oracle {
public:
  Oracle(const std::vector<Request> &requests, std::vector<uint8_t> initial_disk);

  // Checks the whole disk read back after a crash at a moment before
  // `crash_bound` (UINT64_MAX: after everything). Empty if every byte is
  // allowed, else a description of the first bad run of bytes.
  std::string check(const uint8_t *disk, uint64_t crash_bound) const;

  // How many requests the check uses and how many flushes acknowledged.
  size_t requests() const { return reqs_.size(); }

private:
  struct Segment {
    uint64_t start, end;
    std::vector<uint32_t> covering;  // request indices, by send time
  };
  uint8_t value_of(long candidate, uint64_t pos) const;  // -1: the initial value
  std::string explain(const Segment &s, uint64_t pos, uint8_t found,
                      const std::vector<long> &candidates, uint64_t crash_bound) const;

  const std::vector<Request> &reqs_;
  std::vector<uint64_t> durable_at_;  // per request: first moment it is durable
  std::vector<uint8_t> initial_;
  std::vector<Segment> segments_;
};

}  // namespace qsys
