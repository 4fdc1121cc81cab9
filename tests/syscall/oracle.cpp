#include "tests/syscall/oracle.h"

#include <algorithm>
#include <cstring>

namespace qsys {

Oracle::Oracle(const std::vector<Request> &requests, std::vector<uint8_t> initial_disk)
    : reqs_(requests), initial_(std::move(initial_disk)) {
  // Acknowledged flushes by send time, with the earliest reply among the
  // flushes sent at or after each.
  std::vector<std::pair<uint64_t, uint64_t>> flushes;  // (send, reply)
  for (const Request &r : reqs_)
    if (r.kind == ReqKind::kFlush && r.ok())
      flushes.emplace_back(r.send_ns, r.reply_ns);
  std::sort(flushes.begin(), flushes.end());
  std::vector<uint64_t> min_reply(flushes.size() + 1, UINT64_MAX);
  for (size_t i = flushes.size(); i-- > 0;)
    min_reply[i] = std::min(min_reply[i + 1], flushes[i].second);
  durable_at_.assign(reqs_.size(), UINT64_MAX);
  for (size_t i = 0; i < reqs_.size(); i++) {
    const Request &r = reqs_[i];
    if (r.kind == ReqKind::kFlush || !r.ok())
      continue;
    auto it = std::upper_bound(flushes.begin(), flushes.end(),
                               std::make_pair(r.reply_ns, UINT64_MAX));
    durable_at_[i] = min_reply[size_t(it - flushes.begin())];
    if (r.fua())
      durable_at_[i] = std::min(durable_at_[i], r.reply_ns);
  }

  // Segments: runs of bytes covered by the same requests.
  std::vector<uint64_t> cuts = {0, initial_.size()};
  std::vector<uint32_t> order;
  for (size_t i = 0; i < reqs_.size(); i++) {
    const Request &r = reqs_[i];
    if (r.kind == ReqKind::kFlush || r.length == 0)
      continue;
    cuts.push_back(r.offset);
    cuts.push_back(r.offset + r.length);
    order.push_back(uint32_t(i));
  }
  std::sort(cuts.begin(), cuts.end());
  cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
  for (size_t i = 0; i + 1 < cuts.size(); i++)
    segments_.push_back({cuts[i], cuts[i + 1], {}});
  std::sort(order.begin(), order.end(),
            [&](uint32_t a, uint32_t b) { return reqs_[a].send_ns < reqs_[b].send_ns; });
  for (uint32_t i : order) {
    const Request &r = reqs_[i];
    auto first = std::lower_bound(cuts.begin(), cuts.end(), r.offset) - cuts.begin();
    for (size_t s = size_t(first); s < segments_.size() && segments_[s].start < r.offset + r.length;
         s++)
      segments_[s].covering.push_back(i);
  }
}

uint8_t Oracle::value_of(long c, uint64_t pos) const {
  if (c < 0)
    return initial_[pos];
  const Request &r = reqs_[size_t(c)];
  return r.kind == ReqKind::kWrite ? r.data[pos - r.offset] : 0;
}

std::string Oracle::check(const uint8_t *disk, uint64_t bound) const {
  std::vector<long> cands;
  for (const Segment &s : segments_) {
    // The latest send time of a durable write or zero here supersedes every
    // request answered before it.
    uint64_t supersede = 0;
    bool any_durable = false;
    for (uint32_t i : s.covering) {
      const Request &r = reqs_[i];
      if (r.kind != ReqKind::kTrim && durable_at_[i] < bound) {
        any_durable = true;
        supersede = std::max(supersede, r.send_ns);
      }
    }
    cands.clear();
    if (!any_durable)
      cands.push_back(-1);
    for (uint32_t i : s.covering) {
      const Request &r = reqs_[i];
      if (r.send_ns < bound && (!any_durable || r.reply_ns >= supersede))
        cands.push_back(long(i));
    }
    if (cands.size() == 1) {
      const long c = cands[0];
      const uint8_t *want = c < 0 ? &initial_[s.start]
                            : reqs_[size_t(c)].kind == ReqKind::kWrite
                                ? &reqs_[size_t(c)].data[s.start - reqs_[size_t(c)].offset]
                                : nullptr;
      bool same;
      if (want) {
        same = std::memcmp(disk + s.start, want, s.end - s.start) == 0;
      } else {
        const uint8_t *p = disk + s.start;
        same = p[0] == 0 && std::memcmp(p, p + 1, s.end - s.start - 1) == 0;
      }
      if (same)
        continue;
    }
    for (uint64_t pos = s.start; pos < s.end; pos++) {
      bool ok = false;
      for (long c : cands)
        if (value_of(c, pos) == disk[pos]) {
          ok = true;
          break;
        }
      if (!ok)
        return explain(s, pos, disk[pos], cands, bound);
    }
  }
  return {};
}

std::string Oracle::explain(const Segment &s, uint64_t pos, uint8_t found,
                            const std::vector<long> &cands, uint64_t bound) const {
  // How far the bad bytes reach within the segment.
  std::string why = "byte " + std::to_string(pos) + " (in [" + std::to_string(s.start) + ", " +
                    std::to_string(s.end) + ")) holds " + std::to_string(found) + "; allowed:";
  for (long c : cands) {
    why += "\n      ";
    if (c < 0) {
      why += "the initial value " + std::to_string(initial_[pos]);
      continue;
    }
    const Request &r = reqs_[size_t(c)];
    why += std::to_string(value_of(c, pos)) + " from " + r.describe();
    if (durable_at_[size_t(c)] < bound)
      why += " (durable since " + std::to_string(durable_at_[size_t(c)]) + ")";
  }
  why += "\n    requests covering it:";
  for (uint32_t i : s.covering)
    why += "\n      #" + std::to_string(i) + " " + reqs_[i].describe() +
           (durable_at_[i] < bound ? " DURABLE at " + std::to_string(durable_at_[i]) : "");
  why += "\n    crash before " + (bound == UINT64_MAX ? std::string("never (no crash)")
                                                     : std::to_string(bound));
  return why;
}

}  // namespace qsys
