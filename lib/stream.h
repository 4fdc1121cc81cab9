// Stream-and-detach: a task that copies into an image every cluster for which
// its backing file has data, then makes the image standalone.
//
// It walks the disk in cluster order. Clusters the image has (data or zero)
// are skipped: so a stream that starts again after a stop, a crash or kill -9
// resumes where the last one got to, and nothing is lost, since every copy
// follows the crash-safety protocol of any allocating write. The stream
// flushes every flush_every, so that a crash costs at most that much copying
// again. For the rest it
// asks the backing file for extents: holes cost no read and no allocation
// (they read as zeroes with or without it); clusters with data go through
// Image::copy_up(), the copy-on-read path, which is where races with client
// writes are settled. Then Image::detach_backing(): a flush, the header
// rewritten without the backing file, a sync.
//
// Workers: kWorkers threads copy at once, each taking the next window of the
// disk (a step's worth), so that reads from the backing file and writes to
// the image overlap, as a copy tool's would; the copies settle races among
// themselves as with clients (Metadata's in-flight records).
//
// Priority: client requests come first. While they keep arriving (the image
// counts them), each step of a worker is followed by a pause as long as the
// step took (so a busy server gives the stream at most about half of its
// time), and `rate` caps the bytes copied per second, all workers together.
// A backing file that fails (its NBD server went away) pauses the stream,
// with back-off, until it answers again.
//
// Threads: run() on one thread (the front end's), which starts the workers
// and waits for them; stop() from any other. mu_ guards the state the
// workers share (below) and is what every wait waits on, so stop() ends any
// wait at once; report_mu_ guards the progress report and the periodic
// flush (taken alone, never with mu_).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>

#include "lib/image.h"
#include "lib/thread_annotations.h"

namespace qed {

struct StreamProgress {
  uint64_t done;    // bytes of the disk walked (copied, skipped or holes)
  uint64_t total;   // bytes to walk: the part of the disk the backing file covers
  uint64_t copied;  // bytes copied from the backing file so far, in this run
  double seconds;   // since run() began
  // Bytes copied per second over the last interval.
  double rate;
};

struct StreamOptions {
  uint64_t rate = 0;  // most bytes copied per second; 0: no limit
  std::chrono::milliseconds progress_every{10000};
  // How often what was copied is made durable (a flush): what a crash or
  // kill -9 can make a resumed stream copy again.
  std::chrono::milliseconds flush_every{1000};
  // Longest wait between two tries while the backing file fails.
  std::chrono::milliseconds max_retry{5000};
  // Each interval, and once at the end.
  std::function<void(const StreamProgress &)> on_progress;
  // The backing file failed: the stream waits and tries again. Called once
  // per outage, with the failure.
  std::function<void(const Status &)> on_pause;
  // The backing file answers again after on_pause.
  std::function<void()> on_resume;
};

class Stream {
public:
  Stream(Image &image, StreamOptions options);

  // Runs until the image is standalone (true), or stop() was called (false),
  // or something other than the backing file failed (the image could not be
  // written, say). An image without a backing file is done at once.
  Result<bool> run();
  // Makes run() return false soon, from any thread.
  void stop();

private:
  // One worker: claims windows until the disk is walked, stop() or a
  // failure.
  void work();
  // Walks one window [pos, end): copies what is unallocated and has data
  // below. False when the worker must end (stop, or a failure recorded).
  bool walk(uint64_t pos, uint64_t end, PageBuffer &scratch);
  // Copies the clusters of [pos, pos+len) that have data below (all of it
  // unallocated in the image when looked at); returns the bytes walked.
  Result<uint64_t> step(uint64_t pos, uint64_t len, bool &base_failed, PageBuffer &scratch);
  // Waits until `until` or stop(); false when stopped.
  bool wait_until(std::chrono::steady_clock::time_point until);
  bool stopping();
  // Records the first failure and stops the other workers.
  void fail(const Status &why);
  void report(uint64_t done, uint64_t total, bool final);
  // Flushes when flush_every passed since the last one (or `now`).
  Status flush_if_due(bool now);

  Image &image_;
  const StreamOptions options_;
  std::chrono::steady_clock::time_point started_;
  uint64_t total_ = 0, step_bytes_ = 0;  // set before the workers start
  std::atomic<uint64_t> copied_{0};

  Mutex mu_;
  CondVar cv_;  // waited on with mu_
  bool stop_ GUARDED_BY(mu_) = false;
  uint64_t next_ GUARDED_BY(mu_) = 0;           // the next window to claim
  Status failure_ GUARDED_BY(mu_);              // the first failure
  bool paused_ GUARDED_BY(mu_) = false;         // the backing file fails
  uint64_t requests_seen_ GUARDED_BY(mu_) = 0;

  Mutex report_mu_;
  std::chrono::steady_clock::time_point last_report_ GUARDED_BY(report_mu_);
  std::chrono::steady_clock::time_point last_flush_ GUARDED_BY(report_mu_);
  uint64_t copied_at_last_report_ GUARDED_BY(report_mu_) = 0;
};

// "streamed 512 MiB of 1 GiB (50%), 1.2 GiB copied, 96.0 MiB/s": the words
// every front end logs.
std::string describe(const StreamProgress &p);

// Lowers the calling thread's CPU and I/O priority (nice 10, the lowest
// best-effort I/O level), so that a stream thread yields to the threads
// serving clients. Best effort.
void lower_thread_priority();

}  // namespace qed
