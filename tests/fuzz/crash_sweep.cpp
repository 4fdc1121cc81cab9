#include "tests/fuzz/crash_sweep.h"

#include <cstring>
#include <random>

#include "lib/format.h"
#include "tests/support/test_helpers.h"

namespace fuzz {

bool past_eof_allowed(const std::vector<uint8_t> &file, bool has_backing) {
  if (has_backing || file.size() < qed::kHeaderBytes)
    return false;
  qed::HeaderBytes hb;
  std::memcpy(hb.data(), file.data(), hb.size());
  return qed::decode_header(hb).needs_check();
}

std::string sweep_structure(crash::CrashStates &states, bool has_backing, uint64_t seed) {
  // Its own generator: the state the input picks is made before, unchanged.
  std::mt19937_64 rng(seed ^ 0x9e3779b97f4a7c15ull);
  std::vector<uint8_t> file;  // one buffer for every state
  const crash::Log &log = states.log();
  // A state at a sync holds any subset of what followed the sync before, so
  // the points between syncs add nothing; the one where nothing survived is
  // the previous point's where all did.
  for (size_t k = 0; k <= log.size(); k++) {
    if (k < log.size() && log[k].kind != crash::Kind::kSync)
      continue;
    for (int i = 0; i <= kTornStatesPerSync; i++) {
      const bool all = i == 0;
      states.state_at(k, all ? crash::Survival::kAll : crash::Survival::kRandom, rng, file);
      const std::string problem = qt::check_structure(file, past_eof_allowed(file, has_backing));
      if (!problem.empty())
        return "at log position " + std::to_string(k) + " of " + std::to_string(log.size()) +
               (all ? ", unsynced operations kept" : ", unsynced operations torn") + ": " +
               problem;
    }
  }
  return "";
}

}  // namespace fuzz
