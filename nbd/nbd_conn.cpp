#include "nbd/nbd_conn.h"

#include <libnbd.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace qed_nbd {

using qed::Status;

void HandleCloser::operator()(nbd_handle *h) const { nbd_close(h); }

std::string libnbd_error() {
  const char *e = nbd_get_error();
  return e && *e ? e : "unknown libnbd error";
}

int ms_until(Clock::time_point t) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(t - Clock::now());
  return int(std::clamp<int64_t>(left.count(), 0, INT32_MAX));
}

// The thread of one request, waiting for its commands. Lives on that
// thread's stack for the whole of Conn::run; its members are guarded by the
// connection's mu_.
struct Waiter {
  qed::CondVar wake;  // its commands are done, or it may lead now
  unsigned pending = 0;          // commands issued and not done
  bool timed_out = false;        // its deadline passed with commands in flight
  // In the connection's list of followers while it waits as one (linked
  // here, so that waiting allocates nothing and cannot throw with commands
  // in flight).
  Waiter *prev = nullptr, *next = nullptr;
};

void Conn::follow(Waiter &w) {
  w.prev = last_;
  w.next = nullptr;
  (last_ ? last_->next : first_) = &w;
  last_ = &w;
}

void Conn::unfollow(Waiter &w) {
  (w.prev ? w.prev->next : first_) = w.next;
  (w.next ? w.next->prev : last_) = w.prev;
  w.prev = w.next = nullptr;
}

Waiter *Conn::first_pending() const {
  for (Waiter *o = first_; o; o = o->next)
    if (o->pending > 0)
      return o;
  return nullptr;
}

