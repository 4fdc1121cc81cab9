#include "lib/format.h"

#include <bit>

#include "lib/byte_order.h"

namespace qed {

Header decode_header(const HeaderBytes &b) {
  Header h;
  h.magic = load_le32(&b[0]);
  h.cluster_size = load_le32(&b[4]);
  h.table_size = load_le32(&b[8]);
  h.header_size = load_le32(&b[12]);
  h.features = load_le64(&b[16]);
  h.compat_features = load_le64(&b[24]);
  h.autoclear_features = load_le64(&b[32]);
  h.l1_table_offset = load_le64(&b[40]);
  h.image_size = load_le64(&b[48]);
  h.backing_filename_offset = load_le32(&b[56]);
  h.backing_filename_size = load_le32(&b[60]);
  return h;
}

HeaderBytes encode_header(const Header &h) {
  HeaderBytes b{};
  store_le32(&b[0], h.magic);
  store_le32(&b[4], h.cluster_size);
  store_le32(&b[8], h.table_size);
  store_le32(&b[12], h.header_size);
  store_le64(&b[16], h.features);
  store_le64(&b[24], h.compat_features);
  store_le64(&b[32], h.autoclear_features);
  store_le64(&b[40], h.l1_table_offset);
  store_le64(&b[48], h.image_size);
  store_le32(&b[56], h.backing_filename_offset);
  store_le32(&b[60], h.backing_filename_size);
  return b;
}

uint64_t max_image_size(uint32_t cluster_size, uint32_t table_size) {
  __extension__ typedef unsigned __int128 u128;
  const u128 entries = u128(table_size) * cluster_size / 8;
  const u128 max = entries * entries * cluster_size;
  const u128 cap = (u128(1) << 64) - 512;
  return uint64_t(max < cap ? max : cap);
}

bool is_valid_cluster_size(uint64_t cs) {
  return cs >= kMinClusterSize && cs <= kMaxClusterSize && std::has_single_bit(cs);
}

bool is_valid_table_size(uint64_t ts) {
  return ts >= kMinTableSize && ts <= kMaxTableSize && std::has_single_bit(ts);
}

namespace {

std::string hex(uint64_t v) {
  char buf[32];
  snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

Status check_l1_offset(const Header &h, uint64_t file_size) {
  const uint64_t cs = h.cluster_size;
  const uint64_t off = h.l1_table_offset;
  const uint64_t table_bytes = uint64_t(h.table_size) * cs;
  if (off % cs != 0)
    return Status::corruption("L1 table offset " + std::to_string(off) +
                              " is not a multiple of the cluster size");
  if (off < uint64_t(h.header_size) * cs)
    return Status::corruption("L1 table offset " + std::to_string(off) +
                              " lies inside the header");
  if (off > file_size || table_bytes > file_size - off)
    return Status::corruption("L1 table at offset " + std::to_string(off) + " (" +
                              std::to_string(table_bytes) +
                              " bytes) does not fit in the file (" +
                              std::to_string(file_size) + " bytes): file truncated?");
  return Status::ok();
}

Status check_backing_name(const Header &h) {
  if (!h.has_backing_file())
    return Status::ok();
  const uint64_t header_bytes = uint64_t(h.header_size) * h.cluster_size;
  const uint64_t off = h.backing_filename_offset;
  const uint64_t len = h.backing_filename_size;
  if (len == 0)
    return Status::corruption("backing file name is empty");
  if (len > kMaxBackingNameBytes)
    return Status::corruption("backing file name is too long (" + std::to_string(len) +
                              " bytes, the limit is " +
                              std::to_string(kMaxBackingNameBytes) + ")");
  const std::string name = "backing file name (bytes " + std::to_string(off) + " to " +
                           std::to_string(off + len) + ")";
  if (off < kHeaderBytes)
    return Status::corruption(name + " overlaps the " + std::to_string(kHeaderBytes) +
                              "-byte header; it must start at byte " +
                              std::to_string(kHeaderBytes) + " or later");
  if (off + len > header_bytes)
    return Status::corruption(name + " ends past the header clusters (" +
                              std::to_string(header_bytes) + " bytes, header size " +
                              std::to_string(h.header_size) + ")");
  return Status::ok();
}

}  // namespace

Status validate_header(const Header &h, uint64_t file_size) {
  if (h.magic != kMagic)
    return Status::corruption("not a QED image (bad magic " + hex(h.magic) + ")");
  if (uint64_t unknown = h.features & ~kKnownFeatures)
    return Status::not_supported("unsupported QED feature bits " + hex(unknown));
  if (!is_valid_cluster_size(h.cluster_size))
    return Status::corruption("cluster size " + std::to_string(h.cluster_size) +
                              " is not a power of two between 4096 and 67108864");
  if (!is_valid_table_size(h.table_size))
    return Status::corruption("table size " + std::to_string(h.table_size) +
                              " is not a power of two between 1 and 16");
  if (h.header_size == 0)
    return Status::corruption("header size is 0 clusters; it must be at least 1 (the header "
                              "lives in cluster 0)");
  if (uint64_t(h.header_size) * h.cluster_size > file_size)
    return Status::corruption("header size of " + std::to_string(h.header_size) +
                              " clusters is larger than the file");
  if (h.image_size % 512 != 0)
    return Status::corruption("image size " + std::to_string(h.image_size) +
                              " is not a multiple of 512");
  const uint64_t max = max_image_size(h.cluster_size, h.table_size);
  if (h.image_size > max)
    return Status::corruption("image size " + std::to_string(h.image_size) +
                              " exceeds the maximum of " + std::to_string(max) +
                              " bytes for this cluster and table size");
  QED_RETURN_IF_ERROR(check_l1_offset(h, file_size));
  return check_backing_name(h);
}

}  // namespace qed
