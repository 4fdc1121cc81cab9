// A backing file on an NBD server: the engine's File interface over libnbd,
// read-only. The engine reads through it as through a local file; the
// backing format (raw, or a QED image served raw) applies on top.
//
// Parallel: requests are spread over a small pool of connections, one
// request per connection at a time. Reads go over connections without
// structured replies (fewer system calls per reply) when one is idle;
// block status, which needs them, over connections with them (a lone
// connection does both). The pool grows when every connection is busy, up
// to NbdOptions::connections when the server advertises multi-conn (every
// connection then sees the same data), else it is one connection; with a
// ConnectionBudget (one per chain), only while the budget has places left,
// and places go back when connections close. A request longer than the
// server's maximum block size goes out as several commands, all in flight
// at once on its connection.
//
// Trust: with refuse_this_host (a backing file named by a remote image),
// libnbd may use TCP only, and every connection is refused once connected
// if its peer is this host (this_host.h), before anything is read.
//
// Faults: a request that finds its connection dead (the server went away, or
// answers ESHUTDOWN because it is stopping and waits for its clients to
// leave) drops every idle connection (they lead to the same server) and
// tries once more on a fresh one. A server that is stopping while nothing is
// read keeps waiting for our idle connections until the next request. When connecting fails, requests fail at once with EIO
// until the back-off delay has passed; the delay doubles after each failed
// attempt (from backoff_min_ms to backoff_max_ms) and is reset by a success,
// so a restarted server is picked up by the first request after the delay.
// Nothing blocks for ever: a connection attempt gives up after
// connect_timeout_ms, a request (including its wait for a free connection)
// after request_timeout_ms. Every failure is EIO with a message that starts
// with the URI. A reconnection that finds an export of another size is
// refused (the image was opened over the old one).
//
// Thread safety: every method may be called from many threads at once. mu_
// guards the pool, the places taken from the budget and the back-off state
// (the members under it below); the status cache and the budget are
// thread-safe by themselves; no lock of ours is held while connecting or
// during I/O. A connection taken
// from the pool belongs to one request until it is given back, so nothing
// else touches that handle meanwhile (libnbd also locks each handle). What
// open() learnt (size, limits, flags) is constant afterwards.
//
// No nbdkit include: the plugin and the QED filter both link this.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "connection_budget.h"
#include "file.h"
#include "status.h"
#include "status_cache.h"

struct nbd_handle;

namespace qed_nbd {

struct NbdOptions {
  unsigned connections = 8;  // most connections, when the server allows multi-conn
  int connect_timeout_ms = 10000;
  int request_timeout_ms = 60000;
  int backoff_min_ms = 100;
  int backoff_max_ms = 2000;
  // Refuse connections that reach this host (this_host.h): set for backing
  // files named by an image on an NBD server.
  bool refuse_this_host = false;
  // The front end's words, appended to refusals: how the user allows a
  // server on this host ("; allow it with KEY=true"), which key sets the
  // connections ("; backing-connections=8").
  std::string allow_this_host_hint;
  std::string connections_hint;
};

// Closes a libnbd handle (the connection, and any command still in flight)
// on destruction.
struct HandleCloser {
  void operator()(nbd_handle *h) const;
};
using Handle = std::unique_ptr<nbd_handle, HandleCloser>;

class NbdFile final : public qed::File {
public:
  // Connects once to learn the export's size, block sizes and flags; fails
  // with a message naming `uri` if that connection cannot be made within
  // connect_timeout_ms. With a budget (shared by the files of one chain),
  // the file keeps one of its connections while it is open, fails if none
  // is left, and takes more only while some are.
  static qed::Result<std::unique_ptr<NbdFile>> open(
      const std::string &uri, const NbdOptions &options,
      std::shared_ptr<ConnectionBudget> budget = nullptr);
  ~NbdFile() override;

  const std::string &name() const override { return uri_; }
  // Bytes at or beyond the end of the export read as zeroes.
  qed::Status pread(void *buf, size_t count, uint64_t offset) override;
  qed::Result<uint64_t> size() override { return size_; }
  // From base:allocation: a hole is a run the server says reads as zeroes.
  // Everything is data when the server has no block status. Replies are
  // kept (status_cache.h), so a walk over the export costs requests and
  // extents linear in its extents.
  qed::Result<Run> probe_run(uint64_t offset, uint64_t limit) override;

