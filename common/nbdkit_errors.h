// The only place where engine failures become nbdkit errors, for every front
// end (the plugin and the filter): both go through report() and guarded().
#pragma once

#include <exception>
#include <new>

#include "status.h"

namespace qed_nbdkit {

// Logs the message with nbdkit_error, sets the errno the client will see, and
// returns -1 (the value every data callback returns on failure).
int report(const qed::Status &status);

// Runs `fn` (returning int) and turns any exception into an nbdkit error, so
// that no exception crosses the C ABI into nbdkit.
template <typename Fn>
int guarded(Fn &&fn) noexcept;

int report_exception(const char *what, int err) noexcept;

template <typename Fn>
int guarded(Fn &&fn) noexcept {
  try {
    return fn();
  } catch (const std::bad_alloc &) {
    return report_exception("out of memory", ENOMEM);
  } catch (const std::exception &e) {
    return report_exception(e.what(), EIO);
  } catch (...) {
    return report_exception("unknown exception", EIO);
  }
}

}  // namespace qed_nbdkit
