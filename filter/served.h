// The one image every connection of this nbdkit process reads, and how each
// connection reaches the layer below.
//
// One Image for all: a client may open two connections in a row (NBD_OPT_INFO,
// then NBD_OPT_GO) and many clients read at once; one Image (one header
// check, one L1 table, one cache of L2 tables) serves them all, and the image
// is read once, not per connection.
//
// Each connection's own context below: each connection reads through the
// context nbdkit opened for it (.open calls next, read-only), as any filter
// does; NextFile finds it on the calling thread (next_file.h). The other way,
// a context of the filter's own opened "shared" in .after_fork, belongs to no
// connection, and nbdkit 1.32 plugins that ask for the client's export name
// in .open (nbd, sh, eval) then log "error: no connection in this thread" at
// every start, which users read as a failure.
//
// When: the first connection's .prepare opens the image through its context
// (nothing exists below before a connection). If that fails, the connection
// is refused with the reason and the next one tries again, so a bad image
// refuses each client with its message and a plugin whose server was not up
// yet is picked up later. Each later connection checks that its context has
// the size the image was opened with.
//
// Thread safety: mu (in served.cpp) guards the state; once open it stays until
// close_served(), which runs in .cleanup after every connection has closed.
// Connections keep their own copy. The Image and NextFile are thread-safe.
#pragma once

#include <memory>

#include "lib/image.h"

struct nbdkit_next_ops;

namespace qed_filter {

struct Served {
  std::shared_ptr<qed::Image> image;
  bool multi_conn = false;  // what this connection's context below says
};

// The image, opened through `next` (this connection's prepared context) if
// it is not open yet; image null after nbdkit_error on failure.
Served open_served(nbdkit_next_ops *next);
void close_served();

}  // namespace qed_filter
