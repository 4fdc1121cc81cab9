#include "lib/check.h"

#include <algorithm>
#include <string>

#include "lib/align.h"
#include "lib/byte_order.h"
#include "lib/geometry.h"
#include "lib/table.h"

namespace qed {

namespace {

// Tables are walked this many entries at a time, so that a hostile geometry
// (1 GiB tables) never needs a large buffer.
constexpr uint64_t kChunkEntries = 65536;

// Problems listed one by one; past this, only counted. A line per bad entry
// would tie the check's memory to the number of entries, not to the clusters
// of the file (a 61 MiB file of garbage tables took 2.5 GB). Twenty examples
// and the counts say enough in a log.
constexpr size_t kMaxProblemLines = 20;

// "L1 entry 3 (L2 table at 65536)": an entry as a problem's line names it.
std::string entry_name(const char *entry, uint64_t n, const char *points_at, uint64_t e) {
  return std::string(entry)
      .append(std::to_string(n))
      .append(points_at)
      .append(std::to_string(e))
      .append(")");
}

class Checker {
public:
  Checker(File &file, const Header &header, CheckMode mode)
      : file_(file), h_(header), geo_(header), mode_(mode), cs_(header.cluster_size) {}

  Result<CheckReport> run();

private:
  struct Update {
    uint64_t entry_offset;  // where the u64 entry lives in the file
    uint64_t value;
  };
  struct Copy {
    uint64_t entry_offset;
    uint64_t from;
  };
  struct TableRef {
    uint64_t l1_index;
    uint64_t offset;
  };

  template <typename Fn>
  Status for_each_entry(uint64_t table_offset, Fn &&fn);
  Status walk_l1();
  Status walk_l2(const TableRef &table);
  void check_l2_entry(uint64_t entry_offset, uint64_t e, uint64_t vpos);
  // Records a problem (each one is repaired in kRepair); `describe()` gives
  // its line, built only if it is listed.
  template <typename Describe>
  void problem(Describe &&describe);
  void count_unlisted();
  bool any_used(uint64_t first, uint64_t count) const;
  void mark(uint64_t first, uint64_t count, bool metadata);
  void find_leaks();
  Status repair();
  Status reclaim_leaks();
  template <typename Where>
  bool clear_if_outside(uint64_t entry_offset, uint64_t e, uint64_t bytes, const char *what,
                        Where &&where);

