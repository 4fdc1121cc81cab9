// Locks the compiler checks. Clang's thread-safety analysis (-Wthread-safety,
// the build-tsa tree of scripts/test.sh) proves that a member marked
// GUARDED_BY(mu_) is only touched with mu_ held, and that a method marked
// REQUIRES(mu_) is only called with it held. Under other compilers the
// macros expand to nothing and the wrappers are plain std::mutex code.
//
// Use Mutex instead of std::mutex, MutexLock instead of std::lock_guard,
// UniqueLock where a scope unlocks and relocks, MutexUnlock where a method
// that REQUIRES a lock lets it go for a while, CondVar instead of
// std::condition_variable (it waits on the Mutex the caller holds, so a
// method that REQUIRES(mu_) can wait without a lock object), and SharedMutex
// with ReaderLock / WriterLock instead of std::shared_mutex.
//
// The analysis checks function bodies, not lambdas called from them: a
// lambda that touches guarded members says so with REQUIRES too, or the
// caller keeps such code out of lambdas (CondVar has no predicate wait).
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <shared_mutex>

#if defined(__clang__)
#define QED_THREAD_ANNOTATION(x) __attribute__((x))
#else
#define QED_THREAD_ANNOTATION(x)
#endif

#define CAPABILITY(x) QED_THREAD_ANNOTATION(capability(x))
#define SCOPED_CAPABILITY QED_THREAD_ANNOTATION(scoped_lockable)
#define GUARDED_BY(x) QED_THREAD_ANNOTATION(guarded_by(x))
#define PT_GUARDED_BY(x) QED_THREAD_ANNOTATION(pt_guarded_by(x))
#define ACQUIRED_BEFORE(...) QED_THREAD_ANNOTATION(acquired_before(__VA_ARGS__))
#define ACQUIRED_AFTER(...) QED_THREAD_ANNOTATION(acquired_after(__VA_ARGS__))
#define REQUIRES(...) QED_THREAD_ANNOTATION(requires_capability(__VA_ARGS__))
#define REQUIRES_SHARED(...) QED_THREAD_ANNOTATION(requires_shared_capability(__VA_ARGS__))
#define ACQUIRE(...) QED_THREAD_ANNOTATION(acquire_capability(__VA_ARGS__))
#define ACQUIRE_SHARED(...) QED_THREAD_ANNOTATION(acquire_shared_capability(__VA_ARGS__))
#define RELEASE(...) QED_THREAD_ANNOTATION(release_capability(__VA_ARGS__))
#define RELEASE_SHARED(...) QED_THREAD_ANNOTATION(release_shared_capability(__VA_ARGS__))
#define TRY_ACQUIRE(...) QED_THREAD_ANNOTATION(try_acquire_capability(__VA_ARGS__))
#define EXCLUDES(...) QED_THREAD_ANNOTATION(locks_excluded(__VA_ARGS__))
#define ASSERT_CAPABILITY(x) QED_THREAD_ANNOTATION(assert_capability(x))
#define RETURN_CAPABILITY(x) QED_THREAD_ANNOTATION(lock_returned(x))
#define NO_THREAD_SAFETY_ANALYSIS QED_THREAD_ANNOTATION(no_thread_safety_analysis)

namespace qed {

class CondVar;

// A std::mutex the analysis knows as a capability.
class CAPABILITY("mutex") Mutex {
public:
  Mutex() = default;
  Mutex(const Mutex &) = delete;
  Mutex &operator=(const Mutex &) = delete;

