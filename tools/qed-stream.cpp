// qed-stream: runs a stream to completion without serving clients (the
// third thin front end, beside the plugin and the filter). It opens the
// image read-write, copies into it every cluster its backing file has data
// for, and detaches the backing file (lib/stream.h), with progress on
// stderr. SIGINT and SIGTERM stop it cleanly: what was copied stays, and
// running it again resumes.
//
//   qed-stream IMAGE [stream-rate=SIZE] [allow-backing=true|network]
//              [backing-connections=N] [allow-local-exports=true]
//              [cache-size=SIZE] [locking=auto|on|off]
//
// Exit status: 0 standalone, 1 failure, 2 usage, 3 stopped by a signal.
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

#include "lib/image.h"
#include "nbd/nbd_store.h"
#include "lib/stream.h"

namespace {

const char kUsage[] =
    "usage: qed-stream IMAGE [stream-rate=SIZE] [allow-backing=true|network]\n"
    "                  [backing-connections=N] [allow-local-exports=true]\n"
    "                  [cache-size=SIZE] [locking=auto|on|off]\n"
    "Copies the backing file of the QED image IMAGE into it, then detaches it.\n";

struct Args {
  std::string image;
  uint64_t rate = 0;
  bool network = false;
  unsigned connections = 8;
  bool allow_local_exports = false;
  uint64_t cache_bytes = 64ull << 20;
  qed::Locking locking = qed::Locking::kAuto;
};

// "4M", "512K", "1G", "100": bytes (powers of 1024, as nbdkit reads sizes).
bool parse_size(const std::string &v, uint64_t &out) {
  if (v.empty())
    return false;
  char *end = nullptr;
  errno = 0;
  const unsigned long long n = std::strtoull(v.c_str(), &end, 10);
  if (errno || end == v.c_str())
    return false;
  const std::string unit(end);
  unsigned shift = 0;
  if (unit == "" || unit == "b" || unit == "B")
    shift = 0;
  else if (unit == "k" || unit == "K")
    shift = 10;
  else if (unit == "m" || unit == "M")
    shift = 20;
  else if (unit == "g" || unit == "G")
    shift = 30;
  else if (unit == "t" || unit == "T")
    shift = 40;
  else
    return false;
  if (shift && n > (UINT64_MAX >> shift))
    return false;
  out = uint64_t(n) << shift;
  return true;
}

int usage_error(const std::string &why) {
  std::fprintf(stderr, "qed-stream: %s\n%s", why.c_str(), kUsage);
  return 2;
}

// 0, or the exit status of a usage error.
int parse(int argc, char **argv, Args &a) {
  for (int i = 1; i < argc; i++) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    }
    const size_t eq = arg.find('=');
    if (eq == std::string::npos) {
      if (!a.image.empty())
        return usage_error("only one image: " + arg);
      a.image = arg;
      continue;
    }
    const std::string key = arg.substr(0, eq), v = arg.substr(eq + 1);
    bool ok = true;
    if (key == "file") {
      a.image = v;
    } else if (key == "stream-rate") {
      ok = parse_size(v, a.rate);
    } else if (key == "cache-size") {
      ok = parse_size(v, a.cache_bytes);
    } else if (key == "allow-backing") {
      ok = v == "true" || v == "network";
      a.network = v == "network";
    } else if (key == "allow-local-exports") {
      ok = v == "true" || v == "false";
      a.allow_local_exports = v == "true";
    } else if (key == "backing-connections") {
      uint64_t n = 0;
      ok = parse_size(v, n) && n >= 1 && n <= 64;
      a.connections = unsigned(n);
    } else if (key == "locking") {
      ok = v == "auto" || v == "on" || v == "off";
      a.locking = v == "on" ? qed::Locking::kOn : v == "off" ? qed::Locking::kOff
                                                            : qed::Locking::kAuto;
    } else {
      return usage_error("unknown parameter '" + key + "'");
    }
    if (!ok)
      return usage_error(key + ": '" + v + "' is not a valid value");
  }
  if (a.image.empty())
    return usage_error("no image given");
  return 0;
}