  // The write side: a backing file is never written. All fail with EROFS.
  qed::Status pwrite(const void *buf, size_t count, uint64_t offset) override;
  qed::Status sync() override;
  qed::Status truncate(uint64_t size) override;
  qed::Status extend_to(uint64_t size, uint64_t preferred = 0) override;
  qed::Status punch_hole(uint64_t offset, uint64_t count) override;
  qed::Status zero_range(uint64_t offset, uint64_t count) override;

  // What the first connection learnt (tests and descriptions use them).
  unsigned max_connections() const { return limit_; }
  uint32_t max_request_bytes() const { return max_request_; }
  uint32_t min_block_bytes() const { return min_block_; }
  bool has_block_status() const { return block_status_; }
  // Connections open now (idle or in use).
  unsigned open_connections();

private:
  using Clock = std::chrono::steady_clock;
  struct Lease;
  struct Command;

  NbdFile(std::string uri, const NbdOptions &options) : uri_(std::move(uri)), options_(options) {}

  // A connection, with structured replies (and base:allocation) or without.
  struct Conn {
    Handle h;
    bool structured = false;
  };

  qed::Result<Handle> connect(bool structured, Clock::time_point deadline);
  // With refuse_this_host: once the socket of `h` is connected, fails if it
  // reaches this host; `known` says the peer was checked.
  qed::Status check_peer(nbd_handle *h, bool &known) const;
  qed::Status learn(nbd_handle *h);
  qed::Status check_same_export(nbd_handle *h);
  // A connection for one request (block status if `status`, else reads): an
  // idle one, or a new one when the pool may grow. Fails at once inside the
  // back-off delay.
  qed::Result<Conn> acquire(bool status, Clock::time_point deadline);
  std::optional<size_t> pick_idle(bool status) const;
  bool may_open_locked() const;
  bool take_place_locked();
  void give_back_places_locked();
  // Gives a connection back; a closed or dead one frees its place.
  void release(Conn c);
  // The connection died: close the idle ones too (same server).
  void drop_idle();

  // What a run left of its connection.
  enum class Outcome {
    kKeep,    // still connected, nothing in flight (the server may have said no)
    kLost,    // the connection died: worth one more try on a fresh one
    kBroken,  // timed out with commands in flight: close it, do not retry
  };
  // Issues `commands` on `h` and waits for all of them, until `deadline`.
  // Closes (resets) `h` unless the outcome is kKeep, so that nothing in
  // flight outlives the call: the buffers are the caller's.
  qed::Status run(Handle &h, std::vector<Command> &commands, Clock::time_point deadline,
                  Outcome &outcome);
  // Runs the commands of one request, again on a fresh connection if the
  // connection was lost; on success every command is done.
  qed::Status request(const char *what, uint64_t offset, std::vector<Command> &commands);
  qed::Status read_aligned(void *buf, size_t count, uint64_t offset);
  qed::Status error(const std::string &what, int err = EIO) const;
  qed::Status read_only_error() const;

  const std::string uri_;
  const NbdOptions options_;
  // Set by open() from the first connection, constant afterwards.
  uint64_t size_ = 0;
  unsigned limit_ = 1;          // most connections in the pool
  std::shared_ptr<ConnectionBudget> budget_;  // the chain's, or none
  uint32_t max_request_ = 0;    // bytes per read command
  uint32_t min_block_ = 1;      // offsets and lengths of commands are multiples of this
  bool block_status_ = false;   // base:allocation negotiated

  StatusCache status_;  // thread-safe by itself

  std::mutex mu_;
  std::condition_variable changed_;  // a connection came back or a place freed up
  // Guarded by mu_:
  std::vector<Conn> idle_;           // connected, not in use
  unsigned busy_ = 0;                // connections in use, or being made
  unsigned tokens_ = 0;              // places held: max(1, idle + busy) (open: 1)
  Clock::time_point retry_at_{};     // no connection attempt before this
  int backoff_ms_ = 0;               // delay after the next failed attempt
  std::string last_failure_;         // why the last attempt failed
};

}  // namespace qed_nbd