  void lock() ACQUIRE() { mu_.lock(); }
  void unlock() RELEASE() { mu_.unlock(); }
  bool try_lock() TRY_ACQUIRE(true) { return mu_.try_lock(); }

private:
  friend class CondVar;
  std::mutex mu_;
};

// Holds a Mutex for its scope (std::lock_guard).
class SCOPED_CAPABILITY MutexLock {
public:
  explicit MutexLock(Mutex &mu) ACQUIRE(mu) : mu_(mu) { mu_.lock(); }
  ~MutexLock() RELEASE() { mu_.unlock(); }
  MutexLock(const MutexLock &) = delete;
  MutexLock &operator=(const MutexLock &) = delete;

private:
  Mutex &mu_;
};

// Releases a Mutex the caller holds for its scope (I/O, a callback that
// takes other locks), and takes it again when the scope ends, also when an
// exception leaves it, so that the caller's lock object still holds it.
class SCOPED_CAPABILITY MutexUnlock {
public:
  explicit MutexUnlock(Mutex &mu) RELEASE(mu) : mu_(mu) { mu_.unlock(); }
  ~MutexUnlock() RELEASE() { mu_.lock(); }
  MutexUnlock(const MutexUnlock &) = delete;
  MutexUnlock &operator=(const MutexUnlock &) = delete;

private:
  Mutex &mu_;
};

// Holds a Mutex for its scope, with unlock() and lock() in between
// (std::unique_lock). The destructor unlocks only if it holds it.
class SCOPED_CAPABILITY UniqueLock {
public:
  explicit UniqueLock(Mutex &mu) ACQUIRE(mu) : mu_(mu) { mu_.lock(); }
  // Not held yet: lock() or try_lock() takes it.
  UniqueLock(Mutex &mu, std::defer_lock_t) EXCLUDES(mu) : mu_(mu), held_(false) {}
  ~UniqueLock() RELEASE() {
    if (held_)
      mu_.unlock();
  }
  UniqueLock(const UniqueLock &) = delete;
  UniqueLock &operator=(const UniqueLock &) = delete;

  void lock() ACQUIRE() {
    mu_.lock();
    held_ = true;
  }
  bool try_lock() TRY_ACQUIRE(true) {
    held_ = mu_.try_lock();
    return held_;
  }
  void unlock() RELEASE() {
    held_ = false;
    mu_.unlock();
  }

private:
  Mutex &mu_;
  bool held_ = true;
};

// A condition variable waited on with a Mutex the caller holds (which it
// holds again when the wait returns). No predicate form: loop on the
// condition at the call site, where the analysis sees the lock held.
class CondVar {
public:
  void wait(Mutex &mu) REQUIRES(mu) {
    std::unique_lock<std::mutex> lock(mu.mu_, std::adopt_lock);
    cv_.wait(lock);
    lock.release();  // the caller's hold, not ours
  }
  // Returns false when `deadline` passed.
  template <typename Clock, typename Duration>
  bool wait_until(Mutex &mu, const std::chrono::time_point<Clock, Duration> &deadline)
      REQUIRES(mu) {
    std::unique_lock<std::mutex> lock(mu.mu_, std::adopt_lock);
    const bool woken = cv_.wait_until(lock, deadline) == std::cv_status::no_timeout;
    lock.release();
    return woken;
  }
  // Returns false when `timeout` passed.
  template <typename Rep, typename Period>
  bool wait_for(Mutex &mu, const std::chrono::duration<Rep, Period> &timeout) REQUIRES(mu) {
    return wait_until(mu, std::chrono::steady_clock::now() + timeout);
  }
  void notify_one() noexcept { cv_.notify_one(); }
  void notify_all() noexcept { cv_.notify_all(); }

private:
  std::condition_variable cv_;
};

// A std::shared_mutex the analysis knows as a capability.
class CAPABILITY("shared mutex") SharedMutex {
public:
  SharedMutex() = default;
  SharedMutex(const SharedMutex &) = delete;
  SharedMutex &operator=(const SharedMutex &) = delete;

  void lock() ACQUIRE() { mu_.lock(); }
  void unlock() RELEASE() { mu_.unlock(); }
  void lock_shared() ACQUIRE_SHARED() { mu_.lock_shared(); }
  void unlock_shared() RELEASE_SHARED() { mu_.unlock_shared(); }

private:
  std::shared_mutex mu_;
};

// Holds a SharedMutex exclusively for its scope.
class SCOPED_CAPABILITY WriterLock {
public:
  explicit WriterLock(SharedMutex &mu) ACQUIRE(mu) : mu_(mu) { mu_.lock(); }
  ~WriterLock() RELEASE() { mu_.unlock(); }
  WriterLock(const WriterLock &) = delete;
  WriterLock &operator=(const WriterLock &) = delete;

private:
  SharedMutex &mu_;
};

// Holds a SharedMutex shared for its scope.
class SCOPED_CAPABILITY ReaderLock {
public:
  explicit ReaderLock(SharedMutex &mu) ACQUIRE_SHARED(mu) : mu_(mu) { mu_.lock_shared(); }
  ~ReaderLock() RELEASE() { mu_.unlock_shared(); }
  ReaderLock(const ReaderLock &) = delete;
  ReaderLock &operator=(const ReaderLock &) = delete;

private:
  SharedMutex &mu_;
};

}  // namespace qed
