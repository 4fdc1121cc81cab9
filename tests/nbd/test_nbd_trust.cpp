// What a remote image may make libqed-nbd do: below an image on an NBD
// server, names and connections that reach this host are refused
// (this_host.h, NbdStore); one chain's files share one connection budget
// (connection_budget.h), so a deep chain cannot multiply connections.
#include <doctest/doctest.h>

#include <ifaddrs.h>

#include <algorithm>
#include <atomic>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "nbd/nbd_store.h"
#include "tests/nbd/nbd_test_util.h"
#include "nbd/this_host.h"

using qed::Status;
using qed_nbd::NbdFile;
using qed_nbd::NbdOptions;
using qed_nbd::NbdStore;
using qed_nbd::Peer;
using namespace nbd_test;

namespace {

const qed::BackingPlace kBelowNetwork{true};

// An IPv4 address of one of this host's interfaces other than loopback, if
// it has one.
std::optional<std::string> interface_address() {
  ifaddrs *list = nullptr;
  if (::getifaddrs(&list) != 0)
    return std::nullopt;
  std::optional<std::string> found;
  for (const ifaddrs *i = list; i && !found; i = i->ifa_next) {
    if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET)
      continue;
    const in_addr a = reinterpret_cast<const sockaddr_in *>(i->ifa_addr)->sin_addr;
    if (ntohl(a.s_addr) >> 24 == 127)
      continue;
    char buf[INET_ADDRSTRLEN];
    found = ::inet_ntop(AF_INET, &a, buf, sizeof buf);
  }
  ::freeifaddrs(list);
  return found;
}

// A listening TCP socket on `address`, port chosen by the kernel.
struct Listener {
  explicit Listener(const char *address) {
    fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    REQUIRE(::inet_pton(AF_INET, address, &addr.sin_addr) == 1);
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr *>(&addr), sizeof addr) == 0);
    REQUIRE(::listen(fd, 4) == 0);
    socklen_t len = sizeof addr;
    REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr *>(&addr), &len) == 0);
    port = ntohs(addr.sin_port);
  }
  ~Listener() { ::close(fd); }
  // A socket connected to `address` at this listener's port.
  int connect_to(const char *address) const {
    const int c = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(uint16_t(port));
    ::inet_pton(AF_INET, address, &addr.sin_addr);
    REQUIRE(::connect(c, reinterpret_cast<sockaddr *>(&addr), sizeof addr) == 0);
    return c;
  }
  int fd = -1;
  int port = 0;
};

}  // namespace

TEST_SUITE_BEGIN("nbd");

