// What the libqed-nbd tests share: a private folder, nbdkit servers on Unix
// sockets or TCP ports of the loopback address, and small helpers.
#pragma once

#include <doctest/doctest.h>

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <arpa/inet.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "nbd/nbd_file.h"

namespace nbd_test {

using namespace std::chrono_literals;
using qed_nbd::NbdFile;
using qed_nbd::NbdOptions;

constexpr uint64_t MiB = 1 << 20;

inline bool have_nbdkit() {
  static const bool have = std::system("nbdkit --version >/dev/null 2>&1") == 0;
  return have;
}

class TempDir {
public:
  TempDir() {
    char tmpl[] = "/tmp/qed-nbd-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string file(const std::string &name) const { return path_ + "/" + name; }

private:
  std::string path_;
};

// A TCP port of the loopback address that nothing listens on now (the
// kernel's choice; another program may take it before nbdkit does, rarely).
inline int free_loopback_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr *>(&addr), sizeof addr) == 0);
  REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr *>(&addr), &len) == 0);
  ::close(fd);
  return ntohs(addr.sin_port);
}

// One nbdkit in the foreground on a Unix socket (or, with kTcp, a TCP port of
// the loopback address); stopped (TERM, then KILL) when destroyed. Close
// every NbdFile on it first: nbdkit waits for its clients when terminated.
class Server {
public:
  enum class Transport { kUnix, kTcp };
  Server(const TempDir &dir, const std::string &name, std::vector<std::string> args,
         Transport transport = Transport::kUnix)
      : socket_(dir.file(name + ".sock")),
        port_(transport == Transport::kTcp ? free_loopback_port() : 0),
        args_(std::move(args)) {
    start();
  }
  ~Server() { stop(SIGTERM); }
  std::string uri() const {
    return port_ ? "nbd://127.0.0.1:" + std::to_string(port_) : "nbd+unix:///?socket=" + socket_;
  }
  int port() const { return port_; }

  void start() {
    ::unlink(socket_.c_str());
    std::vector<std::string> argv = {"nbdkit", "-f", "--exit-with-parent"};
    if (port_) {
      for (const char *a : {"-i", "127.0.0.1", "-p"})
        argv.push_back(a);
      argv.push_back(std::to_string(port_));
    } else {
      argv.push_back("-U");
      argv.push_back(socket_);
    }
    argv.insert(argv.end(), args_.begin(), args_.end());
    pid_ = ::fork();
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) {
      std::vector<char *> p;
      for (auto &a : argv)
        p.push_back(a.data());
      p.push_back(nullptr);
      const int null = ::open("/dev/null", O_WRONLY);
      ::dup2(null, 1);
      ::execvp("nbdkit", p.data());
      ::_exit(127);
    }
    // Until the socket accepts connections (nbdkit binds, then listens).
    for (int i = 0; i < 1000; i++) {
      if (connectable())
        return;
      int status;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        FAIL("nbdkit exited at start-up");
      }
      std::this_thread::sleep_for(10ms);
    }
    FAIL("nbdkit did not create its socket");
  }
  bool connectable() const {
    const int fd = ::socket(port_ ? AF_INET : AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
      return false;
    bool ok;
    if (port_) {
      sockaddr_in addr{};
      addr.sin_family = AF_INET;
      addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      addr.sin_port = htons(uint16_t(port_));
      ok = ::connect(fd, reinterpret_cast<sockaddr *>(&addr), sizeof addr) == 0;
    } else {
      sockaddr_un addr{};
      addr.sun_family = AF_UNIX;
      std::strncpy(addr.sun_path, socket_.c_str(), sizeof addr.sun_path - 1);
      ok = ::connect(fd, reinterpret_cast<sockaddr *>(&addr), sizeof addr) == 0;
    }
    ::close(fd);
    return ok;
  }
  // Stops the server; with SIGTERM it waits up to 5 s, then kills it.
  void stop(int sig) {
    if (pid_ <= 0)
      return;
    ::kill(pid_, sig);
    for (int i = 0; i < 500; i++) {
      int status;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return;
      }
      std::this_thread::sleep_for(10ms);
    }
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

private:
  const std::string socket_;
  const int port_;
  const std::vector<std::string> args_;
  pid_t pid_ = -1;
};

inline NbdOptions quick_options() {
  NbdOptions o;
  o.connect_timeout_ms = 3000;
  o.request_timeout_ms = 5000;
  o.backoff_min_ms = 50;
  o.backoff_max_ms = 200;
  return o;
}

inline std::unique_ptr<NbdFile> open_ok(const std::string &uri, const NbdOptions &o = quick_options()) {
  auto f = NbdFile::open(uri, o);
  INFO(f.status().message());
  REQUIRE(f.is_ok());
  return std::move(*f);
}

inline std::vector<uint8_t> pattern(size_t n, uint32_t seed) {
  std::vector<uint8_t> v(n);
  uint32_t x = seed * 2654435761u | 1;
  for (auto &b : v) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    b = uint8_t(x) | 1;
  }
  return v;
}

inline void write_file(const std::string &path, const std::vector<uint8_t> &bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char *>(bytes.data()), std::streamsize(bytes.size()));
  REQUIRE(out.good());
}

inline bool contains(const std::string &s, const std::string &what) {
  return s.find(what) != std::string::npos;
}


}  // namespace nbd_test
