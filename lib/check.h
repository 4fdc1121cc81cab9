// The consistency check and repair of a QED image.
//
// Invariants checked (see docs/qed-format.md): every L1 and L2 entry
// is 0, 1 (L2 only) or a cluster-aligned offset past the header whose cluster
// or table lies inside the file; no cluster is referenced twice (by the
// header, the L1 table, an L2 table or an L2 entry); and clusters nothing
// references are leaks.
//
// Repair, in an order that is itself crash safe:
//   1. a duplicate data reference gets a private copy of the cluster, appended
//      at the end of the file (a reference into metadata is cleared instead);
//   2. sync, then invalid entries are cleared and copied entries re-pointed;
//   3. sync, then leaked space is given back: the tail of the file is cut off
//      and leaked clusters inside the file become holes.
// NEED_CHECK is cleared by the caller only when nothing is left unrepaired.
//
// Memory: two bits per cluster of the file, and one table chunk at a time.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "lib/file.h"
#include "lib/format.h"

namespace qed {

enum class CheckMode { kReport, kRepair };

struct CheckReport {
  uint64_t file_clusters = 0;       // clusters the file spans
  uint64_t l2_tables = 0;           // valid L2 tables walked
  uint64_t data_clusters = 0;       // valid, unique data references
  uint64_t zero_clusters = 0;       // L2 entries of 1
  uint64_t invalid_entries = 0;     // misaligned, or inside the header
  uint64_t interrupted_entries = 0; // a cluster or table past the end of the file
  uint64_t duplicate_refs = 0;      // references to a cluster already in use
  uint64_t leaked_clusters = 0;
  uint64_t repaired = 0;            // problems fixed (entries, duplicates, leaks)
  uint64_t reclaimed_bytes = 0;     // truncated or punched
  // One line per problem found, with the fix: the first 20, then one line
  // counting the rest (the counts above are always exact).
  std::vector<std::string> problems;

  // True when nothing was found but what a crash normally leaves: leaks, and
  // entries pointing past the end of the file (they read as unallocated).
  bool consistent() const { return invalid_entries == 0 && duplicate_refs == 0; }
  // True when nothing but leaks was found.
  bool clean() const { return consistent() && interrupted_entries == 0; }
  // One-line summary.
  std::string summary() const;
};

// Checks the image in `file` whose validated header is `header`. With kRepair
// the problems are fixed in place. The returned status fails only on I/O
// errors; corruption is reported in the CheckReport.
Result<CheckReport> check_image(File &file, const Header &header, CheckMode mode);

}  // namespace qed
