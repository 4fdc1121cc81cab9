// libFuzzer target: address translation over arbitrary tables. The input
// chooses a small geometry and supplies the L1 table and the rest of the file
// (L2 tables, data); the image is opened read-only and read end to end, then
// read-write and written to.
#include <cstring>

#include "endian.h"
#include "fuzz_image.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 4)
    return 0;
  qed::Header h;
  h.cluster_size = 4096u << (data[0] % 3);  // 4K, 8K, 16K
  h.table_size = 1u << (data[1] % 5);       // 1..16
  h.header_size = 1;
  h.l1_table_offset = h.cluster_size;
  const uint64_t max = qed::max_image_size(h.cluster_size, h.table_size);
  h.image_size = std::min<uint64_t>(max, uint64_t(1 + data[2]) << 20);
  h.features = data[3] & qed::kFeatureNeedCheck;
  const uint64_t table_bytes = uint64_t(h.table_size) * h.cluster_size;
  // Header, the L1 table, then the input again as the rest of the file.
  std::vector<uint8_t> file(h.cluster_size + table_bytes + (size - 4));
  const qed::HeaderBytes hb = qed::encode_header(h);
  std::memcpy(file.data(), hb.data(), hb.size());
  // L1 entries from the input, nudged towards plausible table offsets.
  for (size_t i = 0; i + 4 <= size - 4 && i / 4 < table_bytes / 8; i += 4) {
    const uint64_t raw = qed::load_le32(data + 4 + i);
    const uint64_t entry = (raw & 1) ? raw : (raw >> 1) * h.cluster_size % (file.size() + 1);
    qed::store_le64(&file[h.cluster_size + i / 4 * 8], entry);
  }
  std::memcpy(file.data() + h.cluster_size + table_bytes, data + 4, size - 4);
  if (auto ro = fuzz::open_memory(file, true))
    fuzz::exercise_read(*ro);
  if (auto rw = fuzz::open_memory(file, false)) {
    fuzz::exercise_read(*rw);
    fuzz::exercise_write(*rw, data[0] * 131 + size);
    fuzz::exercise_read(*rw);
  }
  return 0;
}
