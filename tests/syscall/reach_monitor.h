// Watches an image file while nbdkit serves it: no L1 or L2 entry on disk may
// point at a table or cluster the file does not reach. Such an entry is what
// a flush must never write (a crash, or a clean close that cuts nothing,
// would then drop it as the trace of an interrupted write, and with it data
// the flush acknowledged), and it can exist for a moment only: a later
// growth of the file hides it, so the final file alone rarely shows it.
//
// A scan reads the L1 table and every L2 table it names, then the file's
// size, then reads again each entry that reached past that size. Every entry
// on disk at the first read was written by a flush that had made the file
// reach it, and the engine never cuts the file below a written entry, so an
// entry found past the end both times was on disk past the end at the moment
// the size was taken; a torn read of a sector being written reads differently
// the second time and is not reported.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

namespace qsys {

class ReachMonitor {
public:
  // Scans `path` every `interval_us` microseconds from start() to stop().
  ReachMonitor(std::string path, unsigned interval_us)
      : path_(std::move(path)), interval_us_(interval_us) {}
  ~ReachMonitor() { stop(); }
  ReachMonitor(const ReachMonitor &) = delete;
  ReachMonitor &operator=(const ReachMonitor &) = delete;

  void start();
  void stop();
  // The first entry found past the end (empty if none), and the scans made.
  std::string violation() const;
  uint64_t scans() const { return scans_.load(); }

private:
  void run();
  std::string scan();

  const std::string path_;
  const unsigned interval_us_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> scans_{0};
  mutable std::mutex mu_;
  std::string violation_;  // guarded by mu_
};

}  // namespace qsys
