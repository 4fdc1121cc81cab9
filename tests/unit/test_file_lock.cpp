// QEMU's image locks (lib/file_lock.h): the bytes each access holds, seen
// from another open file description as QEMU sees them; who refuses whom;
// release; locking=off and auto/on where the file system has no OFD locks
// (fcntl interposed from this test binary, armed per test); and the engine's
// open paths (image, backing file, create, grow) taking them before they
// touch the file. The e2e test test-locking.sh checks the same against
// QEMU's own tools.
#include <dlfcn.h>
#include <fcntl.h>
#include <unistd.h>

#include <doctest/doctest.h>

#include <atomic>
#include <cerrno>
#include <cstdarg>
#include <memory>
#include <string>
#include <vector>

#include "lib/create.h"
#include "lib/file.h"
#include "lib/file_lock.h"
#include "lib/image.h"
#include "tests/unit/test_util.h"

namespace lock_hooks {

// While set, F_OFD_SETLK and F_OFD_GETLK fail with this errno, as on a file
// system without OFD locks; every other fcntl passes through.
std::atomic<int> refuse_ofd{0};
std::atomic<int> ofd_calls{0};

int intercept(int fd, int cmd, void *arg) {
  using Fcntl = int (*)(int, int, ...);
  // With 64-bit file offsets <fcntl.h> renames fcntl to fcntl64: the function
  // below is then fcntl64, and so is the one it forwards to.
#if defined(_FILE_OFFSET_BITS) && _FILE_OFFSET_BITS == 64
  static auto next = reinterpret_cast<Fcntl>(::dlsym(RTLD_NEXT, "fcntl64"));
#else
  static auto next = reinterpret_cast<Fcntl>(::dlsym(RTLD_NEXT, "fcntl"));
#endif
  if (cmd == F_OFD_SETLK || cmd == F_OFD_GETLK) {
    ofd_calls++;
    if (int err = refuse_ofd.load()) {
      errno = err;
      return -1;
    }
  }
  return next(fd, cmd, arg);
}

struct Disarm {
  ~Disarm() { refuse_ofd = 0; }
};

}  // namespace lock_hooks

extern "C" int fcntl(int fd, int cmd, ...) {
  va_list ap;
  va_start(ap, cmd);
  void *arg = va_arg(ap, void *);
  va_end(ap);
  return lock_hooks::intercept(fd, cmd, arg);
}

TEST_SUITE_BEGIN("lock");

namespace {

using qed::LockAccess;
using qed::Locking;
using qed::OpenMode;

qed::LockSettings settings(Locking policy = Locking::kAuto) {
  qed::LockSettings s;
  s.policy = policy;
  s.off_switch = "locking=off";
  return s;
}

qed::Result<std::unique_ptr<qed::File>> open_locked(const std::string &path, LockAccess access,
                                                    Locking policy = Locking::kAuto) {
  return qed::open_posix_file(path, OpenMode::kReadOnly, access, settings(policy));
}

// Which of bytes 100..103 and 200..203 another open file description holds,
// tested the way QEMU tests them, as "100 101 201 ...".
std::string held_bytes(const std::string &path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  std::string out;
  for (off_t base : {100, 200}) {
    for (off_t i = 0; i < 4; i++) {
      struct flock fl = {};
      fl.l_type = F_WRLCK;
      fl.l_whence = SEEK_SET;
      fl.l_start = base + i;
      fl.l_len = 1;
      REQUIRE(::fcntl(fd, F_OFD_GETLK, &fl) == 0);
      if (fl.l_type != F_UNLCK)
        out += (out.empty() ? "" : " ") + std::to_string(base + i);
    }
  }
  ::close(fd);
  return out;
}

// A process holding the bytes QEMU's tools hold: an open file description
// with shared locks on each byte in `bytes`.
struct QemuLike {
  int fd;
  QemuLike(const std::string &path, std::vector<off_t> bytes) {
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    REQUIRE(fd >= 0);
    for (off_t b : bytes) {
      struct flock fl = {};
      fl.l_type = F_RDLCK;
      fl.l_whence = SEEK_SET;
      fl.l_start = b;
      fl.l_len = 1;
      REQUIRE(::fcntl(fd, F_OFD_SETLK, &fl) == 0);
    }
  }
  ~QemuLike() { ::close(fd); }
};

// Options that name the switch, as the plugin's do.
qed::OpenOptions named(qed::OpenOptions o) {
  o.locking = settings();
  return o;
}

void check_refusal(const qed::Status &s, const std::string &path, const std::string &lock) {
  INFO(s.message());
  CHECK(s.errno_value() == EBUSY);
  CHECK(s.message().rfind(path + ": failed to ", 0) == 0);
  CHECK(s.message().find(lock) != std::string::npos);
  CHECK(s.message().find("another process is using the image") != std::string::npos);
  CHECK(s.message().find("fuser -v " + path) != std::string::npos);
  CHECK(s.message().find("locking=off") != std::string::npos);
}

}  // namespace