  File &file_;
  const Header h_;
  const Geometry geo_;
  const CheckMode mode_;
  const uint64_t cs_;
  uint64_t file_size_ = 0;
  uint64_t copies_end_ = 0;  // end of the private copies made by repair()
  std::vector<bool> used_;
  std::vector<bool> metadata_;
  std::vector<TableRef> tables_;
  std::vector<Update> updates_;
  std::vector<Copy> copies_;
  CheckReport report_;
  uint64_t unlisted_ = 0;  // problems past kMaxProblemLines
};

template <typename Describe>
void Checker::problem(Describe &&describe) {
  if (mode_ == CheckMode::kRepair)
    report_.repaired++;
  if (report_.problems.size() < kMaxProblemLines)
    report_.problems.push_back(describe());
  else
    unlisted_++;
}

// The classification both levels share: an entry that is no valid offset
// (misaligned, or inside the header), or whose `bytes` (a table, a cluster)
// run past the end of the file (an interrupted write), is a problem, and is
// queued to be cleared: then true. `what` names what lies past the end in the
// problem's line ("table " or ""); `where()` names the entry.
template <typename Where>
bool Checker::clear_if_outside(uint64_t at, uint64_t e, uint64_t bytes, const char *what,
                               Where &&where) {
  if (!geo_.is_cluster_aligned(e) || e < geo_.header_bytes()) {
    report_.invalid_entries++;
    problem([&] { return where() + ": misaligned or inside the header; entry cleared"; });
  } else if (e > file_size_ || bytes > file_size_ - e) {
    report_.interrupted_entries++;
    problem([&] {
      return where() + ": " + what +
             "past the end of the file (an interrupted write); entry cleared";
    });
  } else {
    return false;
  }
  updates_.push_back({at, 0});
  return true;
}

void Checker::count_unlisted() {
  if (unlisted_)
    report_.problems.push_back(
        std::string("and ").append(std::to_string(unlisted_)).append(" more problems like these"));
}

bool Checker::any_used(uint64_t first, uint64_t count) const {
  for (uint64_t c = first; c < first + count; c++)
    if (used_[c])
      return true;
  return false;
}

void Checker::mark(uint64_t first, uint64_t count, bool metadata) {
  for (uint64_t c = first; c < first + count && c < used_.size(); c++) {
    used_[c] = true;
    metadata_[c] = metadata;
  }
}

template <typename Fn>
Status Checker::for_each_entry(uint64_t table_offset, Fn &&fn) {
  const uint64_t n = geo_.table_entries();
  std::vector<uint64_t> chunk;
  for (uint64_t first = 0; first < n; first += kChunkEntries) {
    chunk.resize(std::min(kChunkEntries, n - first));
    QED_RETURN_IF_ERROR(read_table_entries(file_, table_offset + first * 8, chunk));
    for (uint64_t i = 0; i < chunk.size(); i++)
      if (chunk[i] != 0)
        fn(first + i, table_offset + (first + i) * 8, chunk[i]);
  }
  return Status::ok();
}

Status Checker::walk_l1() {
  const uint64_t tb = geo_.table_bytes();
  return for_each_entry(h_.l1_table_offset, [&](uint64_t i, uint64_t at, uint64_t e) {
    auto where = [&] { return entry_name("L1 entry ", i, " (L2 table at ", e); };
    if (clear_if_outside(at, e, tb, "table ", where))
      return;
    if (any_used(e / cs_, geo_.table_size_clusters())) {
      report_.duplicate_refs++;
      problem([&] { return where() + ": table overlaps clusters already in use; entry cleared"; });
      updates_.push_back({at, 0});
    } else {
      mark(e / cs_, geo_.table_size_clusters(), true);
      tables_.push_back({i, e});
    }
  });
}

void Checker::check_l2_entry(uint64_t at, uint64_t e, uint64_t vpos) {
  if (e == kEntryZero) {
    report_.zero_clusters++;
    return;
  }
  auto where = [&] { return entry_name("L2 entry for virtual offset ", vpos, " (cluster at ", e); };
  if (clear_if_outside(at, e, cs_, "", where))
    return;
  if (!used_[e / cs_]) {
    report_.data_clusters++;
    mark(e / cs_, 1, false);
  } else if (metadata_[e / cs_]) {
    report_.duplicate_refs++;
    problem([&] { return where() + ": points into the header or a table; entry cleared"; });
    updates_.push_back({at, 0});
  } else {
    report_.duplicate_refs++;
    problem([&] {
      return where() + ": cluster shared with another entry; " +
             (mode_ == CheckMode::kRepair ? "given a private copy" : "not repaired");
    });
    copies_.push_back({at, e});
  }
}

Status Checker::walk_l2(const TableRef &t) {
  const uint64_t span_start = geo_.l2_span_start(t.l1_index);
  return for_each_entry(t.offset, [&](uint64_t j, uint64_t at, uint64_t e) {
    check_l2_entry(at, e, span_start + j * cs_);
  });
}

void Checker::find_leaks() {
  for (uint64_t c = 0; c < used_.size(); c++)
    if (!used_[c])
      report_.leaked_clusters++;
  if (!report_.leaked_clusters)
    return;
  if (mode_ == CheckMode::kRepair)
    report_.repaired++;
  // One line for all of them, always listed.
  report_.problems.push_back(std::to_string(report_.leaked_clusters) +
                             " leaked clusters (space no entry uses)" +
                             (mode_ == CheckMode::kRepair ? "; space given back" : ""));
}

Status Checker::reclaim_leaks() {
  uint64_t end = used_.size();
  while (end > 0 && !used_[end - 1])
    end--;
  // Private copies made by the repair live past the old end: keep them.
  const uint64_t new_size = std::max(end * cs_, copies_end_);
  if (new_size < file_size_) {
    QED_RETURN_IF_ERROR(file_.truncate(new_size));
    report_.reclaimed_bytes += file_size_ - new_size;
  }
  for (uint64_t c = 0; c < end;) {
    if (used_[c]) {
      c++;
      continue;
    }
    uint64_t e = c;
    while (e < end && !used_[e])
      e++;
    Status s = file_.punch_hole(c * cs_, (e - c) * cs_);
    if (s.is_ok())
      report_.reclaimed_bytes += (e - c) * cs_;
    else if (s.code() != Status::Code::kNotSupported)
      return s;
    c = e;
  }
  return Status::ok();
}

Status Checker::repair() {
  // 1. Private copies for shared clusters, appended past everything else.
  uint64_t next = round_up(file_size_, cs_);
  std::vector<uint8_t> buf(copies_.empty() ? 0 : cs_);
  for (const Copy &c : copies_) {
    QED_RETURN_IF_ERROR(file_.pread(buf.data(), cs_, c.from));
    QED_RETURN_IF_ERROR(file_.pwrite(buf.data(), cs_, next));
    updates_.push_back({c.entry_offset, next});
    next += cs_;
  }
  copies_end_ = copies_.empty() ? 0 : next;
  if (!copies_.empty())
    QED_RETURN_IF_ERROR(file_.sync());
  // 2. Entries: each update is one aligned 8-byte write, atomic in a sector.
  std::sort(updates_.begin(), updates_.end(),
            [](const Update &a, const Update &b) { return a.entry_offset < b.entry_offset; });
  for (const Update &u : updates_) {
    uint8_t bytes[8];
    store_le64(bytes, u.value);
    QED_RETURN_IF_ERROR(file_.pwrite(bytes, sizeof bytes, u.entry_offset));
  }
  if (!updates_.empty())
    QED_RETURN_IF_ERROR(file_.sync());
  // 3. Leaks, only once no entry on disk can point at them.
  if (report_.leaked_clusters) {
    QED_RETURN_IF_ERROR(reclaim_leaks());
    QED_RETURN_IF_ERROR(file_.sync());
  }
  return Status::ok();
}

Result<CheckReport> Checker::run() {
  auto size = file_.size();
  if (!size)
    return size.status();
  file_size_ = *size;
  const uint64_t clusters = div_round_up(file_size_, cs_);
  report_.file_clusters = clusters;
  used_.assign(clusters, false);
  metadata_.assign(clusters, false);
  mark(0, h_.header_size, true);
  mark(h_.l1_table_offset / cs_, geo_.table_size_clusters(), true);
  QED_RETURN_IF_ERROR(walk_l1());
  report_.l2_tables = tables_.size();
  for (const TableRef &t : tables_)
    QED_RETURN_IF_ERROR(walk_l2(t));
  count_unlisted();
  find_leaks();
  if (mode_ == CheckMode::kRepair)
    QED_RETURN_IF_ERROR(repair());
  return report_;
}

}  // namespace

std::string CheckReport::summary() const {
  return std::to_string(l2_tables) + " L2 tables, " + std::to_string(data_clusters) +
         " data clusters, " + std::to_string(zero_clusters) + " zero clusters; " +
         std::to_string(invalid_entries) + " invalid entries, " +
         std::to_string(interrupted_entries) + " entries past the end of the file, " +
         std::to_string(duplicate_refs) + " duplicate references, " +
         std::to_string(leaked_clusters) + " leaked clusters; " + std::to_string(repaired) +
         " repaired, " + std::to_string(reclaimed_bytes) + " bytes reclaimed";
}

Result<CheckReport> check_image(File &file, const Header &header, CheckMode mode) {
  Checker checker(file, header, mode);
  return checker.run();
}

}  // namespace qed
