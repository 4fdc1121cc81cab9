#include "nbd/nbd_file.h"

#include <libnbd.h>

#include "lib/align.h"
#include "nbd/this_host.h"

#include <algorithm>
#include <cstring>
#include <optional>
#include <utility>

namespace qed_nbd {

using qed::Result;
using qed::Status;

namespace {

// NBD commands carry 32-bit lengths; without a limit from the server, 32 MiB
// is what every server accepts (the NBD protocol's advice).
constexpr uint32_t kDefaultMaxRequest = 32u << 20;

// A failure without the URI in front (the caller adds it, with what was
// being done).
Status failed(const std::string &why) { return Status::io_error(why, EIO); }

}  // namespace

NbdFile::~NbdFile() {
  // The connections close with the members; their places go back to the
  // chain's budget.
  if (budget_)
    for (; tokens_ > 0; tokens_--)
      budget_->give_back();
}

Status NbdFile::error(const std::string &what, int err) const {
  return Status::io_error(std::string(uri_).append(": ").append(what), err);
}

Status NbdFile::read_only_error() const {
  return Status::read_only(uri_ + ": a backing file on an NBD server is never written");
}

Status NbdFile::pwrite(const void *, size_t, uint64_t) { return read_only_error(); }
Status NbdFile::sync() { return read_only_error(); }
Status NbdFile::truncate(uint64_t) { return read_only_error(); }
Status NbdFile::extend_to(uint64_t, uint64_t) { return read_only_error(); }
Status NbdFile::punch_hole(uint64_t, uint64_t) { return read_only_error(); }
Status NbdFile::zero_range(uint64_t, uint64_t) { return read_only_error(); }

// ---------------------------------------------------------------- connecting

Result<Handle> NbdFile::connect(bool structured, Clock::time_point deadline) {
  Handle h(nbd_create());
  if (!h)
    return failed("cannot create a libnbd handle: " + libnbd_error());
  nbd_set_handle_name(h.get(), "qed-backing");
  // Our reads either fill the whole buffer or fail (and the engine then drops
  // it), so libnbd need not zero it first.
  nbd_set_pread_initialize(h.get(), false);
  // Only block status needs structured replies; reads without them take
  // fewer system calls per reply (one header, then the data).
  if (!structured)
    nbd_set_request_structured_replies(h.get(), false);
  else if (nbd_add_meta_context(h.get(), LIBNBD_CONTEXT_BASE_ALLOCATION) == -1)
    return failed(libnbd_error());
  // Below a remote image, libnbd itself refuses Unix sockets and vsock too.
  if (options_.refuse_this_host &&
      nbd_set_uri_allow_transports(h.get(), LIBNBD_ALLOW_TRANSPORT_TCP) == -1)
    return failed(libnbd_error());
  // QEMU writes nbd+tcp:// for what libnbd calls nbd://.
  std::string uri = uri_;
  if (uri.rfind("nbd+tcp://", 0) == 0)
    uri.replace(0, 7, "nbd");
  if (nbd_aio_connect_uri(h.get(), uri.c_str()) == -1)
    return failed("cannot connect: " + libnbd_error());
  bool peer_known = !options_.refuse_this_host;
  while (nbd_aio_is_connecting(h.get())) {
    // As soon as the socket is connected (before the server's greeting is
    // read, usually), where it leads is known.
    QED_RETURN_IF_ERROR(check_peer(h.get(), peer_known));
    const int left = ms_until(deadline);
    if (left == 0)
      return failed("cannot connect: no answer within " +
                   std::to_string(options_.connect_timeout_ms) + " ms");
    if (nbd_poll(h.get(), left) == -1)
      return failed("cannot connect: " + libnbd_error());
  }
  if (!nbd_aio_is_ready(h.get()))
    return failed("cannot connect: " + libnbd_error());
  QED_RETURN_IF_ERROR(check_peer(h.get(), peer_known));
  if (!peer_known)
    return failed("cannot connect: cannot tell which host the connection reached");
  return h;
}

Status NbdFile::check_peer(nbd_handle *h, bool &known) const {
  if (known)
    return Status::ok();
  const int fd = nbd_aio_get_fd(h);
  if (fd < 0)
    return Status::ok();  // no socket yet
  const Peer peer = socket_peer(fd);
  if (peer.kind == Peer::Kind::kNotConnected)
    return Status::ok();
  known = true;
  if (peer.kind == Peer::Kind::kRemote)
    return Status::ok();
  return Status::not_supported("refused: the server is on this host (" + peer.what +
                               "); a backing file named by an image on an NBD server must "
                               "not reach this host" + options_.allow_this_host_hint);
}

Status NbdFile::learn(nbd_handle *h) {
  const int64_t size = nbd_get_size(h);
  if (size < 0)
    return failed(libnbd_error());
  size_ = uint64_t(size);
  const int multi = nbd_can_multi_conn(h);
  limit_ = multi == 1 ? std::max(1u, options_.connections) : 1;
  if (budget_)
    limit_ = std::min(limit_, budget_->total());
  const int64_t max = nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM);
  const int64_t min = nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM);
  min_block_ = min > 0 ? uint32_t(min) : 1;
  max_request_ = max > 0 ? uint32_t(std::min<int64_t>(max, kDefaultMaxRequest)) : kDefaultMaxRequest;
  max_request_ = std::max(uint32_t(qed::round_down(max_request_, min_block_)), min_block_);
  block_status_ = nbd_can_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION) == 1;
  return Status::ok();
}

