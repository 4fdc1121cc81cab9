// The harness of fuzz_requests (see the oracle described there): runs a
// decoded request sequence on a read-write image in memory and checks every
// answer against a flat model of the disk, across clean reopens and simulated
// power losses.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "lib/check.h"
#include "tests/support/crash_model.h"
#include "tests/fuzz/disk_model.h"
#include "tests/support/fault_file.h"
#include "lib/image.h"
#include "tests/fuzz/request_world.h"

namespace fuzz {

// Where a request goes, as the input says it: resolved against the disk as it
// is when the request runs (its size changes when it grows).
struct Place {
  uint8_t pos_kind = 0;  // low 2 bits: anywhere, near a cluster edge, near an
                         // L2 span edge, near the end; the rest: a small skew
  uint32_t pos_raw = 0;
  uint8_t len_kind = 0;  // low 2 bits: short, one or two clusters, up to
                         // 8 KiB, sectors; the rest: details
  uint16_t len_raw = 0;
};

struct Request {
  enum Kind : uint8_t { kWrite, kZero, kTrim, kFlush, kRead, kExtents, kReopen } kind;
  // kWrite: bits 0-1 shape (byte-granular, sector-aligned, whole clusters),
  //         bit 2 FUA.
  // kZero: bit 0 MAY_TRIM, bit 1 FUA, bits 2 and 3 both set: FAST.
  // kTrim: bit 0 FUA.
  // kExtents: bit 0 a small maximum (1 to 4 extents), bit 1 to the end.
  // kReopen: bit 0 a power loss instead of a close, bit 1 grow the image.
  uint8_t flags = 0;
  Place where;
  uint8_t count = 0;  // kExtents: the small maximum; kReopen: how much to grow
  // kReopen with a power loss: where in the log (below 128: at its end), how
  // the operations after the last sync fare, and the seed of the tearing.
  uint8_t point = 0, survival = 0, seed = 0;
};

class Harness {
public:
  Harness(size_t geometry, Below below, uint64_t cache_bytes);
  // Runs the requests, then closes, reopens and reads back everything touched.
  // Any disagreement with the model aborts (fuzz::fail).
  void run(const std::vector<Request> &requests);

  // At most this many reopens per run, so a run stays cheap (two still make
  // a power loss during the repair of the state another power loss left).
  static constexpr unsigned kMaxReopens = 2;

private:
  // A request that changed the disk, as the model needs it after a power loss.
  struct Change {
    enum Kind { kWrite, kZero, kTrim } kind;
    uint64_t pos, len;
    uint64_t id;   // kWrite: what it wrote (data_byte)
    bool fua;
    uint64_t tag;  // marker in the file's log after the request returned
  };
  struct FlushDone {
    size_t changes_before;  // changes that returned before the flush began
    uint64_t tag;
  };

  uint64_t size() const { return model_.size(); }
  uint64_t cs() const { return geo_.cluster_size; }
  uint64_t span() const { return uint64_t(geo_.table_size) * geo_.cluster_size / 8 * cs(); }
  uint64_t resolve_pos(const Place &p) const;
  uint64_t resolve_len(const Place &p, uint64_t pos) const;
  uint64_t grow_target(uint8_t pick) const;
  std::shared_ptr<qed::MemoryFile> memory_file(std::vector<uint8_t> bytes) const;

  // Opens the image in `mem` read-write (growing it to `grow_to`). When
  // `record`, the file's log is kept for a power loss at the session's end;
  // `crashed`: the file is what a power loss left.
  void open_session(std::shared_ptr<qed::MemoryFile> mem, uint64_t grow_to, bool record,
                    bool crashed);
  // The check must find nothing but leaks (their number goes to `leaks`).
  void check_file(qed::File &file, const char *when, uint64_t *leaks);
  void marker(uint64_t &tag);
  void changed(Change c);

  void do_write(const Request &r);
  void do_zero(const Request &r);
  void do_trim(const Request &r);
  void do_flush();
  void do_read(const Request &r);
  void do_extents(const Request &r);
  void do_reopen(const Request &r, bool record_next);
  void crash_and_reopen(const Request &r, bool record_next);
  // "" if every byte of got[0, len) at `pos` is what the last durable change
  // among `changes` (or the disk at the open) left there, or what a later one
  // wrote; else the first byte that is not.
  bool reads_as_model(uint64_t pos, const uint8_t *got, uint64_t len) const;
  std::string check_after_crash(uint64_t pos, const uint8_t *got, uint64_t len,
                                const std::vector<const Change *> &changes,
                                const std::vector<bool> &durable);
  void read_and_check(uint64_t pos, uint64_t len, const std::string &what);
  // The pages this session's changes touched; reads `pages` and checks them.
  std::vector<uint64_t> session_pages() const;
  void verify(const std::vector<uint64_t> &pages, const char *when);

  const GeometryChoice geo_;
  const std::string path_;
  const uint64_t cache_bytes_;
  const uint64_t base_bytes_;  // the backing file's size (0 without one)
  DiskModel model_;    // what the disk reads now
  DiskModel at_open_;  // what it read when this session's open returned
  std::shared_ptr<qed::MemoryFile> mem_;
  std::shared_ptr<qed::FaultFile> fault_;  // recording sessions only
  std::unique_ptr<qed::Image> image_;
  std::vector<uint8_t> initial_;   // recording: the file before the open
  std::vector<Change> changes_;    // this session's
  std::vector<FlushDone> flushes_;
  uint64_t open_tag_ = 0;
  uint64_t next_tag_ = 1;
  uint64_t next_id_ = 1;
  uint64_t size_before_open_ = 0;  // this session's open may have grown the image
  uint64_t leaks_after_open_ = 0;
  unsigned reopens_ = 0;
  std::vector<uint8_t> buf_;
};

}  // namespace fuzz
