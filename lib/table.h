// Reading and writing runs of table entries (L1 or L2): u64 little-endian
// offsets, entry i of a table at table_offset + 8 * i.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "lib/file.h"

namespace qed {

// L2 entry values with a special meaning.
inline constexpr uint64_t kEntryUnallocated = 0;
inline constexpr uint64_t kEntryZero = 1;

// Reads entries.size() entries of the table at `table_offset`.
Status read_table_entries(File &file, uint64_t table_offset, std::span<uint64_t> entries);

// Encodes `entries` as the bytes of a table run.
std::vector<uint8_t> encode_entries(std::span<const uint64_t> entries);

}  // namespace qed
