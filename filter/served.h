// The one export every connection of this nbdkit process reads: a context of
// the filter's own into the layer below, and the Image on it.
//
// Why a context of our own: the `next` nbdkit hands a connection is valid
// only until that connection closes, and one client may open two connections
// in a row (NBD_OPT_INFO, then NBD_OPT_GO), so an Image built on it could not
// be shared and would be read again for every connection. nbdkit 1.32 lets a
// filter open contexts into the layer below by itself
// (nbdkit_next_context_open, on the backend that .after_fork receives or
// nbdkit_context_get_backend gives in .open, valid until .cleanup); opened
// "shared", a context belongs to no connection and may serve them all. So one
// read-only context and the Image on it serve every connection, and .cleanup
// closes both; connections open no context of their own into the plugin
// (.open does not call next).
//
// When: .after_fork tries first (the earliest point where the backend exists
// and the plugin below has run its own .after_fork), so a bad image is
// reported at start-up. A failure there does not stop nbdkit: under --run the
// command is already waiting on the socket, and nbdkit 1.32 would leave it
// hanging. Instead each connection's .open tries again until one succeeds, so
// a bad image refuses every client with its message, and a plugin that was
// not ready yet (a remote server still starting) is picked up later.
//
// Thread safety: mu_ (in served.cpp) guards the context and the state; once
// open they stay until close_served(), which runs in .cleanup after every
// connection has closed. Connections keep their own copy of the state. The
// Image and NextFile are thread-safe.
#pragma once

#include <memory>

#include "image.h"

struct nbdkit_backend;

namespace qed_filter {

struct Served {
  std::shared_ptr<qed::Image> image;
  bool multi_conn = false;  // what the layer below says
};

// Opens the export below `backend` and the image on it, unless they are open
// already, and returns them (image null after nbdkit_error on failure).
// `thread_model` is the one nbdkit chose for the whole stack (.get_ready).
Served open_served(nbdkit_backend *backend, int thread_model);
void close_served();

}  // namespace qed_filter
