#include "reach_monitor.h"

#include <time.h>

#include <cstdint>
#include <string>
#include <vector>

#include "byte_order.h"
#include "file.h"
#include "format.h"
#include "geometry.h"
#include "table.h"

namespace qsys {

namespace {

// The entry at `offset` read again, or `fallback` if it cannot be read.
uint64_t entry_at(qed::File &file, uint64_t offset, uint64_t fallback) {
  uint8_t b[8];
  return file.pread(b, sizeof b, offset).is_ok() ? qed::load_le64(b) : fallback;
}

}  // namespace

void ReachMonitor::start() {
  stop_ = false;
  thread_ = std::thread([this] { run(); });
}

void ReachMonitor::stop() {
  stop_ = true;
  if (thread_.joinable())
    thread_.join();
}

std::string ReachMonitor::violation() const {
  std::lock_guard lock(mu_);
  return violation_;
}

void ReachMonitor::run() {
  while (!stop_.load()) {
    std::string bad = scan();
    scans_++;
    if (!bad.empty()) {
      std::lock_guard lock(mu_);
      if (violation_.empty())
        violation_ = std::move(bad);
      return;  // one is enough; the run has failed
    }
    struct timespec ts = {0, long(interval_us_) * 1000};
    nanosleep(&ts, nullptr);
  }
}

std::string ReachMonitor::scan() {
  auto opened = qed::open_posix_file(path_, qed::OpenMode::kReadOnly);
  if (!opened)
    return {};  // not there yet, or being replaced: nothing to say
  qed::File &file = **opened;
  auto size0 = file.size();
  qed::HeaderBytes hb;
  if (!size0 || !file.pread(hb.data(), hb.size(), 0).is_ok())
    return {};
  const qed::Header h = qed::decode_header(hb);
  if (!qed::validate_header(h, *size0).is_ok())
    return {};  // a header being rewritten: the next scan looks again
  const qed::Geometry g(h);
  std::vector<uint64_t> l1(g.l1_entries_used());
  if (!qed::read_table_entries(file, h.l1_table_offset, l1).is_ok())
    return {};
  std::vector<std::vector<uint64_t>> l2(l1.size());
  for (size_t i = 0; i < l1.size(); i++) {
    if (l1[i] == 0 || !g.is_cluster_aligned(l1[i]))
      continue;
    l2[i].resize(g.l2_entries_used(i));
    if (!qed::read_table_entries(file, l1[i], l2[i]).is_ok())
      l2[i].clear();
  }
  // The size after the entries: each entry read was on disk before it.
  auto size = file.size();
  if (!size)
    return {};
  const uint64_t cs = g.cluster_size(), tb = g.table_bytes();
  for (size_t i = 0; i < l1.size(); i++) {
    const uint64_t t = l1[i];
    if (t == 0 || !g.is_cluster_aligned(t))
      continue;
    if (t + tb > *size &&
        entry_at(file, h.l1_table_offset + 8 * i, 0) == t)
      return "L1 entry " + std::to_string(i) + " names the L2 table at " + std::to_string(t) +
             ", which ends at " + std::to_string(t + tb) + ", past the end of the file (" +
             std::to_string(*size) + " bytes)";
    for (size_t j = 0; j < l2[i].size(); j++) {
      const uint64_t e = l2[i][j];
      if (e <= qed::kEntryZero || !g.is_cluster_aligned(e) || e + cs <= *size)
        continue;
      if (entry_at(file, t + 8 * j, 0) == e)
        return "the L2 entry for virtual offset " +
               std::to_string(g.l2_span_start(i) + j * cs) + " (table at " + std::to_string(t) +
               ") names the cluster at " + std::to_string(e) + ", which ends at " +
               std::to_string(e + cs) + ", past the end of the file (" + std::to_string(*size) +
               " bytes)";
    }
  }
  return {};
}

}  // namespace qsys
