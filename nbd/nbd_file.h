// A backing file on an NBD server: the engine's File interface over libnbd,
// read-only. The engine reads through it as through a local file; the
// backing format (raw, or a QED image served raw) applies on top.
//
// Parallel: requests are spread over a small pool of connections. A request
// takes an idle connection if there is one, else opens one more while the
// pool may grow, else puts its commands in flight on the least used
// connection beside those of other requests (nbd_conn.h: the thread of one
// waiting request reads the replies for all of them; nobody waits for a free
// connection, and no thread is woken only to hand a reply on). Reads prefer
// connections without structured replies (fewer system calls per reply);
// block status, which needs them, goes over connections with them (a lone
// connection does both). The pool grows up to NbdOptions::connections when
// the server advertises multi-conn (every connection then sees the same
// data), else it is one connection; with a ConnectionBudget (one per
// chain), only while the budget has places left, and places go back when
// connections close. A request longer than the server's maximum block size
// goes out as several commands, all in flight at once on its connection.
//
// Trust: with refuse_this_host (a backing file named by a remote image),
// libnbd may use TCP only, and every connection is refused once connected
// if its peer is this host (this_host.h), before anything is read.
//
// Faults: a request that finds its connection dead (the server went away, or
// answers ESHUTDOWN because it is stopping and waits for its clients to
// leave) drops every idle connection (they lead to the same server) and
// tries once more on a fresh one; the dead connection closes when the last
// request using it is done. A server that is stopping while nothing is
// read keeps waiting for our idle connections until the next request. When
// connecting fails, requests fail at once with EIO until the back-off delay
// has passed; the delay doubles after each failed attempt (from
// backoff_min_ms to backoff_max_ms) and is reset by a success, so a
// restarted server is picked up by the first request after the delay.
// Nothing blocks for ever: a connection attempt gives up after
// connect_timeout_ms, a request (including its wait for a connection) after
// request_timeout_ms; a request whose time is up with commands in flight
// shuts its connection down, which fails the other requests' commands on it
// too (they try once more on a fresh connection). Every failure is EIO with
// a message that starts with the URI. A reconnection that finds an export
// of another size is refused (the image was opened over the old one).
//
// Thread safety: every method may be called from many threads at once. mu_
// guards the pool, the places taken from the budget and the back-off state
// (the members under it below); each connection guards its own state
// (nbd_conn.h; lock order: mu_ first); the status cache and the budget are
// thread-safe by themselves; no lock of ours is held while connecting or
// while waiting for the server. A request's buffers are written only until
// its Conn::run returns, whatever happened to the connection. What open()
// learnt (size, limits, flags) is constant afterwards.
//
// No nbdkit include: the plugin and the QED filter both link this.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "nbd/connection_budget.h"
#include "lib/file.h"
#include "nbd/nbd_conn.h"
#include "lib/status.h"
#include "nbd/status_cache.h"

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
  qed::Result<Region> probe_run(uint64_t offset, uint64_t limit) override;

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
  NbdFile(std::string uri, const NbdOptions &options) : uri_(std::move(uri)), options_(options) {}

  // A connection of the pool and the requests using it.
  struct Slot {
    std::shared_ptr<Conn> conn;
    unsigned users = 0;     // requests with commands on it, or about to
    bool retiring = false;  // dead or stopping: closes when its last user is done
  };

  qed::Result<Handle> connect(bool structured, Clock::time_point deadline);
  // With refuse_this_host: once the socket of `h` is connected, fails if it
  // reaches this host; `known` says the peer was checked.
  qed::Status check_peer(nbd_handle *h, bool &known) const;
  qed::Status learn(nbd_handle *h);
  qed::Status check_same_export(nbd_handle *h);
  // A connection for one request (block status if `status`, else reads): an
  // idle one, a new one when the pool may grow, else a busy one to share.
  // Fails at once inside the back-off delay.
  qed::Result<std::shared_ptr<Conn>> acquire(bool status, Clock::time_point deadline);
  std::optional<size_t> pick_idle_locked(bool status) const REQUIRES(mu_);
  std::optional<size_t> pick_shared_locked(bool status) const REQUIRES(mu_);
  unsigned open_locked() const REQUIRES(mu_) { return unsigned(conns_.size()) + opening_; }
  bool may_open_locked() const REQUIRES(mu_);
  bool take_place_locked() REQUIRES(mu_);
  void give_back_places_locked() REQUIRES(mu_);
  // A request is done with `c`; unless `keep`, the connection retires.
  void release(const std::shared_ptr<Conn> &c, bool keep);
  // The connection died: close the idle ones too (same server).
  void drop_idle();

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

  qed::Mutex mu_;
  // A connection came back, a place freed up, or connecting failed: every
  // waiter looks again (several may go on at once, or all fail at once).
  qed::CondVar changed_;
  std::vector<Slot> conns_ GUARDED_BY(mu_);       // open connections, idle or in use
  unsigned opening_ GUARDED_BY(mu_) = 0;          // connections being made
  unsigned tokens_ GUARDED_BY(mu_) = 0;           // places held: max(1, open) (open(): 1)
  Clock::time_point retry_at_ GUARDED_BY(mu_){};  // no connection attempt before this
  int backoff_ms_ GUARDED_BY(mu_) = 0;            // delay after the next failed attempt
  std::string last_failure_ GUARDED_BY(mu_);      // why the last attempt failed
};

}  // namespace qed_nbd
