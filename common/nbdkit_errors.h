// The only place where engine failures become nbdkit errors, for every front
// end (the plugin and the filter): both go through report() and guarded().
#pragma once

#include <exception>
#include <new>
#include <utility>

#include "lib/status.h"

namespace qed_nbdkit {

// Logs the message with nbdkit_error, sets the errno the client will see, and
// returns -1 (the value every data callback returns on failure).
int report(const qed::Status &status);

// The same for a filter's data callbacks, which hand the errno back through
// *err instead of nbdkit_set_error.
int report(const qed::Status &status, int *err);

// Runs `fn` (returning int) and turns any exception into an nbdkit error, so
// that no exception crosses the C ABI into nbdkit.
template <typename Fn>
int guarded(Fn &&fn) noexcept;
// The same, the errno going to *err (filters' data callbacks).
template <typename Fn>
int guarded(int *err, Fn &&fn) noexcept;

// Logs the internal error; sets the errno with nbdkit_set_error, or in *out
// when given. Returns -1.
int report_exception(const char *what, int err, int *out = nullptr) noexcept;

template <typename Fn>
int guarded(int *err, Fn &&fn) noexcept {
  try {
    return fn();
  } catch (const std::bad_alloc &) {
    return report_exception("out of memory", ENOMEM, err);
  } catch (const std::exception &e) {
    return report_exception(e.what(), EIO, err);
  } catch (...) {
    return report_exception("unknown exception", EIO, err);
  }
}

template <typename Fn>
int guarded(Fn &&fn) noexcept {
  return guarded(nullptr, std::forward<Fn>(fn));
}

}  // namespace qed_nbdkit