// A reconnection must reach the export the image was opened on; a server
// restarted with another disk behind the same URI is refused.
Status NbdFile::check_same_export(nbd_handle *h) {
  const int64_t size = nbd_get_size(h);
  if (size < 0)
    return failed(libnbd_error());
  if (uint64_t(size) != size_)
    return failed("the export changed size from " + std::to_string(size_) + " to " +
                 std::to_string(size) + " bytes since it was opened");
  return Status::ok();
}

Result<std::unique_ptr<NbdFile>> NbdFile::open(const std::string &uri,
                                               const NbdOptions &options,
                                               std::shared_ptr<ConnectionBudget> budget) {
  std::unique_ptr<NbdFile> f(new NbdFile(uri, options));
  // Its one connection for as long as it is open, from the chain's budget.
  if (budget && !budget->try_take())
    return f->error("refused: the backing chain already holds " +
                        std::to_string(budget->total()) +
                        " NBD backing files, which keep all the connections it may hold (one "
                        "each" + options.connections_hint + ")",
                    ENOTSUP);
  f->budget_ = std::move(budget);
  {
    qed::MutexLock lock(f->mu_);  // nobody else has it yet: for the analysis
    f->tokens_ = 1;
  }
  auto h = f->connect(true, Clock::now() + std::chrono::milliseconds(options.connect_timeout_ms));
  Status s = h ? f->learn(h->get()) : h.status();
  if (!s.is_ok())
    return f->error(s.message());
  {
    qed::MutexLock lock(f->mu_);
    f->backoff_ms_ = options.backoff_min_ms;
    f->conns_.push_back(
        Slot{std::make_shared<Conn>(std::move(*h), true, options.request_timeout_ms)});
  }
  return f;
}

unsigned NbdFile::open_connections() {
  qed::MutexLock lock(mu_);
  return open_locked();
}

// ------------------------------------------------------------------ the pool

// Requires mu_ held. Whether one more connection may be opened: within the
// places this file holds, or with one more from the chain's budget.
bool NbdFile::may_open_locked() const {
  return open_locked() < tokens_ || (tokens_ < limit_ && (!budget_ || budget_->left() > 0));
}

// Requires mu_ held. Takes the place for one more connection (may_open_locked
// said so; another file may have taken the budget's last place since).
bool NbdFile::take_place_locked() {
  if (open_locked() < tokens_)
    return true;
  if (tokens_ >= limit_ || (budget_ && !budget_->try_take()))
    return false;
  tokens_++;
  return true;
}

// Requires mu_ held. A connection closed: places beyond the one the file
// keeps go back to the chain's budget, for other files to use.
void NbdFile::give_back_places_locked() {
  for (; tokens_ > std::max(1u, open_locked()); tokens_--)
    if (budget_)
      budget_->give_back();
}

