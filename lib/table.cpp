#include "lib/table.h"

#include <cstring>

#include "lib/byte_order.h"

namespace qed {

Status read_table_entries(File &file, uint64_t table_offset, std::span<uint64_t> entries) {
  if (entries.empty())
    return Status::ok();  // an image of size 0 has no L1 entries in use
  // Read straight into the entries and decode in place: no second buffer.
  QED_RETURN_IF_ERROR(file.pread(entries.data(), entries.size() * 8, table_offset));
  for (uint64_t &e : entries) {
    uint8_t bytes[8];
    std::memcpy(bytes, &e, 8);
    e = load_le64(bytes);
  }
  return Status::ok();
}

std::vector<uint8_t> encode_entries(std::span<const uint64_t> entries) {
  std::vector<uint8_t> bytes(entries.size() * 8);
  for (size_t i = 0; i < entries.size(); i++)
    store_le64(&bytes[i * 8], entries[i]);
  return bytes;
}

}  // namespace qed