TEST_CASE("a writer and a reader hold QEMU's bytes for their permissions") {
  qt::TempDir dir;
  const std::string path = dir.file("a.img");
  qt::write_whole_file(path, std::vector<uint8_t>(4096, 1));
  {
    auto w = open_locked(path, LockAccess::kWrite);
    REQUIRE(w.is_ok());
    // consistent read, write, resize held; write and resize not shared
    CHECK(held_bytes(path) == "100 101 103 201 203");
  }
  CHECK(held_bytes(path) == "");
  {
    auto r = open_locked(path, LockAccess::kRead);
    REQUIRE(r.is_ok());
    CHECK(held_bytes(path) == "100 201 203");
  }
  CHECK(held_bytes(path) == "");
}

TEST_CASE("readers share; a writer refuses readers and writers, and they refuse it") {
  qt::TempDir dir;
  const std::string path = dir.file("b.img");
  qt::write_whole_file(path, std::vector<uint8_t>(4096, 1));
  {
    auto r1 = open_locked(path, LockAccess::kRead);
    auto r2 = open_locked(path, LockAccess::kRead);
    REQUIRE(r1.is_ok());
    REQUIRE(r2.is_ok());
    auto w = open_locked(path, LockAccess::kWrite);
    REQUIRE(!w.is_ok());
    check_refusal(w.status(), path, "failed to get \"write\" lock");
    // The refused opener left nothing behind.
    CHECK(held_bytes(path) == "100 201 203");
  }
  {
    auto w = open_locked(path, LockAccess::kWrite);
    REQUIRE(w.is_ok());
    auto r = open_locked(path, LockAccess::kRead);
    REQUIRE(!r.is_ok());
    check_refusal(r.status(), path, "failed to get shared \"write\" lock");
    auto w2 = open_locked(path, LockAccess::kWrite);
    REQUIRE(!w2.is_ok());
    CHECK(w2.status().errno_value() == EBUSY);
    CHECK(held_bytes(path) == "100 101 103 201 203");
  }
  // Everything was released with the files.
  auto w = open_locked(path, LockAccess::kWrite);
  CHECK(w.is_ok());
}

TEST_CASE("QEMU's openers: a writer refuses us, -U (force share) does not") {
  qt::TempDir dir;
  const std::string path = dir.file("c.img");
  qt::write_whole_file(path, std::vector<uint8_t>(4096, 1));
  {
    QemuLike qemu_io(path, {100, 101, 103, 201, 203});  // qemu-io read-write
    auto r = open_locked(path, LockAccess::kRead);
    REQUIRE(!r.is_ok());
    check_refusal(r.status(), path, "shared \"write\"");
    auto w = open_locked(path, LockAccess::kWrite);
    REQUIRE(!w.is_ok());
    check_refusal(w.status(), path, "\"write\"");
  }
  {
    QemuLike info_u(path, {100});  // qemu-img info -U: consistent read, shares everything
    CHECK(open_locked(path, LockAccess::kWrite).is_ok());
    CHECK(open_locked(path, LockAccess::kRead).is_ok());
  }
  {
    QemuLike info(path, {100, 201, 203});  // qemu-img info
    CHECK(open_locked(path, LockAccess::kRead).is_ok());
    CHECK(!open_locked(path, LockAccess::kWrite).is_ok());
  }
}

TEST_CASE("locking=off takes and tests nothing") {
  qt::TempDir dir;
  const std::string path = dir.file("d.img");
  qt::write_whole_file(path, std::vector<uint8_t>(4096, 1));
  auto w = open_locked(path, LockAccess::kWrite);
  REQUIRE(w.is_ok());
  lock_hooks::ofd_calls = 0;
  auto off = open_locked(path, LockAccess::kWrite, Locking::kOff);
  CHECK(off.is_ok());
  CHECK(lock_hooks::ofd_calls == 0);
  // The unlocked open did not take or drop anything of the locked one.
  CHECK(held_bytes(path) == "100 101 103 201 203");
}

