#include "nbd/this_host.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <linux/vm_sockets.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cctype>
#include <cstring>
#include <memory>

namespace qed_nbd {

namespace {

// Whether `addr` (4 or 16 bytes, network order) is one of this host's
// interface addresses.
bool is_interface_address(int family, const void *addr) {
  ifaddrs *list = nullptr;
  if (::getifaddrs(&list) != 0)
    return false;
  std::unique_ptr<ifaddrs, decltype(&::freeifaddrs)> owner(list, ::freeifaddrs);
  for (const ifaddrs *i = list; i; i = i->ifa_next) {
    if (!i->ifa_addr || i->ifa_addr->sa_family != family)
      continue;
    if (family == AF_INET &&
        std::memcmp(&reinterpret_cast<const sockaddr_in *>(i->ifa_addr)->sin_addr, addr, 4) == 0)
      return true;
    if (family == AF_INET6 &&
        std::memcmp(&reinterpret_cast<const sockaddr_in6 *>(i->ifa_addr)->sin6_addr, addr,
                    16) == 0)
      return true;
  }
  return false;
}

std::string text_of(int family, const void *addr) {
  char buf[INET6_ADDRSTRLEN] = "?";
  ::inet_ntop(family, addr, buf, sizeof buf);
  return buf;
}

// Why the IPv4 address `a` (network order) is this host, or nothing.
std::optional<std::string> ipv4_is_this_host(in_addr a) {
  const uint32_t host = ntohl(a.s_addr);
  if (host >> 24 == 127)
    return "the loopback address " + text_of(AF_INET, &a);
  if (host >> 24 == 0)  // 0.0.0.0 and its network: Linux connects them to this host
    return "the address " + text_of(AF_INET, &a) + ", which is this host";
  if (is_interface_address(AF_INET, &a))
    return "the address " + text_of(AF_INET, &a) + " of this host";
  return std::nullopt;
}

std::optional<std::string> ipv6_is_this_host(const in6_addr &a) {
  if (IN6_IS_ADDR_LOOPBACK(&a))
    return "the loopback address ::1";
  if (IN6_IS_ADDR_UNSPECIFIED(&a))
    return "the address ::, which is this host";
  // ::ffff:a.b.c.d and the deprecated ::a.b.c.d carry an IPv4 address.
  static const uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  static const uint8_t kCompatible[12] = {};
  if (std::memcmp(a.s6_addr, kMapped, 12) == 0 || std::memcmp(a.s6_addr, kCompatible, 12) == 0) {
    in_addr v4;
    std::memcpy(&v4.s_addr, a.s6_addr + 12, 4);
    if (auto why = ipv4_is_this_host(v4))
      return *why + " (as " + text_of(AF_INET6, &a) + ")";
  }
  if (is_interface_address(AF_INET6, &a))
    return "the address " + text_of(AF_INET6, &a) + " of this host";
  return std::nullopt;
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  c = char(std::tolower(static_cast<unsigned char>(c)));
  return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

// %XX decoded, as libxml2 decodes the host of a URI before libnbd uses it.
std::string percent_decoded(const std::string &s) {
  std::string out;
  for (size_t i = 0; i < s.size(); i++) {
    int hi, lo;
    if (s[i] == '%' && i + 2 < s.size() && (hi = hex_digit(s[i + 1])) >= 0 &&
        (lo = hex_digit(s[i + 2])) >= 0) {
      out += char(hi * 16 + lo);
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}

std::string lower(std::string s) {
  for (char &c : s)
    c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

bool ends_with(const std::string &s, const std::string &tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

std::optional<std::string> name_is_this_host(std::string name) {
  name = lower(name);
  if (!name.empty() && name.back() == '.')
    name.pop_back();
  static const char *const kLoopbackNames[] = {"localhost", "localhost.localdomain",
                                               "localhost6", "localhost6.localdomain6",
                                               "ip6-localhost", "ip6-loopback"};
  for (const char *n : kLoopbackNames)
    if (name == n)
      return "the name " + name + ", which is the loopback address";
  if (ends_with(name, ".localhost"))  // RFC 6761: always the loopback address
    return "the name " + name + ", which is the loopback address";
  char self[256] = {};
  if (::gethostname(self, sizeof self - 1) == 0 && self[0] && name == lower(self))
    return "the name " + name + ", which is this host's";
  return std::nullopt;
}

}  // namespace

std::optional<std::string> uri_reaches_this_host(const std::string &uri) {
  const size_t colon = uri.find(':');
  const std::string scheme = uri.substr(0, colon);
  if (ends_with(scheme, "+unix"))
    return std::string("a Unix socket, which is on this host");
  if (ends_with(scheme, "+vsock"))
    return std::string("a vsock address, which is this host or one of its virtual machines");
  // nbd://, nbds://, nbd+tcp://: [userinfo@]host[:port], up to the path.
  if (colon == std::string::npos || uri.compare(colon, 3, "://") != 0)
    return std::nullopt;  // not a URI check_nbd_uri accepts
  const size_t start = colon + 3;
  const std::string authority = uri.substr(start, uri.find_first_of("/?#", start) - start);
  const size_t at = authority.rfind('@');
  std::string host = authority.substr(at == std::string::npos ? 0 : at + 1);
  if (!host.empty() && host[0] == '[') {
    host = percent_decoded(host.substr(1, host.find(']') - 1));
    host = host.substr(0, host.find('%'));  // no zone (fe80::1%eth0)
  } else {
    host = percent_decoded(host.substr(0, host.rfind(':')));
  }
  if (host.empty())
    return std::string("no host, which libnbd takes as localhost");
  in_addr v4;
  if (::inet_aton(host.c_str(), &v4) != 0)
    return ipv4_is_this_host(v4);
  in6_addr v6;
  if (::inet_pton(AF_INET6, host.c_str(), &v6) == 1)
    return ipv6_is_this_host(v6);
  return name_is_this_host(host);
}

Peer socket_peer(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getpeername(fd, reinterpret_cast<sockaddr *>(&ss), &len) != 0)
    return Peer{Peer::Kind::kNotConnected, {}};
  std::optional<std::string> why;
  std::string what;
  switch (ss.ss_family) {
  case AF_UNIX:
    return Peer{Peer::Kind::kThisHost, "a Unix socket"};
  case AF_VSOCK:
    return Peer{Peer::Kind::kThisHost,
                "vsock CID " +
                    std::to_string(reinterpret_cast<const sockaddr_vm *>(&ss)->svm_cid)};
  case AF_INET: {
    const in_addr a = reinterpret_cast<const sockaddr_in *>(&ss)->sin_addr;
    why = ipv4_is_this_host(a);
    what = text_of(AF_INET, &a);
    break;
  }
  case AF_INET6: {
    const in6_addr a = reinterpret_cast<const sockaddr_in6 *>(&ss)->sin6_addr;
    why = ipv6_is_this_host(a);
    what = text_of(AF_INET6, &a);
    break;
  }
  default:
    return Peer{Peer::Kind::kThisHost, "address family " + std::to_string(ss.ss_family)};
  }
  if (why)
    return Peer{Peer::Kind::kThisHost, *why};
  return Peer{Peer::Kind::kRemote, what};
}

}  // namespace qed_nbd
