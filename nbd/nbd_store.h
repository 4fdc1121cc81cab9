// The network store for the engine (lib/backing_store.h): opens backing
// files named by NBD URIs as NbdFiles.
//
// The URIs it takes are libnbd's (nbd_connect_uri(3)): nbd://, nbds://,
// nbd+unix://, nbds+unix://, nbd+vsock:// and nbds+vsock://, plus QEMU's
// nbd+tcp://, the same as nbd://. Anything else that is a URI by the
// engine's rule is refused with a message saying what is accepted: other
// protocols (http:, file:, json:) and QEMU's legacy "nbd:unix:PATH" and
// "nbd:HOST:PORT" forms.
//
// Thread safety: stateless apart from the options, which are constant.
#pragma once

#include <string>

#include "backing_store.h"
#include "nbd_file.h"

namespace qed_nbd {

// Ok if `uri` is an NBD URI this store opens, else why not.
qed::Status check_nbd_uri(const std::string &uri);

class NbdStore final : public qed::BackingStore {
public:
  explicit NbdStore(const NbdOptions &options) : options_(options) {}
  // The URI itself: a chain that names the same URI twice is a loop.
  qed::Result<std::string> identity(const std::string &uri) override;
  qed::Result<std::unique_ptr<qed::File>> open(const std::string &uri) override;

private:
  const NbdOptions options_;
};

}  // namespace qed_nbd
