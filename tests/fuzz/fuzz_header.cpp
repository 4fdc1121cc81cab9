// libFuzzer target: header decoding and validation on arbitrary bytes.
// Validation must never crash, and every header it accepts must survive an
// encode/decode round trip and give a sane geometry.
#include <cstdlib>
#include <cstring>

#include "lib/byte_order.h"
#include "lib/format.h"
#include "lib/geometry.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < qed::kHeaderBytes + 8)
    return 0;
  qed::HeaderBytes bytes;
  std::memcpy(bytes.data(), data, bytes.size());
  const uint64_t file_size = qed::load_le64(data + qed::kHeaderBytes);
  const qed::Header h = qed::decode_header(bytes);
  if (qed::encode_header(h) != bytes)
    std::abort();
  if (!qed::validate_header(h, file_size).is_ok())
    return 0;
  const qed::Geometry geo(h);
  if (geo.l1_entries_used() > geo.table_entries() || geo.table_bytes() > file_size)
    std::abort();
  // Translation of the last byte of the image stays inside the tables.
  if (h.image_size > 0) {
    const uint64_t last = h.image_size - 1;
    if (geo.l1_index(last) >= geo.l1_entries_used() ||
        geo.l2_index(last) >= geo.l2_entries_used(geo.l1_index(last)))
      std::abort();
  }
  return 0;
}