TEST_CASE("without OFD locks: auto goes on unlocked and says so, on refuses") {
  qt::TempDir dir;
  const std::string path = dir.file("e.img");
  qt::write_whole_file(path, std::vector<uint8_t>(4096, 1));
  lock_hooks::Disarm disarm;
  for (int err : {ENOLCK, EINVAL, EOPNOTSUPP}) {
    CAPTURE(err);
    lock_hooks::refuse_ofd = err;
    std::vector<std::string> said;
    qed::LockSettings s = settings(Locking::kAuto);
    s.on_unlocked = [&](const std::string &why) { said.push_back(why); };
    auto a = qed::open_posix_file(path, OpenMode::kReadWrite, LockAccess::kWrite, s);
    CHECK(a.is_ok());
    REQUIRE(said.size() == 1);
    CHECK(said[0].rfind(path + ": the file system does not support OFD locks", 0) == 0);
    CHECK(said[0].find("without locks") != std::string::npos);

    auto on = open_locked(path, LockAccess::kRead, Locking::kOn);
    REQUIRE(!on.is_ok());
    INFO(on.status().message());
    CHECK(on.status().code() == qed::Status::Code::kNotSupported);
    CHECK(on.status().message().rfind(path + ": the file system does not support OFD locks", 0) ==
          0);
    CHECK(on.status().message().find("locking=off opens it without locks") != std::string::npos);
  }
  // Any other failure is an error, whatever the policy.
  lock_hooks::refuse_ofd = EIO;
  auto e = open_locked(path, LockAccess::kRead, Locking::kAuto);
  REQUIRE(!e.is_ok());
  CHECK(e.status().errno_value() == EIO);
}

TEST_CASE("the engine locks the image before reading it, and its backing file as a reader") {
  qt::TempDir dir;
  const std::string base = dir.file("base.raw");
  const std::string top = dir.file("top.qed");
  qt::write_whole_file(base, std::vector<uint8_t>(1 << 20, 7));
  qt::make_image(top, 0, 65536, 4, "base.raw", "raw");
  {
    auto rw = qt::open_path(top, qt::rw_options());
    CHECK(held_bytes(top) == "100 101 103 201 203");
    CHECK(held_bytes(base) == "100 201 203");
    // Another open of either for writing is refused, naming the file.
    auto again = qed::Image::open(top, named(qed::OpenOptions{}));
    REQUIRE(!again.is_ok());
    check_refusal(again.status(), top, "shared \"write\"");
    auto b = open_locked(base, LockAccess::kWrite);
    REQUIRE(!b.is_ok());
    check_refusal(b.status(), base, "\"write\"");
    REQUIRE(rw->close().is_ok());
  }
  CHECK(held_bytes(top) == "");
  CHECK(held_bytes(base) == "");
  {
    // Read-only: a reader; as a writer when asked to (a server that will
    // reopen it read-write).
    auto ro = qt::open_path(top, qed::OpenOptions{});
    CHECK(held_bytes(top) == "100 201 203");
    qed::OpenOptions o;
    o.lock_as_writer = true;
    auto refused = qed::Image::open(top, o);
    CHECK(!refused.is_ok());
  }
  qed::OpenOptions o;
  o.lock_as_writer = true;
  auto w = qt::open_path(top, o);
  CHECK(w->read_only());
  CHECK(held_bytes(top) == "100 101 103 201 203");
}

TEST_CASE("grow and check repair write nothing to an image someone else holds") {
  qt::TempDir dir;
  const std::string path = dir.file("g.qed");
  qt::make_image(path, 1 << 20, 65536, 4);
  const auto before = qt::read_whole_file(path);
  QemuLike qemu_img(path, {100, 201, 203});  // qemu-img info, say
  qed::OpenOptions o = named(qt::rw_options());
  o.grow_to = 4 << 20;
  auto r = qed::Image::open(path, o);
  REQUIRE(!r.is_ok());
  check_refusal(r.status(), path, "\"write\"");
  CHECK(qt::read_whole_file(path) == before);
}

TEST_CASE("create_image with overwrite refuses a file in use and leaves it as it was") {
  qt::TempDir dir;
  const std::string path = dir.file("n.qed");
  qt::write_whole_file(path, std::vector<uint8_t>(4096, 9));
  qed::CreateOptions c;
  c.size = 1 << 20;
  c.overwrite = true;
  c.locking = settings();
  {
    QemuLike vm(path, {100, 101, 103, 201, 203});
    qed::Status s = qed::create_image(path, c);
    REQUIRE(!s.is_ok());
    check_refusal(s, path, "\"write\"");
    CHECK(qt::read_whole_file(path) == std::vector<uint8_t>(4096, 9));
  }
  {
    QemuLike info_u(path, {100});  // a reader that shares everything does not stop it
    REQUIRE(qed::create_image(path, c).is_ok());
  }
  // With locking=off the old behaviour: removed whoever holds it.
  QemuLike vm(path, {100, 101, 103, 201, 203});
  c.locking = settings(Locking::kOff);
  CHECK(qed::create_image(path, c).is_ok());
}
