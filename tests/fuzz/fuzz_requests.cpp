// libFuzzer target: differential testing of request sequences. The input
// chooses a geometry, a backing file (none, raw or QED) and an L2 cache size,
// then decodes into a sequence of requests on a read-write image in memory:
// writes (byte-granular, sector-aligned, whole clusters; some FUA), zeroes
// (with and without MAY_TRIM, some FUA or FAST), trims, flushes, reads, extents
// queries, and reopens: a clean close, or a simulated power loss at a point of
// the file's log chosen by the input (crash_model.h: operations after the last
// sync may be lost or torn), either one optionally growing the image.
//
// The oracle is a flat model of the disk (disk_model.h, request_harness.cpp):
//   - every read returns what the model holds (a trim lets the whole clusters
//     it covers read zero); every extent of zeroes lies where the model may
//     read zero;
//   - after a power loss, each byte reads what the last durable change left
//     (a change is durable once a flush that began after it returned, or it
//     was FUA and returned) or what a later change wrote; the size is the
//     old one only if the power went before the growing open finished;
//   - the check (lib/check.h) finds nothing but leaks in what every open
//     opens (what a power loss left, or a closed image); a repair cuts off
//     no more than the leaks; a session without a power loss leaks nothing
//     new; after a power loss the independent structural check
//     (test_helpers.h) agrees, on that state and on the states every sync
//     point of the log allows, all kept and torn (crash_sweep.h).
// Single-threaded, so every run is deterministic and every finding replays.
//
// Input: byte 0 the scenario (geometry, backing file), byte 1 the cache size,
// then requests of a few bytes each (see parse()); past its end the input
// reads as zeroes, so every input is valid.
#include <vector>

#include "tests/fuzz/request_harness.h"

namespace {

using fuzz::Place;
using fuzz::Request;

// Reads the input a few bytes at a time; past its end everything is zero.
class Reader {
public:
  Reader(const uint8_t *data, size_t size) : p_(data), end_(data + size) {}
  bool done() const { return p_ >= end_; }
  uint8_t u8() { return p_ < end_ ? *p_++ : 0; }
  uint16_t u16() { return uint16_t(u8() | u8() << 8); }
  uint32_t u32() { return uint32_t(u16() | uint32_t(u16()) << 16); }

private:
  const uint8_t *p_;
  const uint8_t *end_;
};

Place parse_place(Reader &in, bool with_len = true) {
  Place p;
  p.pos_kind = in.u8();
  switch (p.pos_kind & 3) {
  case 0: p.pos_raw = in.u32(); break;
  case 2: p.pos_raw = in.u8(); break;
  default: p.pos_raw = in.u16(); break;
  }
  if (with_len) {
    p.len_kind = in.u8();
    if ((p.len_kind & 3) == 0 || (p.len_kind & 3) == 2)
      p.len_raw = in.u16();
  }
  return p;
}

// At most this many requests per input, so a run stays cheap.
constexpr size_t kMaxRequests = 32;

std::vector<Request> parse(Reader &in) {
  std::vector<Request> out;
  while (!in.done() && out.size() < kMaxRequests) {
    const uint8_t op = in.u8();
    Request r{};
    switch (op % 16) {
    case 0: case 1: case 2: case 3: case 4: case 5:
      r.kind = Request::kWrite;
      r.flags = op >> 4;
      r.where = parse_place(in);
      break;
    case 6: case 7:
      r.kind = Request::kZero;
      r.flags = in.u8();
      r.where = parse_place(in);
      break;
    case 8:
      r.kind = Request::kTrim;
      r.flags = in.u8();
      r.where = parse_place(in);
      break;
    case 9: case 10:
      r.kind = Request::kFlush;
      break;
    case 11: case 12:
      r.kind = Request::kRead;
      r.where = parse_place(in);
      break;
    case 13:
      r.kind = Request::kExtents;
      r.flags = in.u8();
      r.count = r.flags >> 2;
      r.where = parse_place(in, !(r.flags & 2));
      break;
    default:
      r.kind = Request::kReopen;
      r.flags = in.u8();
      if (r.flags & 2)
        r.count = in.u8();
      if (r.flags & 1) {
        r.point = in.u8();
        r.survival = in.u8();
        r.seed = in.u8();
      }
      break;
    }
    out.push_back(r);
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int *, char ***) {
  fuzz::make_world();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  Reader in(data, size);  // even an empty input runs: all its bytes read as zero
  const uint8_t scenario = in.u8(), cache = in.u8();
  static const uint64_t kCache[] = {4096, 64 * 1024, 1 << 20};
  fuzz::Harness h(scenario % fuzz::kGeometryCount,
                  fuzz::Below((scenario / fuzz::kGeometryCount) % fuzz::kBelowCount),
                  kCache[cache % 3]);
  h.run(parse(in));
  return 0;
}
