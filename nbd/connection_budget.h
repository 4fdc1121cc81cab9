// The connections a whole backing chain may hold to NBD servers, shared by
// every NbdFile of the chain (the store that opens them creates one per
// chain). Per level, a hostile server serving distinct exports could make a
// chain 64 deep with a pool of connections at each level; with one budget,
// the chain holds at most `total` connections whatever its depth: each
// NbdFile keeps one for as long as it is open (so there are at most `total`
// NBD files in a chain), and takes more only while the budget has some.
//
// Thread safety: lock-free; every method may be called from many threads.
#pragma once

#include <atomic>

namespace qed_nbd {

class ConnectionBudget {
public:
  explicit ConnectionBudget(unsigned total) : total_(total), left_(total) {}
  ConnectionBudget(const ConnectionBudget &) = delete;
  ConnectionBudget &operator=(const ConnectionBudget &) = delete;

  // Takes one connection if any is left.
  bool try_take() {
    unsigned left = left_.load();
    while (left > 0 && !left_.compare_exchange_weak(left, left - 1))
      ;
    return left > 0;
  }
  void give_back() { left_++; }
  unsigned left() const { return left_.load(); }
  unsigned total() const { return total_; }

private:
  const unsigned total_;
  std::atomic<unsigned> left_;
};

}  // namespace qed_nbd
