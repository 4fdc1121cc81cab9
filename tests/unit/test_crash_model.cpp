// The one crash model (tests/support/crash_model.h) every crash test builds
// its states with: what survives a power loss, including what only one of
// its two former copies modelled (a failed sync dropping dirty pages; a torn
// write past the end growing the file fully, or only as far as its surviving
// sectors).
#include <doctest/doctest.h>

#include <cstdint>
#include <random>
#include <set>
#include <vector>

#include "tests/support/crash_model.h"

TEST_SUITE_BEGIN("crash-model");

namespace {

using crash::Kind;
using crash::Record;
using crash::Survival;

Record write_of(uint64_t offset, uint64_t length, uint8_t value) {
  return Record{Kind::kWrite, offset, length, std::vector<uint8_t>(length, value)};
}

Record op(Kind kind, uint64_t offset = 0, uint64_t length = 0) {
  return Record{kind, offset, length, {}};
}

}  // namespace

TEST_CASE("what a crash keeps: everything synced, each later record whole, absent or torn") {
  const std::vector<uint8_t> initial(1024, 0xAA);
  crash::Log log;
  log.push_back(write_of(0, 512, 0x11));
  log.push_back(op(Kind::kSync));
  log.push_back(write_of(1024, 1024, 0x22));  // past the end: two sectors
  log.push_back(op(Kind::kMarker, 7));
  crash::CrashStates states(initial, log);
  CHECK(states.last_sync_before(1) == -1);
  CHECK(states.last_sync_before(2) == 1);
  CHECK(states.last_sync_before(log.size()) == 1);

  std::mt19937_64 rng(1);
  std::vector<uint8_t> synced = initial;
  std::fill_n(synced.begin(), 512, 0x11);
  CHECK(states.state_at(log.size(), Survival::kNone, rng) == synced);
  CHECK(states.state_at(log.size(), Survival::kAll, rng) == states.final_file());
  CHECK(states.final_file().size() == 2048);
  // Before the sync, nothing after the initial file is certain.
  CHECK(states.state_at(1, Survival::kNone, rng) == initial);

  // Random states: the synced sector always there; each sector of the torn
  // write old (absent) or new, never mixed; the size unchanged, grown only
  // as far as a surviving sector, or grown to the end with data missing.
  std::set<uint64_t> sizes;
  bool grown_without_data = false;
  for (int i = 0; i < 400; i++) {
    const std::vector<uint8_t> s = states.state_at(log.size(), Survival::kRandom, rng);
    REQUIRE(s.size() >= 1024);
    sizes.insert(s.size());
    CHECK(std::vector<uint8_t>(s.begin(), s.begin() + 1024) == synced);
    for (uint64_t sector = 1024; sector < s.size(); sector += 512) {
      const uint8_t first = s[sector];
      CHECK((first == 0 || first == 0x22));
      for (uint64_t b = sector; b < sector + 512; b++)
        if (s[b] != first) {
          FAIL_CHECK("sector " << sector << " is torn inside");
          break;
        }
    }
    if (s.size() == 2048 && s[1536] == 0)
      grown_without_data = true;
  }
  CHECK(sizes == std::set<uint64_t>{1024, 1536, 2048});
  CHECK(grown_without_data);
}

TEST_CASE("a failed sync may lose the writes before it for good") {
  const std::vector<uint8_t> initial(1024, 0xAA);
  crash::Log log;
  log.push_back(write_of(0, 512, 0x33));
  log.push_back(op(Kind::kFailedSync));
  log.push_back(write_of(512, 512, 0x44));
  log.push_back(op(Kind::kSync));
  crash::CrashStates states(initial, log);
  CHECK_FALSE(states.failed_sync_before(1));
  CHECK(states.failed_sync_before(2));
  CHECK(states.last_sync_before(log.size()) == 3);

  std::mt19937_64 rng(2);
  std::vector<uint8_t> kept(1024, 0x33);
  std::fill(kept.begin() + 512, kept.end(), 0x44);
  CHECK(states.state_at(log.size(), Survival::kNone, rng) == kept);
  std::vector<uint8_t> lost = kept;
  std::fill_n(lost.begin(), 512, 0xAA);
  CHECK(states.state_at(log.size(), Survival::kNone, rng, true) == lost);
  // Without a failed sync before the crash point, the branch changes nothing.
  CHECK(states.state_at(1, Survival::kAll, rng, true) ==
        states.state_at(1, Survival::kAll, rng, false));
  CHECK(states.final_file() == kept);
}

TEST_CASE("size changes and zeroed ranges") {
  const std::vector<uint8_t> initial(1024, 0xAA);
  std::vector<uint8_t> file = initial;
  crash::CrashStates::apply(file, op(Kind::kPunch, 512, 4096));
  CHECK(file.size() == 1024);  // a punched hole never grows the file
  CHECK(file[511] == 0xAA);
  CHECK(file[512] == 0);
  crash::CrashStates::apply(file, op(Kind::kZero, 1024, 1024));
  CHECK(file.size() == 2048);
  crash::CrashStates::apply(file, op(Kind::kExtend, 1536));
  CHECK(file.size() == 2048);  // an extension never shrinks it
  crash::CrashStates::apply(file, op(Kind::kExtend, 4096));
  CHECK(file.size() == 4096);
  crash::CrashStates::apply(file, op(Kind::kTruncate, 100));
  CHECK(file.size() == 100);
  crash::CrashStates::apply(file, op(Kind::kNoEffect, 0, 4096));
  crash::CrashStates::apply(file, op(Kind::kMarker, 0, 4096));
  CHECK(file == std::vector<uint8_t>(100, 0xAA));
}

TEST_SUITE_END();
