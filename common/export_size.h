// What NBD can serve: export sizes are signed 64-bit on the wire and in
// nbdkit, while QED image sizes reach 2^64 - 512.
#pragma once

#include <cstdint>
#include <string>

#include "lib/image.h"

namespace qed_nbdkit {

inline qed::Status check_export_size(const qed::Image &image) {
  if (image.size() <= uint64_t(INT64_MAX))
    return qed::Status::ok();
  return qed::Status::not_supported(image.path() + ": the image is " +
                                    std::to_string(image.size()) +
                                    " bytes, larger than NBD can serve (" +
                                    std::to_string(INT64_MAX) + " bytes)");
}

}  // namespace qed_nbdkit
