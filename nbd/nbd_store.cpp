#include "nbd/nbd_store.h"

#include <iterator>

#include "nbd/this_host.h"

namespace qed_nbd {

namespace {

const char *const kSchemes[] = {"nbd",       "nbds",       "nbd+unix", "nbds+unix",
                                "nbd+vsock", "nbds+vsock", "nbd+tcp"};

}  // namespace

qed::Status check_nbd_uri(const std::string &uri) {
  const size_t colon = uri.find(':');
  const std::string scheme = uri.substr(0, colon);
  bool known = false;
  for (const char *s : kSchemes)
    known = known || scheme == s;
  const char *accepted = "nbd://HOST[:PORT][/EXPORT], nbd+unix:///[EXPORT]?socket=PATH, their "
                         "nbds TLS forms, or nbd+vsock://CID[:PORT][/EXPORT]";
  if (colon == std::string::npos || !known)
    return qed::Status::not_supported(uri + ": protocol \"" + scheme +
                                      "\" is not supported; backing file URIs are " + accepted);
  if (uri.compare(colon, 3, "://") != 0)
    return qed::Status::not_supported(uri + ": QEMU's legacy nbd: syntax is not supported; "
                                      "write the URI as " + accepted);
  return qed::Status::ok();
}

qed::Result<std::string> NbdStore::identity(const std::string &uri) {
  QED_RETURN_IF_ERROR(check_nbd_uri(uri));
  return std::string("nbd ").append(uri);
}

qed::Result<std::unique_ptr<qed::File>> NbdStore::open(const std::string &uri,
                                                      const qed::BackingPlace &place) {
  QED_RETURN_IF_ERROR(check_nbd_uri(uri));
  NbdOptions options = options_;
  if (place.below_network && !allow_this_host_) {
    if (auto why = uri_reaches_this_host(uri))
      return qed::Status::not_supported(
          uri + ": refused: " + *why +
          "; a backing file named by an image on an NBD server must not reach this host" +
          options.allow_this_host_hint);
    options.refuse_this_host = true;
  }
  auto file = NbdFile::open(uri, options, budget_);
  if (!file)
    return file.status();
  return std::unique_ptr<qed::File>(std::move(*file));
}

}  // namespace qed_nbd
