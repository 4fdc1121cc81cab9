// Child processes of the harness: nbdkit serving the plugin (optionally with
// the preload library and the sanitizer runtime) and qemu-img.
#pragma once

#include <sys/types.h>

#include <string>
#include <utility>
#include <vector>

namespace qsys {

struct Tools {
  std::string plugin;   // nbdkit-qed-plugin.so
  std::string preload;  // qed_syscalls.so
  std::string asan;     // the ASan runtime to preload first (sanitized builds), or empty
};

// One nbdkit in the foreground on a private Unix socket. The destructor kills
// it if stop() was not called.
class Nbdkit {
public:
  Nbdkit() = default;
  Nbdkit(const Nbdkit &) = delete;
  Nbdkit &operator=(const Nbdkit &) = delete;
  ~Nbdkit();

  // Starts nbdkit with `args` after the plugin (file=..., ...), `env` added to
  // the environment (QED_SYSCALL_* for the preload, which is loaded when
  // `with_preload`). Returns once nbdkit accepts connections.
  bool start(const Tools &tools, const std::string &dir, const std::vector<std::string> &args,
             const std::vector<std::pair<std::string, std::string>> &env, bool with_preload,
             std::string &why);
  bool alive();
  // SIGTERM, then waits (SIGKILL after 60 s). False if nbdkit did not exit
  // with status 0 or its stderr holds a sanitizer report or a crash.
  // Under the ASan preload, nbdkit 1.32 can hang for ever at exit, in
  // libp11-kit's destructor (freelocale on a glibc lock left taken; see
  // tests/e2e/functions.sh; strerror() calls seem enough to set it off). So
  // in sanitized runs a single thread left, blocked on a futex half a second
  // after SIGTERM, is taken for that hang (the plugin's cleanup has run by
  // then) and killed. Normal builds wait the full 60 s.
  bool stop(std::string &why);
  const std::string &socket() const { return socket_; }
  // nbdkit's stderr so far.
  std::string log() const;

private:
  bool exit_hang() const;

  pid_t pid_ = -1;
  bool sanitized_ = false;
  std::string socket_, pidfile_, errfile_;
};

// Runs a command; returns its exit status (-1 if it could not run or was
// killed) and its standard output and error in `out`.
int run(const std::vector<std::string> &argv, std::string *out = nullptr);
// The same with the preload library (after the sanitizer runtime, if any)
// and `env` added to the environment.
int run_preloaded(const Tools &tools, const std::vector<std::string> &argv,
                  const std::vector<std::pair<std::string, std::string>> &env,
                  std::string *out);

// qemu-img check of a QED image: true when it finds no corruption and no
// check errors (leaks are allowed). `report` gets the JSON or the error.
bool qemu_check(const std::string &image, std::string &report);

}  // namespace qsys
