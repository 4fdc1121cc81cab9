// Checking what a run left and the crash states of its log (see the top of
// harness.cpp for what is checked and why).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tests/syscall/recording.h"

namespace qsys {

struct Counters {
  uint64_t states = 0, via_nbdkit = 0, via_qemu = 0, violations = 0;
};

// A clean image (NEED_CHECK clear) is never checked at open, so what it
// leaks stays leaked: it must at least not end in clusters nothing uses.
// Empty if fine; `leaked` gets the leaked clusters of a clean image.
std::string clean_tail_check(const std::vector<uint8_t> &bytes, uint64_t &leaked);

class StateChecker {
public:
  StateChecker(const Tools &tools, Counters &counters) : tools_(tools), c_(counters) {}

  // Checks `bytes` as the state `label` of `rec` for a crash before `bound`
  // (UINT64_MAX: no crash): in process always, by qemu-img check and through
  // nbdkit when asked.
  void check(Recording &rec, const std::vector<uint8_t> &bytes, uint64_t bound,
             const std::string &label, bool via_qemu, bool via_nbdkit);
  // The plugin reopening the file the run left (a copy: it repairs).
  void reopen(Recording &rec);
  // Counts and prints a violation (saving `bytes` with QED_SYSCALL_KEEP).
  void violation(Recording &rec, const std::string &label, const std::string &why,
                 const std::vector<uint8_t> &bytes = {});
  // Each of rec.violations.
  void run_violations_of(Recording &rec);

  // A new run: violations are printed at most `per_run` times until the next.
  void begin_run(uint64_t per_run);
  uint64_t run_violations() const { return run_violations_; }
  const std::string &first_violation() const { return first_; }

private:
  const Tools &tools_;
  Counters &c_;
  uint64_t per_run_ = 12, run_violations_ = 0, printed_ = 0;
  std::string first_;
};

// Checks `count` crash states of `rec`; every `qemu_every`-th by qemu-img
// check, every `nbdkit_every`-th through nbdkit (0: never).
void check_crash_states(Recording &rec, StateChecker &checker, uint64_t count, uint64_t seed,
                        uint64_t qemu_every, uint64_t nbdkit_every);

}  // namespace qsys
