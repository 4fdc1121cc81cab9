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
// One store opens the backing files of one chain (the front ends make one per
// open image), and bounds the chain as a whole: its NbdFiles share one
// budget of options.connections connections (connection_budget.h), so a
// chain holds at most that many connections and that many NBD files.
//
// Below an image that is itself on an NBD server (BackingPlace), a URI that
// reaches this host is refused (this_host.h), unless the store was made with
// allow_this_host: before connecting by what the URI says, and on every
// connection by the address it reached.
//
// Thread safety: the options are constant; the budget is thread-safe.
#pragma once

#include <memory>
#include <string>

#include "lib/backing_store.h"
#include "nbd/connection_budget.h"
#include "nbd/nbd_file.h"

namespace qed_nbd {

// Ok if `uri` is an NBD URI this store opens, else why not.
qed::Status check_nbd_uri(const std::string &uri);

class NbdStore final : public qed::BackingStore {
public:
  explicit NbdStore(const NbdOptions &options, bool allow_this_host = false)
      : options_(options),
        allow_this_host_(allow_this_host),
        budget_(std::make_shared<ConnectionBudget>(options.connections)) {}
  // The URI itself: a chain that names the same URI twice is a loop.
  qed::Result<std::string> identity(const std::string &uri) override;
  qed::Result<std::unique_ptr<qed::File>> open(const std::string &uri,
                                               const qed::BackingPlace &place) override;

private:
  const NbdOptions options_;
  const bool allow_this_host_;
  const std::shared_ptr<ConnectionBudget> budget_;
};

}  // namespace qed_nbd
