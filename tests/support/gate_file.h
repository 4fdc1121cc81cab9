// A File for deterministic races: a chosen read waits at a gate until the
// test opens it (so a request stops at a known point while another one runs),
// and reads can be made to fail (a backing file whose server went away).
// Header-only. mu_ guards the gate's state; the counters are atomic.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>

#include "tests/support/test_helpers.h"

namespace qt {

class GateFile final : public SharedFile {
public:
  using SharedFile::SharedFile;

  // The `nth` pread from now (1-based) waits at the gate until open_gate().
  void hold_read(uint64_t nth) {
    std::lock_guard lock(mu_);
    hold_at_ = reads_.load() + nth;
    reached_ = false;
    open_ = false;
  }
  // Waits until the held read arrived at the gate; false after `timeout`.
  bool wait_reached(std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return reached_; });
  }
  void open_gate() {
    std::lock_guard lock(mu_);
    open_ = true;
    cv_.notify_all();
  }
  // While on, every pread fails with EIO.
  void fail_reads(bool on) { failing_.store(on); }
  uint64_t reads() const { return reads_.load(); }
  uint64_t bytes_read() const { return bytes_read_.load(); }

  qed::Status pread(void *buf, size_t count, uint64_t offset) override {
    const uint64_t n = reads_.fetch_add(1) + 1;
    {
      std::unique_lock lock(mu_);
      if (n == hold_at_) {
        reached_ = true;
        cv_.notify_all();
        cv_.wait(lock, [&] { return open_; });
      }
    }
    if (failing_.load())
      return qed::Status::io_error(name() + ": read failed (the test's gate file)", EIO);
    bytes_read_.fetch_add(count);
    return SharedFile::pread(buf, count, offset);
  }

private:
  std::atomic<uint64_t> reads_{0};
  std::atomic<uint64_t> bytes_read_{0};
  std::atomic<bool> failing_{false};
  std::mutex mu_;
  std::condition_variable cv_;  // waited on with mu_
  uint64_t hold_at_ = 0;        // guarded by mu_; 0: no read is held
  bool reached_ = false;        // guarded by mu_
  bool open_ = false;           // guarded by mu_
};

}  // namespace qt
