// System calls interposed from the unit test binary, to put PosixFile (and an
// Image on it) in the situations that are otherwise a matter of luck:
// fallocate refused (as on ext2/ext3, NFSv3, some FUSE and 9p file systems),
// fstat paused, calls counted, and a step run right after a fallocate returns
// (before its caller goes on). Interposition is per file descriptor and off
// unless a test arms it, so the other tests see the real calls.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>

namespace hooks {

extern std::atomic<int> refuse_fallocate_fd;  // fallocate() on it fails EOPNOTSUPP
extern std::atomic<int> pause_fstat_fd;       // fstat() on it waits (see below)
extern std::atomic<int> count_fd;             // calls on it are counted
extern std::atomic<int> fallocates, ftruncates;
// ftruncate() calls on count_fd begun, whatever their outcome (counted before
// the real call is made).
extern std::atomic<int> ftruncates_begun;

// A paused fstat() has read the size and waits for release() or 500 ms.
// mu guards paused and released.
extern std::mutex mu;
extern std::condition_variable cv;
extern bool paused, released;
void release();

// Runs `step` once, in the thread that made it, right after the next
// successful fallocate() on `fd` returns from the kernel.
void after_next_fallocate(int fd, std::function<void()> step);

// Turns every hook off (a test's scope guard).
struct Disarm {
  ~Disarm();
};

// The descriptor this process holds on `path`, or -1.
int fd_of(const std::string &path);

// The calling thread's id, for blocked_on_lock().
pid_t thread_id();
// Whether thread `tid` of this process sleeps on a futex (a lock), as read
// from /proc; false while it runs or if /proc says nothing.
bool blocked_on_lock(pid_t tid);

// Waits until `done`, or until thread `tid` (once known, non-zero) sleeps on
// a lock before any ftruncate() on count_fd began after `ftruncates_before`
// were: it then waits for a lock someone holds. False after 10 s of neither.
bool wait_done_or_blocked(const std::atomic<bool> &done, const std::atomic<pid_t> &tid,
                          int ftruncates_before);

}  // namespace hooks
