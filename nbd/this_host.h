// Whether an NBD URI, or a connected socket, reaches this host: a backing
// file named by an image on an NBD server must not, or a remote image could
// make the plugin read private exports of this machine (a Unix socket of
// another service, a port bound to the loopback address) and show them to the
// overlay's clients.
//
// Two checks, because a URI's host name says nothing certain:
//   - before connecting, the URI: Unix sockets and vsock (this host, or one
//     of its virtual machines), no host at all (libnbd then connects to
//     localhost), names for the loopback address (localhost, *.localhost,
//     localhost.localdomain, ip6-localhost, ip6-loopback, localhost6, this
//     host's own name), and addresses that are this host's: 127.0.0.0/8 and
//     0.0.0.0/8 in every form inet_aton(3) reads ("127.1", "2130706433",
//     "0x7f.1"), ::1, ::, IPv4-mapped and -compatible forms of those, and
//     the addresses of this host's interfaces. Names are not resolved here.
//   - after connecting, the peer address of the socket (so a name that
//     resolves to this host, now or after a DNS change, is caught): refused
//     by the same address rules, before any data is read.
//
// Thread safety: free functions without state.
#pragma once

#include <optional>
#include <string>

namespace qed_nbd {

// Why `uri` (one check_nbd_uri accepts) reaches this host, or nothing if
// nothing in it says so.
std::optional<std::string> uri_reaches_this_host(const std::string &uri);

// Where the socket `fd` is connected to.
struct Peer {
  enum class Kind {
    kNotConnected,  // not yet (or getpeername failed): ask again later
    kRemote,
    kThisHost,
  } kind;
  std::string what;  // the address, for messages
};
Peer socket_peer(int fd);

}  // namespace qed_nbd