namespace {

// Completion of one command, called by libnbd in whichever thread runs its
// state machine (always with the connection's mu_ held, see nbd_conn.h).
int command_done(void *user_data, int *error) {
  auto *c = static_cast<Command *>(user_data);
  c->done = true;
  c->err = *error;
  if (--c->waiter->pending == 0)
    c->waiter->wake.notify_one();
  return 1;  // retired at once: nobody asks for it by its cookie
}

// Block status replies: the command's StatusReply is the callback's data.
int collect_extents(void *user_data, const char *metacontext, uint64_t, uint32_t *entries,
                    size_t nr_entries, int *) {
  if (std::strcmp(metacontext, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0)
    return 0;
  auto *reply = static_cast<StatusReply *>(user_data);
  for (size_t i = 0; i + 1 < nr_entries; i += 2)
    reply->add(entries[i], entries[i + 1] & LIBNBD_STATE_ZERO);
  return 0;
}

bool alive(nbd_handle *h) { return nbd_aio_is_ready(h) == 1 || nbd_aio_is_processing(h) == 1; }

}  // namespace

Conn::Conn(Handle h, bool structured, int request_timeout_ms)
    : h_(std::move(h)),
      structured_(structured),
      request_timeout_ms_(request_timeout_ms),
      wake_fd_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {}

Conn::~Conn() {
  if (wake_fd_ >= 0)
    ::close(wake_fd_);
}

bool Conn::usable() {
  qed::MutexLock lock(mu_);
  return !broken_ && !stopping_ && alive(h_.get());
}

void Conn::kick() {
  if (wake_fd_ < 0)
    return;  // the leader polls in short slices instead
  const uint64_t one = 1;
  // A full counter (never, in practice) already wakes the leader.
  [[maybe_unused]] const ssize_t n = ::write(wake_fd_, &one, sizeof one);
}

void Conn::drain_kicks() {
  uint64_t count;
  [[maybe_unused]] const ssize_t n = ::read(wake_fd_, &count, sizeof count);
}

void Conn::lead_once(Waiter &w, Clock::time_point deadline) {
  nbd_handle *h = h_.get();
  if (broken_ && !shut_) {
    // libnbd reads EOF next and fails every command in flight.
    shut_ = true;
    const int fd = nbd_aio_get_fd(h);
    if (fd >= 0)
      ::shutdown(fd, SHUT_RDWR);
  }
  const int fd = nbd_aio_get_fd(h);
  if (fd < 0 || !alive(h)) {
    // Dead: libnbd failed every command in flight and closed the socket, so
    // nothing writes into a buffer any more. (Not reached while libnbd keeps
    // its word: every waiter's pending count is then 0.)
    w.pending = 0;
    return;
  }
  const unsigned dir = nbd_aio_get_direction(h);
  short events = 0;
  if (dir & LIBNBD_AIO_DIRECTION_READ)
    events |= POLLIN;
  if (dir & LIBNBD_AIO_DIRECTION_WRITE)
    events |= POLLOUT;
  pollfd fds[2] = {{fd, events, 0}, {wake_fd_, POLLIN, 0}};
  int timeout = broken_ ? 1000 : ms_until(deadline);  // a shut-down socket is readable at once
  if (wake_fd_ < 0)
    timeout = std::min(timeout, 10);
  mu_.unlock();
  const int r = ::poll(fds, 2, timeout);
  const int poll_errno = errno;
  mu_.lock();
  if (r == 0 || (r < 0 && poll_errno != EINTR)) {
    if (r < 0 || Clock::now() >= deadline) {
      if (w.pending > 0 && !broken_)
        w.timed_out = true;
      broken_ = true;
    }
    return;
  }
  if (r < 0)
    return;
  if (fds[1].revents & POLLIN)
    drain_kicks();
  // A follower's call may have run the state machine meanwhile (the handle
  // may even have died): what the socket said is acted on only if libnbd
  // still waits for it; otherwise the next round polls again.
  if (nbd_aio_get_fd(h) != fd)
    return;
  const unsigned now_dir = nbd_aio_get_direction(h);
  if ((fds[0].revents & (POLLIN | POLLHUP | POLLERR)) && (now_dir & LIBNBD_AIO_DIRECTION_READ))
    nbd_aio_notify_read(h);  // failures show in the commands and the state
  else if ((fds[0].revents & POLLOUT) && (now_dir & LIBNBD_AIO_DIRECTION_WRITE))
    nbd_aio_notify_write(h);
  else if (fds[0].revents & POLLNVAL)
    broken_ = true;
}

bool Conn::replies_waiting() {
  nbd_handle *h = h_.get();
  if (!first_pending())
    return false;
  const int fd = nbd_aio_get_fd(h);
  if (fd < 0 || !alive(h) || !(nbd_aio_get_direction(h) & LIBNBD_AIO_DIRECTION_READ))
    return false;
  pollfd p{fd, POLLIN, 0};
  mu_.unlock();
  const int r = ::poll(&p, 1, 0);
  mu_.lock();
  if (r != 1 || nbd_aio_get_fd(h) != fd || !(p.revents & (POLLIN | POLLHUP | POLLERR)))
    return false;
  return nbd_aio_notify_read(h) != -1;
}

void Conn::wait(Waiter &w, Clock::time_point deadline) {
  while (w.pending > 0) {
    if (!leading_) {
      leading_ = true;
      while (w.pending > 0)
        lead_once(w, deadline);
      // Replies for others that are already here are read before the role
      // passes on: their threads are woken once, by us, rather than once to
      // lead and again by their reply.
      while (!broken_ && replies_waiting())
        ;
      leading_ = false;
      // The oldest waiter still waiting leads next: its reply is likely the
      // next one on the socket.
      if (Waiter *o = first_pending())
        o->wake.notify_one();
      return;
    }
    follow(w);
    if (w.timed_out || broken_) {
      // The leader is shutting the socket down: libnbd fails our commands
      // as soon as it reads EOF.
      w.wake.wait_for(mu_, std::chrono::milliseconds(100));
    } else if (!w.wake.wait_until(mu_, deadline) && w.pending > 0 &&
               leading_) {
      w.timed_out = true;
      broken_ = true;
      kick();
    }
    unfollow(w);
  }
}

Status Conn::run(std::vector<Command> &commands, Clock::time_point deadline, Outcome &outcome) {
  nbd_handle *h = h_.get();
  Waiter w;
  std::string failure;  // why issuing failed (issue_failed), if said
  bool issue_failed = false;
  qed::MutexLock lock(mu_);
  if (broken_ || stopping_ || !alive(h)) {
    outcome = Outcome::kLost;
    return Status::io_error("connection lost", EIO);
  }
  size_t issued = 0;
  for (; issued < commands.size(); issued++) {
    Command &c = commands[issued];
    c.waiter = &w;
    c.done = false;
    c.err = 0;
    nbd_completion_callback done{};
    done.callback = command_done;
    done.user_data = &c;
    // Counted first: libnbd may fail the command (and call command_done)
    // before it returns, if the connection dies while sending it.
    w.pending++;
    int64_t cookie;
    if (c.read) {
      cookie = nbd_aio_pread(h, c.buf, c.count, c.offset, done, 0);
    } else {
      nbd_extent_callback extents{};
      extents.callback = collect_extents;
      extents.user_data = c.reply;
      cookie = nbd_aio_block_status(h, c.count, c.offset, extents, done, 0);
    }
    if (cookie == -1) {  // not queued: its callback is never called
      w.pending--;
      // Earlier commands may be in flight: nothing here may throw.
      issue_failed = true;
      try {
        failure = libnbd_error();
      } catch (...) {
        failure.clear();  // said after the wait
      }
      break;
    }
  }
  // The leader polls for what libnbd wanted before these commands: if one
  // could not be written at once, or the connection died, it must look again.
  if (leading_ && (!alive(h) || (nbd_aio_get_direction(h) & LIBNBD_AIO_DIRECTION_WRITE)))
    kick();
  wait(w, deadline);
  // Another request's deadline shut the connection down, and ours has passed
  // too: ours timed out as well (no retry).
  if (broken_ && !w.timed_out && issued > 0 && Clock::now() >= deadline)
    w.timed_out = true;

  int err = 0;
  for (size_t i = 0; i < issued; i++) {
    const Command &c = commands[i];
    const int e = c.done ? c.err : ENOTCONN;
    if (e == ESHUTDOWN)
      stopping_ = true;  // the server is stopping: no new commands here
    if (e != 0 && err == 0)
      err = e;
  }
  if (w.timed_out) {
    outcome = Outcome::kBroken;
    return Status::io_error("no reply within " + std::to_string(request_timeout_ms_) + " ms",
                            EIO);
  }
  if (issue_failed && failure.empty())
    failure = "cannot issue the command";
  if (broken_ || stopping_ || !alive(h)) {
    outcome = Outcome::kLost;
    if (issue_failed)
      return Status::io_error(failure, EIO);
    return Status::io_error(
        std::string("connection lost") + (err ? std::string(": ") + std::strerror(err) : ""), EIO);
  }
  outcome = Outcome::kKeep;
  if (issue_failed)
    return Status::io_error(failure, EIO);
  if (err != 0)
    return Status::io_error(std::string("the server failed the command: ") + std::strerror(err),
                            EIO);
  return Status::ok();
}

}  // namespace qed_nbd
