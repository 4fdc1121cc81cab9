// Rounding to multiples: the one place the "(v + a - 1) / a * a" idiom lives,
// so that its overflow behaviour is stated once (tests/unit/test_align.cpp).
// `to` is any non-zero value (not only a power of two); 0 is undefined
// behaviour, as for the division it replaces.
#pragma once

#include <cstdint>

namespace qed {

// The largest multiple of `to` that is <= v. Never overflows.
constexpr uint64_t round_down(uint64_t v, uint64_t to) { return v / to * to; }

// v / to, rounded up. Never overflows (no v + to - 1 is formed): exact for
// every v, UINT64_MAX included.
constexpr uint64_t div_round_up(uint64_t v, uint64_t to) { return v / to + (v % to != 0); }

// The smallest multiple of `to` that is >= v: exact whenever that multiple
// fits in 64 bits; when it does not (v above the largest multiple of `to`),
// the result wraps modulo 2^64. Callers round file offsets and sizes, which
// stay below 2^63.
constexpr uint64_t round_up(uint64_t v, uint64_t to) { return div_round_up(v, to) * to; }

}  // namespace qed
