#include "tests/syscall/reach.h"

#include <cstring>

#include "lib/byte_order.h"
#include "tests/support/crash_model.h"
#include "lib/format.h"
#include "lib/geometry.h"
#include "lib/table.h"

namespace qsys {

std::string entry_past_end(const std::vector<uint8_t> &file) {
  if (file.size() < qed::kHeaderBytes)
    return {};
  qed::HeaderBytes hb;
  std::memcpy(hb.data(), file.data(), hb.size());
  const qed::Header h = qed::decode_header(hb);
  if (!qed::validate_header(h, file.size()).is_ok())
    return {};
  const qed::Geometry g(h);
  const uint64_t size = file.size(), cs = g.cluster_size(), tb = g.table_bytes();
  auto entry = [&](uint64_t at) { return at + 8 <= size ? qed::load_le64(&file[at]) : 0; };
  for (uint64_t i = 0; i < g.l1_entries_used(); i++) {
    const uint64_t t = entry(h.l1_table_offset + 8 * i);
    if (t == 0 || !g.is_cluster_aligned(t))
      continue;
    if (t > size || tb > size - t)
      return "L1 entry " + std::to_string(i) + " names the L2 table at " + std::to_string(t) +
             ", which ends past the end of the file (" + std::to_string(size) + " bytes)";
    for (uint64_t j = 0; j < g.l2_entries_used(i); j++) {
      const uint64_t e = entry(t + 8 * j);
      if (e <= qed::kEntryZero || !g.is_cluster_aligned(e) || (e <= size && cs <= size - e))
        continue;
      return "the L2 entry for virtual offset " + std::to_string(g.l2_span_start(i) + j * cs) +
             " (table at " + std::to_string(t) + ") names the cluster at " + std::to_string(e) +
             ", which ends at " + std::to_string(e + cs) + ", past the end of the file (" +
             std::to_string(size) + " bytes)";
    }
  }
  return {};
}

std::string entry_past_end_in_log(const std::vector<uint8_t> &initial,
                                  const std::vector<Op> &ops) {
  std::vector<uint8_t> file = initial;
  const crash::Log effects = effects_of(ops);
  for (size_t k = 0; k < ops.size(); k++) {
    const Op &op = ops[k];
    if (!op.ok() || !op.matters() || op.kind == QSYS_SYNC)
      continue;
    crash::CrashStates::apply(file, effects[k]);
    if (std::string bad = entry_past_end(file); !bad.empty())
      return "after call " + std::to_string(k) + " of " + std::to_string(ops.size()) + " (" +
             op.describe() + "): " + bad;
  }
  return {};
}

}  // namespace qsys