// Requires mu_ held. The idle connection to use for a request, if any: for
// block status, one with structured replies; for a read, a plain one, else a
// structured one. A pool grows only when every connection is busy: opening a
// plain one for a read while a structured one idles would take a place from
// the chain's budget that a file opened later needs (a chain is opened level
// by level, each reading its header before the next opens).
std::optional<size_t> NbdFile::pick_idle_locked(bool status) const {
  std::optional<size_t> fallback;
  for (size_t i = conns_.size(); i-- > 0;) {
    const Slot &s = conns_[i];
    if (s.users > 0 || s.retiring)
      continue;
    if (s.conn->structured() == status || !block_status_)
      return i;
    if (!status)
      fallback = i;
  }
  return fallback;
}

// Requires mu_ held. A busy connection to share when the pool may not grow:
// the least used one that can do the request (block status needs structured
// replies).
std::optional<size_t> NbdFile::pick_shared_locked(bool status) const {
  std::optional<size_t> best;
  for (size_t i = 0; i < conns_.size(); i++) {
    const Slot &s = conns_[i];
    if (s.retiring || (status && block_status_ && !s.conn->structured()))
      continue;
    if (!best || s.users < conns_[*best].users)
      best = i;
  }
  return best;
}

Result<std::shared_ptr<Conn>> NbdFile::acquire(bool status, Clock::time_point deadline) {
  qed::UniqueLock lock(mu_);
  for (;;) {
    auto i = pick_idle_locked(status);
    if (!i && take_place_locked())
      break;  // open one more
    if (!i)
      i = pick_shared_locked(status);
    if (i) {
      conns_[*i].users++;
      return conns_[*i].conn;
    }
    // Block status, and the pool is full of plain connections: an idle one
    // makes room for a structured one (its place is taken over).
    auto idle = std::find_if(conns_.begin(), conns_.end(),
                             [](const Slot &s) { return s.users == 0; });
    if (idle != conns_.end()) {
      std::shared_ptr<Conn> spare = std::move(idle->conn);
      conns_.erase(idle);
      lock.unlock();
      spare.reset();
      lock.lock();
      continue;
    }
    if (!changed_.wait_until(mu_, deadline) &&
        !pick_idle_locked(status) && !pick_shared_locked(status) && !may_open_locked())
      return failed("no connection became free within " +
                    std::to_string(options_.request_timeout_ms) + " ms");
  }
  if (Clock::now() < retry_at_) {
    give_back_places_locked();
    changed_.notify_all();  // the others waiting fail at once too
    return failed("server unreachable (" + last_failure_ + "); next attempt in " +
                  std::to_string(ms_until(retry_at_)) + " ms");
  }
  opening_++;
  lock.unlock();
  const bool structured = (status || limit_ == 1) && block_status_;  // a lone one does all
  const auto connect_by = std::min(
      deadline, Clock::now() + std::chrono::milliseconds(options_.connect_timeout_ms));
  auto h = connect(structured, connect_by);
  Status s = h ? check_same_export(h->get()) : h.status();
  std::shared_ptr<Conn> c;
  if (s.is_ok())
    c = std::make_shared<Conn>(std::move(*h), structured, options_.request_timeout_ms);
  lock.lock();
  opening_--;
  if (s.is_ok()) {
    backoff_ms_ = options_.backoff_min_ms;
    conns_.push_back(Slot{c, 1, false});
    return c;
  }
  give_back_places_locked();
  last_failure_ = s.message();
  retry_at_ = Clock::now() + std::chrono::milliseconds(backoff_ms_);
  backoff_ms_ = std::min(backoff_ms_ * 2, options_.backoff_max_ms);
  changed_.notify_all();
  return s;
}

void NbdFile::release(const std::shared_ptr<Conn> &c, bool keep) {
  std::shared_ptr<Conn> closing;
  {
    qed::MutexLock lock(mu_);
    auto it = std::find_if(conns_.begin(), conns_.end(),
                           [&](const Slot &s) { return s.conn == c; });
    if (it != conns_.end()) {  // else dropped or made room meanwhile
      it->users--;
      if (!keep)
        it->retiring = true;
      if (it->retiring && it->users == 0) {
        closing = std::move(it->conn);
        conns_.erase(it);
        give_back_places_locked();
      }
    }
    changed_.notify_all();
  }
  // Closed here, outside the lock (nbd_close may wait for the socket), when
  // the caller's reference goes too.
}

