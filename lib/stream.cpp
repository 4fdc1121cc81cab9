// The stream task (see stream.h).
#include "lib/stream.h"

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <system_error>
#include <thread>
#include <cstdio>
#include <iterator>
#include <vector>

#include "lib/align.h"
#include "lib/page_buffer.h"

namespace qed {

namespace {

using Clock = std::chrono::steady_clock;

// Bytes looked at per step: enough that extents queries and copies are
// large, small enough that stop(), the yield to clients and the rate limit
// act often.
constexpr uint64_t kStepBytes = 8 << 20;
// Extents asked of the backing file per step.
constexpr size_t kStepExtents = 256;
// The longest pause after one step while clients are busy.
constexpr auto kMaxYield = std::chrono::milliseconds(50);
// Workers copying at once (without a rate). Measured on 2 CPUs streaming
// 1 GiB from a local NBD server: 4 beat 2 and 8 (eight writers queue on the
// file's inode lock), and the writeback started after each step keeps the
// final sync short.
constexpr unsigned kWorkers = 4;
// Each worker's copy buffer: pieces of this size are read from the backing
// file and written to the image.
constexpr uint64_t kCopyBuffer = 2 << 20;

}  // namespace

Stream::Stream(Image &image, StreamOptions options) : image_(image), options_(std::move(options)) {}

void Stream::stop() {
  MutexLock lock(mu_);
  stop_ = true;
  cv_.notify_all();
}

bool Stream::stopping() {
  MutexLock lock(mu_);
  return stop_;
}

bool Stream::wait_until(Clock::time_point until) {
  MutexLock lock(mu_);
  while (!stop_ && cv_.wait_until(mu_, until)) {
  }
  return !stop_;
}

void Stream::fail(const Status &why) {
  MutexLock lock(mu_);
  if (failure_.is_ok())
    failure_ = why;
  stop_ = true;
  cv_.notify_all();
}

void Stream::report(uint64_t done, uint64_t total, bool final) {
  UniqueLock lock(report_mu_, std::defer_lock);
  if (final)
    lock.lock();
  else if (!lock.try_lock())
    return;  // another worker is reporting
  const auto now = Clock::now();
  if (!final && now - last_report_ < options_.progress_every)
    return;
  const double interval = std::chrono::duration<double>(now - last_report_).count();
  const uint64_t copied = copied_.load();
  if (options_.on_progress) {
    StreamProgress p;
    p.done = done;
    p.total = total;
    p.copied = copied;
    p.seconds = std::chrono::duration<double>(now - started_).count();
    p.rate = interval > 0 ? double(copied - copied_at_last_report_) / interval : 0;
    if (final)
      p.rate = p.seconds > 0 ? double(copied) / p.seconds : 0;
    options_.on_progress(p);
  }
  last_report_ = now;
  copied_at_last_report_ = copied;
}

Status Stream::flush_if_due(bool now) {
  UniqueLock lock(report_mu_, std::defer_lock);
  if (now)
    lock.lock();
  else if (!lock.try_lock())
    return Status::ok();  // another worker is flushing
  const auto t = Clock::now();
  if (!now && t - last_flush_ < options_.flush_every)
    return Status::ok();
  last_flush_ = t;
  return image_.flush();
}

Result<uint64_t> Stream::step(uint64_t pos, uint64_t len, bool &base_failed, PageBuffer &scratch) {
  BlockSource *below = image_.backing();
  if (!below)
    return len;
  const uint64_t cs = image_.geometry().cluster_size();
  auto extents = below->extents(pos, len, kStepExtents);
  if (!extents) {
    base_failed = true;
    return extents.status();
  }
  // Data extents, widened to whole clusters: a cluster with any data is
  // copied whole (copy_up skips what is already in the image).
  uint64_t copied_to = pos;  // clusters before this were copied in this step
  uint64_t covered = pos;
  for (const Extent &e : *extents) {
    covered = std::max(covered, e.offset + e.length);
    if (e.zero)
      continue;
    const uint64_t from = std::max(copied_to, image_.geometry().cluster_start(e.offset));
    const uint64_t to =
        std::min(pos + len, round_up(e.offset + e.length, cs));
    if (from >= to)
      continue;
    QED_RETURN_IF_ERROR(image_.copy_up(from, to - from, nullptr, &base_failed, &scratch));
    copied_ += to - from;
    copied_to = to;
  }
  covered = std::min(covered, pos + len);
  if (covered >= pos + len)
    return len;
  // The extents ended inside a cluster: what follows in it is not known yet.
  // Go on from that cluster (it is copied with the data extent that led into
  // it, if any); a single cluster that the extents do not cover is copied
  // whole.
  const uint64_t next = std::max(copied_to, image_.geometry().cluster_start(covered));
  if (next > pos)
    return next - pos;
  const uint64_t one = std::min(cs, len);
  QED_RETURN_IF_ERROR(image_.copy_up(pos, one, nullptr, &base_failed, &scratch));
  copied_ += one;
  return one;
}

bool Stream::walk(uint64_t pos, uint64_t end, PageBuffer &scratch) {
  Clock::duration last_step{};
  auto retry_wait = std::chrono::milliseconds(100);
  bool failing = false;  // this worker's last try failed on the backing file
  while (pos < end) {
    if (stopping())
      return false;
    auto run = image_.lookup(pos, end - pos);
    if (!run) {
      fail(run.status());
      return false;
    }
    if (run->kind != Run::kUnallocated) {
      pos += run->length;  // in the image already: resumes skip it
      continue;
    }
    // Clients first: while they keep coming, pause as long as the last step
    // took.
    bool clients = false;
    {
      MutexLock lock(mu_);
      const uint64_t requests = image_.requests_started();
      clients = requests != requests_seen_;
      requests_seen_ = requests;
    }
    if (clients && !wait_until(Clock::now() + std::min<Clock::duration>(last_step, kMaxYield)))
      return false;
    const auto t0 = Clock::now();
    bool base_failed = false;
    auto walked = step(pos, std::min(run->length, step_bytes_), base_failed, scratch);
    last_step = Clock::now() - t0;
    if (!walked) {
      if (!base_failed) {
        fail(walked.status());
        return false;
      }
      // The backing file failed: wait for it, with back-off. Clients that
      // do not need it go on meanwhile. One log line per outage.
      {
        MutexLock lock(mu_);
        if (!paused_ && options_.on_pause)
          options_.on_pause(walked.status());
        paused_ = true;
      }
      failing = true;
      if (!wait_until(Clock::now() + retry_wait))
        return false;
      retry_wait = std::min(retry_wait * 2, options_.max_retry);
      continue;
    }
    if (failing) {
      MutexLock lock(mu_);
      if (paused_ && options_.on_resume)
        options_.on_resume();
      paused_ = false;
    }
    failing = false;
    retry_wait = std::chrono::milliseconds(100);
    pos += *walked;
    image_.start_writeback();
    if (options_.rate) {
      // No more than `rate` bytes per second since the start, on average.
      const auto due = started_ + std::chrono::duration_cast<Clock::duration>(
                                      std::chrono::duration<double>(double(copied_.load()) /
                                                                    double(options_.rate)));
      if (due > Clock::now() && !wait_until(due))
        return false;
    }
    if (Status s = flush_if_due(false); !s.is_ok()) {
      fail(s);
      return false;
    }
    uint64_t done;
    {
      MutexLock lock(mu_);
      done = std::min(next_, total_);
    }
    report(done, total_, false);
  }
  return true;
}

void Stream::work() {
  try {
    // The buffer this worker's copies go through, kept for all its steps.
    PageBuffer scratch(size_t(std::min<uint64_t>(step_bytes_, kCopyBuffer)));
    for (;;) {
      uint64_t pos;
      {
        MutexLock lock(mu_);
        if (stop_ || next_ >= total_)
          return;
        pos = next_;
        next_ += step_bytes_;
      }
      if (!walk(pos, std::min(pos + step_bytes_, total_), scratch))
        return;
    }
  } catch (const std::bad_alloc &) {
    fail(Status::no_space(image_.path() + ": stream: out of memory"));
  }
}

Result<bool> Stream::run() {
  started_ = Clock::now();
  {
    MutexLock lock(report_mu_);
    last_report_ = last_flush_ = started_;
  }
  BlockSource *below = image_.backing();
  if (!below) {
    report(image_.size(), image_.size(), true);
    return true;  // standalone already
  }
  total_ = std::min(below->size(), image_.size());
  // Windows of whole clusters. With a rate, of at most a quarter second's
  // worth: the limit holds over short spans too, not only on average.
  const uint64_t cs = image_.geometry().cluster_size();
  uint64_t step = kStepBytes;
  if (options_.rate)
    step = std::min(step, options_.rate / 4);
  step_bytes_ = std::max(round_down(step, cs), cs);
  {
    MutexLock lock(mu_);
    requests_seen_ = image_.requests_started();
  }
  // With a rate the copies are few and far between: one worker does.
  const unsigned workers = options_.rate ? 1 : kWorkers;
  std::vector<std::thread> threads;
  try {
    for (unsigned i = 1; i < workers; i++)
      threads.emplace_back([this] { work(); });
  } catch (const std::system_error &) {
    // Fewer threads than wished: the ones started and this one do the work.
  }
  work();
  for (auto &t : threads)
    t.join();
  Status failure;
  bool stopped;
  {
    MutexLock lock(mu_);
    failure = failure_;
    stopped = stop_;
  }
  // What was copied is kept, durable, whatever happens next.
  Status flushed = flush_if_due(true);
  QED_RETURN_IF_ERROR(failure);
  QED_RETURN_IF_ERROR(flushed);
  if (stopped)
    return false;
  QED_RETURN_IF_ERROR(image_.detach_backing());
  report(total_, total_, true);
  return true;
}

namespace {

std::string amount(double bytes) {
  static const char *const kUnits[] = {"bytes", "KiB", "MiB", "GiB", "TiB"};
  unsigned u = 0;
  while (u + 1 < std::size(kUnits) && bytes >= 1024) {
    bytes /= 1024;
    u++;
  }
  char text[64];
  std::snprintf(text, sizeof text, u ? "%.1f %s" : "%.0f %s", bytes, kUnits[u]);
  return text;
}

}  // namespace

std::string describe(const StreamProgress &p) {
  char pct[32];
  std::snprintf(pct, sizeof pct, "%.0f%%", p.total ? 100.0 * double(p.done) / double(p.total) : 100.0);
  return "streamed " + amount(double(p.done)) + " of " + amount(double(p.total)) + " (" + pct +
         "), " + amount(double(p.copied)) + " copied, " + amount(p.rate) + "/s";
}

void lower_thread_priority() {
  const pid_t tid = pid_t(::syscall(SYS_gettid));
  // Linux applies a thread id's nice value to that thread alone (threads it
  // starts inherit it). Not 19 and not the idle I/O class: on a busy host
  // those can starve the stream for good; the yield to clients (stream.h)
  // does the rest.
  (void)::setpriority(PRIO_PROCESS, id_t(tid), 10);
  // ioprio_set(IOPRIO_WHO_PROCESS, tid, best effort, lowest level): no
  // glibc wrapper.
  constexpr int kWhoProcess = 1, kClassBestEffort = 2, kClassShift = 13, kLowest = 7;
  (void)::syscall(SYS_ioprio_set, kWhoProcess, tid, (kClassBestEffort << kClassShift) | kLowest);
}

}  // namespace qed
