// The cache budgets of an opened chain, written to nbdkit's log when an
// image's budget is above what the user gave (a cache-size below what the
// image needs at least; see minimum_cache_bytes() in lib/metadata.h).
#pragma once

#include "lib/image.h"

namespace qed_nbdkit {

// One line per image of the chain served with more than `key` (the front
// end's name for the cache size: cache-size or qed-cache-size) said. A line
// already logged (the plugin opens the image again for its first writer) is
// not repeated.
void log_cache_budgets(const qed::Image &image, const char *key);

}  // namespace qed_nbdkit
