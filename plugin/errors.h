// The plugin reports engine failures through the code it shares with the
// filter (common/nbdkit_errors.h).
#pragma once

#include "nbdkit_errors.h"

namespace qed_plugin {

using qed_nbdkit::guarded;
using qed_nbdkit::report;

}  // namespace qed_plugin
