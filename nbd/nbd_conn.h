// One connection of an NbdFile's pool, shared by every request that has
// commands in flight on it: several requests' commands are in flight on one
// connection at once, and no thread exists for the connection.
//
// Why (bench/bench.sh workload nbd-rand-read, perf stat -e context-switches on the overlay;
// see the README's Performance section): nbdkit runs each request on its own
// thread, and on a 2-CPU machine the sleeps and wake-ups of those threads
// are most of the server's CPU per read. A request that found every
// connection busy used to wait for one (a sleep and wake-up more than one
// that found one); a reader thread per connection, as in nbdkit's nbd
// plugin, hands every reply over to the request's thread (measured: 5.0
// switches and 16 CPU s/GiB per 4k read against 3.5 and 11.6 here). Now
// the thread of one of the waiting requests, the leader, polls the socket
// and runs libnbd's state machine; libnbd's completion callbacks, called in
// the leader's thread, mark the commands of every request done and wake the
// threads whose requests are complete; a leader whose own request is
// complete reads the replies already there, then passes the role to a
// waiting thread. Measured with 8 connections under nbdkit's 16 threads:
// about 2.5 switches per read instead of 3.2, and some 7% less CPU per GiB.
// Each hand-over of the role costs a wake-up (one connection for 16
// threads: about 4.7 switches per read), so the pool still grows to its
// limit before connections are shared.
//
// Deadlines: each request has its own. One that passes with commands in
// flight breaks the connection: the leader shuts the socket down, libnbd
// fails every command in flight (their buffers are free again once run()
// returns), and the connection is closed by the last request using it.
//
// Thread safety: mu_ guards the members under it below and serializes every
// libnbd call on the handle that may run its state machine (issuing
// commands, notify_read/write, shutting the socket down), so the socket
// libnbd closes when the connection dies is never used by us after that;
// poll() runs without it. Lock order: NbdFile's pool lock, if any, before
// mu_; mu_ before libnbd's handle lock. Completion callbacks run under both.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "lib/status.h"
#include "nbd/status_cache.h"
#include "lib/thread_annotations.h"

struct nbd_handle;

namespace qed_nbd {

// Closes a libnbd handle (the connection, and any command still in flight)
// on destruction.
struct HandleCloser {
  void operator()(nbd_handle *h) const;
};
using Handle = std::unique_ptr<nbd_handle, HandleCloser>;

using Clock = std::chrono::steady_clock;

// What libnbd said about the last failure on this thread.
std::string libnbd_error();
// Milliseconds left until `t`, 0 if it passed.
int ms_until(Clock::time_point t);

struct Waiter;

// One NBD command of a request, and what came back.
struct Command {
  bool read = true;  // else block status
  void *buf = nullptr;
  uint32_t count = 0;
  uint64_t offset = 0;
  StatusReply *reply = nullptr;  // block status: where the extents go
  // Set while the command runs (under the connection's mu_).
  Waiter *waiter = nullptr;
  bool done = false;
  int err = 0;  // the errno the command failed with, 0 if it succeeded
};

// What a run left of its connection.
enum class Outcome {
  kKeep,    // still usable (the server may have said no to a command)
  kLost,    // the connection died or the server is stopping: worth one more
            // try on a fresh one
  kBroken,  // this request's deadline passed with commands in flight: the
            // connection was shut down; do not retry
};

class Conn {
public:
  // Takes a connected handle; `structured` says whether it negotiated
  // structured replies (and base:allocation).
  Conn(Handle h, bool structured, int request_timeout_ms);
  ~Conn();
  Conn(const Conn &) = delete;
  Conn &operator=(const Conn &) = delete;

  bool structured() const { return structured_; }
  // Whether a command may still be issued on it (not dead, not broken, not
  // told ESHUTDOWN by the server).
  bool usable();

  // Issues `commands` and waits until every issued one is done or `deadline`
  // passed (then a little longer, until libnbd has failed them: nothing in
  // flight outlives the call). Fails with what libnbd or the server said.
  qed::Status run(std::vector<Command> &commands, Clock::time_point deadline, Outcome &outcome);

private:
  // Lead, or wait as a follower, until `w`'s commands are all done.
  void wait(Waiter &w, Clock::time_point deadline) REQUIRES(mu_);
  // One round of the leader: poll the socket (mu_ released meanwhile), then
  // let libnbd read or write.
  void lead_once(Waiter &w, Clock::time_point deadline) REQUIRES(mu_);
  // The leader, its own commands done: reads one reply that is already on
  // the socket, if a follower still waits; false if there was none.
  bool replies_waiting() REQUIRES(mu_);
  // Wakes the leader out of poll(): state changed that its poll() does not
  // watch (a command to write, the handle died, a deadline passed).
  void kick();
  void drain_kicks();
  // The list of followers.
  void follow(Waiter &w) REQUIRES(mu_);
  void unfollow(Waiter &w) REQUIRES(mu_);
  Waiter *first_pending() const REQUIRES(mu_);

  const Handle h_;
  const bool structured_;
  const int request_timeout_ms_;
  const int wake_fd_;  // eventfd: kick() writes it, the leader polls it

  qed::Mutex mu_;
  bool leading_ GUARDED_BY(mu_) = false;     // a thread is the leader
  Waiter *first_ GUARDED_BY(mu_) = nullptr;  // followers, oldest first (a list
  Waiter *last_ GUARDED_BY(mu_) = nullptr;   // through the Waiters)
  bool broken_ GUARDED_BY(mu_) = false;      // a deadline passed with commands in flight
  bool shut_ GUARDED_BY(mu_) = false;        // the socket was shut down (broken_)
  bool stopping_ GUARDED_BY(mu_) = false;    // the server answered ESHUTDOWN
};

}  // namespace qed_nbd
