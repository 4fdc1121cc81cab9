// Values that keys of both front ends take, parsed the same way: nbdkit's
// parsers, with our errors (naming the key) on top.
#pragma once

#include <cstdint>

namespace qed_nbdkit {

// A size (nbdkit_parse_size: "64M", "1G"...) of zero or more bytes. Returns
// 0, or -1 after nbdkit_error naming `key`.
int parse_size(const char *key, const char *value, uint64_t &out);

// A boolean (nbdkit_parse_bool: true, on, 1...). Returns 0, or -1 after
// nbdkit_parse_bool's error.
int parse_bool(const char *value, bool &out);

}  // namespace qed_nbdkit