void NbdFile::drop_idle() {
  std::vector<std::shared_ptr<Conn>> dead;
  {
    qed::MutexLock lock(mu_);
    for (auto it = conns_.begin(); it != conns_.end();) {
      if (it->users == 0) {
        dead.push_back(std::move(it->conn));
        it = conns_.erase(it);
      } else {
        ++it;
      }
    }
    give_back_places_locked();
    changed_.notify_all();
  }
  // The server went away: the one that comes back may serve other content.
  status_.clear();
  // Closed here, outside the lock: nbd_close may wait for the socket.
}

// -------------------------------------------------------------- one request

Status NbdFile::request(const char *what, uint64_t offset, std::vector<Command> &commands) {
  const auto deadline = Clock::now() + std::chrono::milliseconds(options_.request_timeout_ms);
  Status last;
  for (int attempt = 0; attempt < 2; attempt++) {
    const bool status = !commands.empty() && !commands[0].read;
    auto conn = acquire(status, deadline);
    if (!conn)
      return error(std::string(what) + " at offset " + std::to_string(offset) + ": " +
                   conn.status().message());
    for (Command &c : commands)
      if (c.reply)
        c.reply->reset();
    Outcome outcome;
    Status s = (*conn)->run(commands, deadline, outcome);
    release(*conn, outcome == Outcome::kKeep && (*conn)->usable());
    if (s.is_ok())
      return s;
    last = error(std::string(what) + " at offset " + std::to_string(offset) + ": " + s.message());
    if (outcome != Outcome::kLost)
      break;
    drop_idle();
  }
  return last;
}

// ---------------------------------------------------------------- the reads

Status NbdFile::read_aligned(void *buf, size_t count, uint64_t offset) {
  std::vector<Command> commands;
  auto *p = static_cast<uint8_t *>(buf);
  for (size_t done = 0; done < count;) {
    Command c;
    c.buf = p + done;
    c.count = uint32_t(std::min<uint64_t>(count - done, max_request_));
    c.offset = offset + done;
    done += c.count;
    commands.push_back(std::move(c));
  }
  return request("read", offset, commands);
}

Status NbdFile::pread(void *buf, size_t count, uint64_t offset) {
  auto *out = static_cast<uint8_t *>(buf);
  const size_t inside = offset < size_ ? size_t(std::min<uint64_t>(count, size_ - offset)) : 0;
  std::memset(out + inside, 0, count - inside);
  if (inside == 0)
    return Status::ok();
  const uint64_t first = qed::round_down(offset, min_block_);
  const uint64_t end = qed::round_up(offset + inside, min_block_);
  if (end > size_)
    return error("cannot read the last " + std::to_string(size_ % min_block_) +
                 " bytes of the export: its size is not a multiple of the server's minimum "
                 "block size (" + std::to_string(min_block_) + " bytes)");
  if (first == offset && end == offset + inside)
    return read_aligned(out, inside, offset);
  // The server wants whole blocks: read them, keep the part asked for.
  std::vector<uint8_t> bounce(size_t(end - first));
  QED_RETURN_IF_ERROR(read_aligned(bounce.data(), bounce.size(), first));
  std::memcpy(out, bounce.data() + (offset - first), inside);
  return Status::ok();
}

Result<qed::File::Region> NbdFile::probe_run(uint64_t offset, uint64_t limit) {
  if (offset >= size_)
    return Region{true, limit};
  if (!block_status_ || limit == 0)
    return Region{false, limit};
  if (auto kept = status_.find(offset, limit))
    return *kept;
  // Ask about whole blocks from the one holding `offset`, as far as the
  // window goes whatever `limit` is: callers walk on, and the reply answers
  // their next probes.
  const uint64_t first = qed::round_down(offset, min_block_);
  uint64_t count = std::max(status_.window(), offset - first + 1);
  count = std::min(qed::round_up(count, min_block_), qed::round_down(size_ - first, min_block_));
  count = std::min(count, qed::round_down(UINT32_MAX, min_block_));
  if (count == 0)  // the partial block at the end, which the server cannot answer for
    return Region{false, limit};
  StatusReply reply(first, count);
  std::vector<Command> commands(1);
  commands[0].read = false;
  commands[0].count = uint32_t(count);
  commands[0].offset = first;
  commands[0].reply = &reply;
  QED_RETURN_IF_ERROR(request("block status", offset, commands));
  status_.insert(std::move(reply));
  if (auto answered = status_.find(offset, limit))
    return *answered;
  // No answer for `offset`: call it data, which is always safe.
  return Region{false, limit};
}

}  // namespace qed_nbd