// The stream the signal watcher stops (Stream::stop() is thread-safe).
qed::Stream *running = nullptr;

}  // namespace

int main(int argc, char **argv) {
  Args a;
  if (int rc = parse(argc, argv, a))
    return rc;

  // Signals go to a thread of ours, which stops the stream: no work in a
  // handler.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGUSR1);  // ours: the stream ended, the watcher may go
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  qed::LockSettings locking;
  locking.policy = a.locking;
  locking.off_switch = "locking=off";
  qed::OpenOptions o;
  o.read_only = false;
  o.cache_bytes = a.cache_bytes;
  o.locking = locking;
  o.backing_stores.local = std::make_shared<qed::PosixBackingStore>(locking);
  if (a.network) {
    qed_nbd::NbdOptions nbd;
    nbd.connections = a.connections;
    nbd.allow_this_host_hint = " (allow-local-exports=true allows it)";
    nbd.connections_hint = "; backing-connections=" + std::to_string(a.connections);
    o.backing_stores.network = std::make_shared<qed_nbd::NbdStore>(nbd, a.allow_local_exports);
  } else {
    o.backing_stores.network = std::make_shared<qed::RefusingBackingStore>(
        "network backing files are refused unless allowed with allow-backing=network");
  }
  auto image = qed::Image::open(a.image, o);
  if (!image) {
    std::fprintf(stderr, "qed-stream: %s\n", image.status().message().c_str());
    return 1;
  }
  const std::string was = (*image)->backing() ? (*image)->backing()->description() : "";

  qed::StreamOptions so;
  so.rate = a.rate;
  so.progress_every = std::chrono::seconds(2);
  so.on_progress = [&](const qed::StreamProgress &p) {
    std::fprintf(stderr, "qed-stream: %s: %s\n", a.image.c_str(), qed::describe(p).c_str());
  };
  so.on_pause = [&](const qed::Status &why) {
    std::fprintf(stderr, "qed-stream: %s: paused, the backing file failed (%s); trying again\n",
                 a.image.c_str(), why.message().c_str());
  };
  so.on_resume = [&] {
    std::fprintf(stderr, "qed-stream: %s: resumed, the backing file answers again\n",
                 a.image.c_str());
  };
  qed::Stream stream(**image, so);
  running = &stream;
  bool signalled = false;
  std::thread watcher([&signalled, stop_signals] {
    int sig = 0;
    sigwait(&stop_signals, &sig);
    if (sig == SIGUSR1)  // our own wake-up: the stream ended
      return;
    signalled = true;
    running->stop();
  });
  qed::Result<bool> done = false;
  try {
    done = stream.run();
  } catch (const std::exception &e) {
    done = qed::Status::io_error(a.image + ": " + e.what(), EIO);
  }
  // End the watcher (if a signal has not already).
  pthread_kill(watcher.native_handle(), SIGUSR1);
  watcher.join();

  qed::Status closed = (*image)->close();
  if (!done) {
    std::fprintf(stderr, "qed-stream: %s: stream: %s (what was copied stays; run again to resume)\n",
                 a.image.c_str(), done.status().message().c_str());
    return 1;
  }
  if (!closed.is_ok()) {
    std::fprintf(stderr, "qed-stream: %s\n", closed.message().c_str());
    return 1;
  }
  if (!*done) {
    std::fprintf(stderr, "qed-stream: %s: stopped%s; what was copied stays, run again to resume\n",
                 a.image.c_str(), signalled ? " by a signal" : "");
    return 3;
  }
  if (was.empty())
    std::fprintf(stderr, "qed-stream: %s: no backing file: nothing to stream\n", a.image.c_str());
  else
    std::fprintf(stderr, "qed-stream: %s: done: the image is standalone (%s is no longer used)\n",
                 a.image.c_str(), was.c_str());
  return 0;
}