TEST_CASE("URIs that reach this host, in every spelling, and URIs that do not") {
  char self[256] = {};
  REQUIRE(::gethostname(self, sizeof self - 1) == 0);
  std::vector<std::string> local = {
      "nbd+unix:///?socket=/run/private.sock", "nbds+unix:///e?socket=/s", "nbd+vsock://1",
      "nbd+vsock://2:10809/e", "nbds+vsock://", "nbd:///", "nbd://", "nbd://:10809/e",
      "nbd://localhost", "nbd://LOCALHOST:10809/e", "nbd://localhost./", "nbd://a.b.localhost/",
      "nbd://localhost.localdomain/", "nbds://ip6-localhost/", "nbd://ip6-loopback",
      "nbd+tcp://localhost:10809/e", "nbd://127.0.0.1", "nbd://127.1:10809", "nbd://127.255.1.2",
      "nbd://2130706433", "nbd://0x7f000001/", "nbd://0177.0.0.1/", "nbd://0x7f.1/",
      "nbd://0.0.0.0", "nbd://0", "nbd://[::1]:10809/x", "nbd://[::]/",
      "nbd://[0:0:0:0:0:0:0:1]", "nbd://[::ffff:127.0.0.1]/", "nbd://[::ffff:7f00:1]/",
      "nbd://[::127.0.0.1]/", "nbd://[::1%25lo]/", "nbd://[%3a%3a1]/", "nbd://%31%32%37.0.0.1/",
      "nbd://%6c%6fcalhost/", "nbd://user@127.0.0.1/", "nbd://x@y@localhost/",
      "nbd://" + std::string(self) + ":10809/"};
  if (auto a = interface_address())
    local.push_back("nbd://" + *a + ":10809/e");
  for (const std::string &uri : local) {
    CAPTURE(uri);
    CHECK(qed_nbd::uri_reaches_this_host(uri));
  }
  for (const char *uri : {"nbd://example.com/e", "nbds://images.example.com:10810/golden",
                          "nbd://203.0.113.9:10809/", "nbd://[2001:db8::1]/", "nbd://128.0.0.1",
                          "nbd://1.0.0.127", "nbd://localhostx/", "nbd://localhost.example/",
                          "nbd://127.0.0.1.example.com/", "nbd+tcp://198.51.100.7/e"}) {
    CAPTURE(uri);
    CHECK(!qed_nbd::uri_reaches_this_host(uri));
  }
  CHECK(qed_nbd::uri_reaches_this_host("nbd+unix:///?socket=/s")->find("Unix socket") !=
        std::string::npos);
  CHECK(qed_nbd::uri_reaches_this_host("nbd://127.1/")->find("loopback address 127.0.0.1") !=
        std::string::npos);
}

TEST_CASE("the peer of a connected socket: loopback, this host's addresses, Unix sockets") {
  const int unconnected = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  CHECK(qed_nbd::socket_peer(unconnected).kind == Peer::Kind::kNotConnected);
  ::close(unconnected);
  int pair[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, pair) == 0);
  CHECK(qed_nbd::socket_peer(pair[0]).kind == Peer::Kind::kThisHost);
  ::close(pair[0]);
  ::close(pair[1]);
  {
    Listener l("127.0.0.1");
    const int c = l.connect_to("127.0.0.1");
    const Peer p = qed_nbd::socket_peer(c);
    CHECK(p.kind == Peer::Kind::kThisHost);
    CHECK(p.what.find("127.0.0.1") != std::string::npos);
    ::close(c);
  }
  if (auto a = interface_address()) {
    CAPTURE(*a);
    Listener l(a->c_str());
    const int c = l.connect_to(a->c_str());
    const Peer p = qed_nbd::socket_peer(c);
    CHECK(p.kind == Peer::Kind::kThisHost);
    CHECK(p.what.find(*a + " of this host") != std::string::npos);
    ::close(c);
  }
}

TEST_CASE("below a network image, exports on this host are refused unless allowed") {
  if (!have_nbdkit())
    return;
  TempDir dir;
  write_file(dir.file("private.raw"), pattern(MiB, 9));
  Server unix_server(dir, "private", {"-r", "file", dir.file("private.raw")});
  Server tcp_server(dir, "tcp", {"-r", "file", dir.file("private.raw")}, Server::Transport::kTcp);
  NbdOptions o = quick_options();
  o.allow_this_host_hint = " (say KEY=true)";
  NbdStore store(o);
  for (const std::string &uri : {unix_server.uri(), tcp_server.uri()}) {
    CAPTURE(uri);
    // Named by the user (the top image): opened.
    auto top = store.open(uri, qed::BackingPlace{});
    INFO(top.status().message());
    REQUIRE(top.is_ok());
    top->reset();
    // Named by a remote image: refused before connecting, saying why and how.
    auto below = store.open(uri, kBelowNetwork);
    REQUIRE(!below.is_ok());
    INFO(below.status().message());
    CHECK(below.status().message().rfind(uri + ": refused: ", 0) == 0);
    CHECK(contains(below.status().message(), "must not reach this host (say KEY=true)"));
  }
  // The same name allowed.
  NbdStore trusting(o, true);
  auto allowed = trusting.open(unix_server.uri(), kBelowNetwork);
  INFO(allowed.status().message());
  CHECK(allowed.is_ok());
  allowed->reset();

  SUBCASE("a name the URI check cannot see through: the connection's peer is refused") {
    // As for a host name that resolves to this host: nothing in the URI says
    // so, the address the connection reached does.
    NbdOptions checked = o;
    checked.refuse_this_host = true;
    auto f = NbdFile::open(tcp_server.uri(), checked);
    REQUIRE(!f.is_ok());
    INFO(f.status().message());
    CHECK(f.status().message().rfind(tcp_server.uri() + ": refused: the server is on this host "
                                                        "(the loopback address 127.0.0.1)",
                                     0) == 0);
    CHECK(contains(f.status().message(), "(say KEY=true)"));
    // libnbd itself refuses Unix sockets then.
    auto u = NbdFile::open(unix_server.uri(), checked);
    REQUIRE(!u.is_ok());
    INFO(u.status().message());
    CHECK(contains(u.status().message(), "not permitted"));
  }
}

