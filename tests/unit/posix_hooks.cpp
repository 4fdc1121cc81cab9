// The interposed system calls of posix_hooks.h: definitions in this binary
// come before the C library's, and pass every call on to it.
#include "tests/unit/posix_hooks.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <fstream>
#include <sstream>
#include <string>

namespace hooks {

std::atomic<int> refuse_fallocate_fd{-1};
std::atomic<int> pause_fstat_fd{-1};
std::atomic<int> count_fd{-1};
std::atomic<int> fallocates{0}, ftruncates{0}, ftruncates_begun{0};

std::mutex mu;
std::condition_variable cv;
bool paused = false, released = false;

namespace {

// Guarded by step_mu: the step to run after the next fallocate on step_fd.
std::mutex step_mu;
std::atomic<int> step_fd{-1};
std::function<void()> step;

template <typename Fn>
Fn real(const char *name) {
  return reinterpret_cast<Fn>(::dlsym(RTLD_NEXT, name));
}

std::string slurp(const std::string &path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

void release() {
  std::lock_guard lock(mu);
  released = true;
  cv.notify_all();
}

void after_next_fallocate(int fd, std::function<void()> fn) {
  std::lock_guard lock(step_mu);
  step = std::move(fn);
  step_fd = fd;
}

Disarm::~Disarm() {
  refuse_fallocate_fd = -1;
  pause_fstat_fd = -1;
  count_fd = -1;
  std::lock_guard lock(step_mu);
  step_fd = -1;
  step = nullptr;
}

int fd_of(const std::string &path) {
  for (int fd = 3; fd < 1024; fd++) {
    char link[4096];
    const std::string proc = "/proc/self/fd/" + std::to_string(fd);
    const ssize_t n = ::readlink(proc.c_str(), link, sizeof link - 1);
    if (n > 0 && std::string(link, size_t(n)) == path)
      return fd;
  }
  return -1;
}

pid_t thread_id() { return ::gettid(); }

bool blocked_on_lock(pid_t tid) {
  const std::string task = "/proc/self/task/" + std::to_string(tid);
  const std::string stat = slurp(task + "/stat");
  // The state follows the command name, which ends with the last ')'.
  const size_t close = stat.rfind(')');
  if (close == std::string::npos || close + 2 >= stat.size() || stat[close + 2] != 'S')
    return false;
  // Where it sleeps, when the kernel says (a futex wait for a lock).
  const std::string wchan = slurp(task + "/wchan");
  return wchan.empty() || wchan == "0" || wchan.find("futex") != std::string::npos;
}

bool wait_done_or_blocked(const std::atomic<bool> &done, const std::atomic<pid_t> &tid,
                          int ftruncates_before) {
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < give_up) {
    if (done.load())
      return true;
    // Blocked first, then no ftruncate begun: one begun before the thread
    // slept would be counted by now (an ftruncate may sleep in the kernel).
    const pid_t t = tid.load();
    if (t != 0 && blocked_on_lock(t) && ftruncates_begun.load() == ftruncates_before)
      return true;
    struct timespec ts = {0, 100000};
    nanosleep(&ts, nullptr);
  }
  return false;
}

}  // namespace hooks

extern "C" int fallocate(int fd, int mode, off_t offset, off_t len) {
  static auto next = hooks::real<int (*)(int, int, off_t, off_t)>("fallocate");
  if (fd == hooks::count_fd.load())
    hooks::fallocates++;
  if (fd == hooks::refuse_fallocate_fd.load()) {
    errno = EOPNOTSUPP;
    return -1;
  }
  const int r = next(fd, mode, offset, len);
  if (r == 0 && fd == hooks::step_fd.load()) {
    std::function<void()> fn;
    {
      std::lock_guard lock(hooks::step_mu);
      if (fd == hooks::step_fd.load()) {
        fn = std::move(hooks::step);
        hooks::step = nullptr;
        hooks::step_fd = -1;
      }
    }
    const int saved = errno;
    if (fn)
      fn();
    errno = saved;
  }
  return r;
}

extern "C" int ftruncate(int fd, off_t length) {
  static auto next = hooks::real<int (*)(int, off_t)>("ftruncate");
  if (fd == hooks::count_fd.load())
    hooks::ftruncates_begun++;
  const int r = next(fd, length);
  if (fd == hooks::count_fd.load())
    hooks::ftruncates++;
  return r;
}

extern "C" int fstat(int fd, struct stat *st) {
  static auto next = hooks::real<int (*)(int, struct stat *)>("fstat");
  const int r = next(fd, st);
  if (fd == hooks::pause_fstat_fd.load()) {
    std::unique_lock lock(hooks::mu);
    hooks::paused = true;
    hooks::cv.notify_all();
    hooks::cv.wait_for(lock, std::chrono::milliseconds(500), [] { return hooks::released; });
  }
  return r;
}
