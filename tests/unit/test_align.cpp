// lib/align.h: rounding to multiples, against plain arithmetic, and at the
// edges of the 64-bit range, where "(v + a - 1) / a * a" wraps although the
// result fits (divisors that are not powers of two).
#include <doctest/doctest.h>

#include <cstdint>

#include "lib/align.h"

TEST_SUITE_BEGIN("align");

TEST_CASE("round_down, round_up and div_round_up on small values") {
  const uint64_t divisors[] = {1, 3, 512, 4096, 65536, 100000};
  for (uint64_t to : divisors) {
    for (uint64_t v = 0; v < 3 * to + 2 && v < 300000; v += (to < 10 ? 1 : to / 7 + 1)) {
      const uint64_t down = qed::round_down(v, to);
      const uint64_t up = qed::round_up(v, to);
      CHECK(down % to == 0);
      CHECK(down <= v);
      CHECK(v - down < to);
      CHECK(up % to == 0);
      CHECK(up >= v);
      CHECK(up - v < to);
      CHECK(qed::div_round_up(v, to) * to == up);
      CHECK((v % to == 0) == (up == down));
    }
  }
  CHECK(qed::round_up(0, 512) == 0);
  CHECK(qed::round_up(1, 512) == 512);
  CHECK(qed::round_up(512, 512) == 512);
  CHECK(qed::round_up(513, 512) == 1024);
  CHECK(qed::round_down(1023, 512) == 512);
  CHECK(qed::div_round_up(1025, 512) == 3);
}

TEST_CASE("no overflow where the result fits in 64 bits") {
  constexpr uint64_t kMax = UINT64_MAX;
  // div_round_up and round_down are exact over the whole range.
  CHECK(qed::div_round_up(kMax, 1) == kMax);
  CHECK(qed::div_round_up(kMax, 2) == (kMax >> 1) + 1);
  CHECK(qed::div_round_up(kMax, kMax) == 1);
  CHECK(qed::div_round_up(kMax - 1, kMax) == 1);
  CHECK(qed::round_down(kMax, 4096) == kMax - 4095);
  // The largest multiple of 4096 rounds to itself, and values below it round
  // up to it.
  constexpr uint64_t top = kMax - 4095;
  CHECK(qed::round_up(top, 4096) == top);
  CHECK(qed::round_up(top - 1, 4096) == top);
  CHECK(qed::round_up(top - 4095, 4096) == top);
  // UINT64_MAX is a multiple of 3 (and of 5): v + to - 1 wraps for v near it,
  // though the result fits.
  CHECK(qed::round_up(kMax - 2, 3) == kMax);
  CHECK(qed::round_up(kMax - 1, 3) == kMax);
  CHECK(qed::round_up(kMax, 3) == kMax);
  CHECK(qed::round_up(kMax - 3, 5) == kMax);
}

TEST_CASE("above the largest multiple, round_up wraps as documented") {
  // 2^64 is the next multiple of 4096: it wraps to 0.
  CHECK(qed::round_up(UINT64_MAX, 4096) == 0);
  CHECK(qed::round_up(UINT64_MAX - 4094, 4096) == 0);
}

TEST_CASE("constexpr") {
  static_assert(qed::round_up(5, 4) == 8);
  static_assert(qed::round_down(5, 4) == 4);
  static_assert(qed::div_round_up(5, 4) == 2);
}

TEST_SUITE_END();
