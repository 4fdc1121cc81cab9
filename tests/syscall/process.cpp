#include "tests/syscall/process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <dirent.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

extern char **environ;

namespace qsys {

namespace {

void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
  nanosleep(&ts, nullptr);
}

std::string slurp(const std::string &path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Forks and execs argv with envp; stdout to out_fd (or inherited), stderr to
// err_fd (or inherited).
pid_t spawn(const std::vector<std::string> &argv, const std::vector<std::string> &envp,
            int out_fd, int err_fd) {
  std::vector<char *> av, ev;
  for (const auto &a : argv)
    av.push_back(const_cast<char *>(a.c_str()));
  av.push_back(nullptr);
  for (const auto &e : envp)
    ev.push_back(const_cast<char *>(e.c_str()));
  ev.push_back(nullptr);
  pid_t pid = fork();
  if (pid == 0) {
    if (out_fd >= 0)
      dup2(out_fd, 1);
    if (err_fd >= 0)
      dup2(err_fd, 2);
    execvpe(av[0], av.data(), ev.data());
    std::fprintf(stderr, "exec %s: %s\n", av[0], std::strerror(errno));
    _exit(127);
  }
  return pid;
}

// The environment without LD_PRELOAD and the sanitizer options (the harness
// may run under a sanitizer; its children decide for themselves).
std::vector<std::string> base_env() {
  std::vector<std::string> env;
  for (char **e = environ; *e; e++) {
    const std::string s = *e;
    if (s.rfind("LD_PRELOAD=", 0) == 0 || s.rfind("ASAN_OPTIONS=", 0) == 0 ||
        s.rfind("UBSAN_OPTIONS=", 0) == 0 || s.rfind("QED_SYSCALL_", 0) == 0)
      continue;
    env.push_back(s);
  }
  return env;
}

bool sanitizer_report(const std::string &log) {
  for (const char *needle : {"ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                             "ERROR: UndefinedBehaviorSanitizer", "runtime error:",
                             "SUMMARY: AddressSanitizer", "SUMMARY: UndefinedBehaviorSanitizer",
                             "terminate called", "Assertion", "Segmentation fault"})
    if (log.find(needle) != std::string::npos)
      return true;
  return false;
}

}  // namespace

Nbdkit::~Nbdkit() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
}