TEST_CASE("one chain's NBD files share one connection budget") {
  if (!have_nbdkit())
    return;
  TempDir dir;
  const auto data = pattern(4 * MiB, 10);
  write_file(dir.file("base.raw"), data);
  // Replies are delayed so that parallel reads overlap.
  Server server(dir, "base", {"-r", "--filter=delay", "file", dir.file("base.raw"),
                              "delay-read=2ms"});
  NbdOptions o = quick_options();
  o.connections = 3;
  o.connections_hint = "; KEY=3";
  NbdStore store(o);
  // nbdkit serves the same disk under every export name: distinct URIs, as a
  // hostile server's distinct exports would be.
  const std::string socket = dir.file("base.sock");
  auto open_file = [&](int i) {
    return store.open("nbd+unix:///e" + std::to_string(i) + "?socket=" + socket,
                      qed::BackingPlace{});
  };
  auto a = open_file(1);
  auto b = open_file(2);
  auto c = open_file(3);
  INFO(a.status().message());
  REQUIRE(a.is_ok());
  REQUIRE(b.is_ok());
  REQUIRE(c.is_ok());
  // A fourth file would need a fourth connection.
  auto d = open_file(4);
  REQUIRE(!d.is_ok());
  INFO(d.status().message());
  CHECK(contains(d.status().message(), "refused: the backing chain already holds 3 NBD backing "
                                       "files"));
  CHECK(contains(d.status().message(), "(one each; KEY=3)"));
  c->reset();  // its connection goes back
  auto e = open_file(5);
  INFO(e.status().message());
  REQUIRE(e.is_ok());
  e->reset();
  b->reset();
  // Parallel reads on two files: never more than 3 connections between them.
  auto *fa = static_cast<NbdFile *>(a->get());
  auto f2 = open_file(6);
  REQUIRE(f2.is_ok());
  auto *fb = static_cast<NbdFile *>(f2->get());
  std::atomic<int> bad{0};
  std::atomic<unsigned> most{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; t++)
    threads.emplace_back([&, t] {
      NbdFile &f = t % 2 ? *fa : *fb;
      std::vector<uint8_t> buf(65536);
      for (int i = 0; i < 30; i++) {
        const uint64_t off = (uint64_t(t) * 7 + uint64_t(i) * 13) % 60 * 65536;
        if (!f.pread(buf.data(), buf.size(), off).is_ok() ||
            !std::equal(buf.begin(), buf.end(), data.begin() + int64_t(off)))
          bad++;
        const unsigned now = fa->open_connections() + fb->open_connections();
        for (unsigned m = most; now > m && !most.compare_exchange_weak(m, now);)
          ;
      }
    });
  for (auto &th : threads)
    th.join();
  CHECK(bad == 0);
  MESSAGE("two files, budget 3: at most " << most.load() << " connections at once");
  CHECK(most <= 3);
  CHECK(most >= 2);
}

TEST_SUITE_END();
