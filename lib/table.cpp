#include "table.h"

#include "endian.h"

namespace qed {

Status read_table_entries(File &file, uint64_t table_offset, std::span<uint64_t> entries) {
  std::vector<uint8_t> bytes(entries.size() * 8);
  QED_RETURN_IF_ERROR(file.pread(bytes.data(), bytes.size(), table_offset));
  for (size_t i = 0; i < entries.size(); i++)
    entries[i] = load_le64(&bytes[i * 8]);
  return Status::ok();
}

std::vector<uint8_t> encode_entries(std::span<const uint64_t> entries) {
  std::vector<uint8_t> bytes(entries.size() * 8);
  for (size_t i = 0; i < entries.size(); i++)
    store_le64(&bytes[i * 8], entries[i]);
  return bytes;
}

}  // namespace qed