bool Nbdkit::start(const Tools &tools, const std::string &dir,
                   const std::vector<std::string> &args,
                   const std::vector<std::pair<std::string, std::string>> &env,
                   bool with_preload, std::string &why) {
  static int counter = 0;
  const std::string tag = dir + "/nbdkit" + std::to_string(getpid()) + "-" +
                          std::to_string(counter++);
  socket_ = tag + ".sock";
  pidfile_ = tag + ".pid";
  errfile_ = tag + ".err";
  unlink(socket_.c_str());
  unlink(pidfile_.c_str());
  std::vector<std::string> argv = {"nbdkit", "-f", "--exit-with-parent", "-U", socket_,
                                   "-P", pidfile_, tools.plugin};
  argv.insert(argv.end(), args.begin(), args.end());
  std::vector<std::string> envp = base_env();
  std::string preload = tools.asan;  // the sanitizer runtime must come first
  if (with_preload)
    preload += (preload.empty() ? "" : ":") + tools.preload;
  if (!preload.empty())
    envp.push_back("LD_PRELOAD=" + preload);
  if (!tools.asan.empty()) {
    envp.push_back("ASAN_OPTIONS=detect_leaks=0:abort_on_error=0:exitcode=97");
    envp.push_back("UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1");
  }
  for (const auto &[k, v] : env)
    envp.push_back(k + "=" + v);
  sanitized_ = !tools.asan.empty();
  int err = open(errfile_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  pid_ = spawn(argv, envp, -1, err);
  close(err);
  if (pid_ < 0) {
    why = std::string("fork: ") + std::strerror(errno);
    return false;
  }
  // nbdkit writes the pid file once it accepts connections.
  for (int i = 0; i < 3000; i++) {
    struct stat st;
    if (stat(pidfile_.c_str(), &st) == 0 && st.st_size > 0)
      return true;
    if (!alive()) {
      why = "nbdkit exited at start-up: " + log();
      return false;
    }
    sleep_ms(10);
  }
  why = "nbdkit did not start within 30 s: " + log();
  return false;
}

bool Nbdkit::alive() {
  if (pid_ <= 0)
    return false;
  int status;
  pid_t r = waitpid(pid_, &status, WNOHANG);
  if (r == 0)
    return true;
  pid_ = -1;
  return false;
}

bool Nbdkit::exit_hang() const {
  const std::string task = "/proc/" + std::to_string(pid_) + "/task";
  DIR *d = opendir(task.c_str());
  if (!d)
    return false;
  int threads = 0;
  std::string tid;
  while (struct dirent *e = readdir(d))
    if (e->d_name[0] != '.') {
      threads++;
      tid = e->d_name;
    }
  closedir(d);
  if (threads != 1)
    return false;
  const std::string wchan = slurp(task + "/" + tid + "/wchan");
  return wchan.find("futex") != std::string::npos;
}

bool Nbdkit::stop(std::string &why) {
  if (pid_ <= 0) {
    why = "nbdkit was not running: " + log();
    return false;
  }
  kill(pid_, SIGTERM);
  int status = 0;
  bool exited = false;
  for (int i = 0; i < 6000 && !exited; i++) {
    pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      exited = true;
    } else if (sanitized_ && i >= 50 && i % 25 == 0 && exit_hang()) {
      kill(pid_, SIGKILL);
      waitpid(pid_, &status, 0);
      pid_ = -1;
      const std::string err = log();
      if (sanitizer_report(err)) {
        why = "nbdkit reported: " + err;
        return false;
      }
      return true;
    } else {
      sleep_ms(10);
    }
  }
  if (!exited) {
    kill(pid_, SIGKILL);
    waitpid(pid_, &status, 0);
    pid_ = -1;
    why = "nbdkit did not exit within 60 s of SIGTERM: " + log();
    return false;
  }
  pid_ = -1;
  const std::string err = log();
  if (sanitizer_report(err)) {
    why = "nbdkit reported: " + err;
    return false;
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    why = "nbdkit exit status " + std::to_string(status) + ": " + err;
    return false;
  }
  return true;
}

std::string Nbdkit::log() const { return slurp(errfile_); }

namespace {

int run_env(const std::vector<std::string> &argv, const std::vector<std::string> &envp,
            std::string *out) {
  char tmpl[] = "/tmp/qsys-out-XXXXXX";
  int fd = out ? mkstemp(tmpl) : open("/dev/null", O_WRONLY | O_CLOEXEC);
  if (fd < 0)
    return -1;
  pid_t pid = spawn(argv, envp, fd, out ? fd : -1);
  close(fd);
  int status = -1;
  if (pid > 0)
    waitpid(pid, &status, 0);
  if (out) {
    *out = slurp(tmpl);
    unlink(tmpl);
  }
  return pid > 0 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace

int run(const std::vector<std::string> &argv, std::string *out) {
  return run_env(argv, base_env(), out);
}

int run_preloaded(const Tools &tools, const std::vector<std::string> &argv,
                  const std::vector<std::pair<std::string, std::string>> &env,
                  std::string *out) {
  std::vector<std::string> envp = base_env();
  envp.push_back("LD_PRELOAD=" + (tools.asan.empty() ? "" : tools.asan + ":") + tools.preload);
  if (!tools.asan.empty())
    envp.push_back("ASAN_OPTIONS=detect_leaks=0:abort_on_error=0:exitcode=97");
  for (const auto &[k, v] : env)
    envp.push_back(k + "=" + v);
  return run_env(argv, envp, out);
}

bool qemu_check(const std::string &image, std::string &report) {
  // Exit status 0: clean; 3: leaks only; 2: corruption; 1: check error.
  const int rc = run({"qemu-img", "check", "-f", "qed", "--output=json", image}, &report);
  return rc == 0 || rc == 3;
}

}  // namespace qsys
