#include "tests/syscall/workload.h"

#include <libnbd.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <mutex>
#include <random>
#include <thread>

namespace qsys {

uint64_t now_ns() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000000000u + uint64_t(ts.tv_nsec);
}

bool Request::fua() const { return flags & LIBNBD_CMD_FLAG_FUA; }

std::string Request::describe() const {
  static const char *const kNames[] = {"write", "zero", "trim", "flush"};
  std::string s = "conn " + std::to_string(conn) + " " + kNames[int(kind)];
  if (kind != ReqKind::kFlush)
    s += " [" + std::to_string(offset) + ", +" + std::to_string(length) + ")";
  if (flags & LIBNBD_CMD_FLAG_FUA)
    s += " fua";
  if (flags & LIBNBD_CMD_FLAG_NO_HOLE)
    s += " no-hole";
  if (flags & LIBNBD_CMD_FLAG_FAST_ZERO)
    s += " fast";
  s += " sent " + std::to_string(send_ns) + " replied " + std::to_string(reply_ns);
  if (err)
    s += std::string(" error: ") + std::strerror(err);
  return s;
}

namespace {

using Handle = std::unique_ptr<nbd_handle, void (*)(nbd_handle *)>;

Handle connect(const std::string &socket, std::string &why) {
  Handle h(nbd_create(), nbd_close);
  if (!h) {
    why = nbd_get_error();
    return Handle(nullptr, nbd_close);
  }
  if (nbd_connect_unix(h.get(), socket.c_str()) == -1) {
    why = std::string("connect ") + socket + ": " + nbd_get_error();
    return Handle(nullptr, nbd_close);
  }
  return h;
}

int last_errno() {
  int e = nbd_get_errno();
  return e ? e : EIO;
}

// Sends `r` on `h` and waits for the reply, stamping both.
void send_request(nbd_handle *h, Request &r) {
  int rc;
  r.send_ns = now_ns();
  switch (r.kind) {
  case ReqKind::kWrite:
    rc = nbd_pwrite(h, r.data.data(), r.length, r.offset, r.flags);
    break;
  case ReqKind::kZero:
    rc = nbd_zero(h, r.length, r.offset, r.flags);
    break;
  case ReqKind::kTrim:
    rc = nbd_trim(h, r.length, r.offset, r.flags);
    break;
  case ReqKind::kFlush:
  default:
    rc = nbd_flush(h, 0);
    break;
  }
  r.reply_ns = now_ns();
  r.err = rc == -1 ? last_errno() : 0;
}

void tally(WorkloadResult &result, std::vector<std::vector<Request>> &per,
           std::vector<std::vector<std::string>> &bad) {
  for (size_t c = 0; c < per.size(); c++) {
    for (Request &r : per[c]) {
      if (!r.ok()) {
        result.failed++;
        if (r.kind == ReqKind::kZero && (r.flags & LIBNBD_CMD_FLAG_FAST_ZERO) &&
            (r.err == ENOTSUP || r.err == EOPNOTSUPP))
          result.expected_failures++;
      }
      result.requests.push_back(std::move(r));
    }
    for (auto &v : bad[c])
      result.violations.push_back(std::move(v));
  }
}

class Connection {
public:
  Connection(const WorkloadSpec &spec, unsigned index, std::vector<Request> &out,
             std::vector<std::string> &violations)
      : spec_(spec), index_(index), out_(out), violations_(violations),
        rng_(spec.seed * 1000003 + index) {
    if (spec_.own_regions) {
      first_ = spec_.disk_bytes * index / spec_.connections;
      end_ = spec_.disk_bytes * (index + 1) / spec_.connections;
    } else {
      first_ = 0;
      end_ = spec_.disk_bytes;
    }
    if (spec_.read_back) {
      shadow_.assign(spec_.initial_disk.begin() + long(first_),
                     spec_.initial_disk.begin() + long(end_));
      known_.assign(end_ - first_, 1);
    }
  }

  void run(nbd_handle *h);

private:
  void range(uint64_t &off, uint64_t &len);
  void issue(nbd_handle *h, Request r);
  void check_back(nbd_handle *h, const Request &r);
  void read_some(nbd_handle *h);
  void forget(uint64_t off, uint64_t len) {
    if (spec_.read_back)
      std::fill(known_.begin() + long(off - first_), known_.begin() + long(off - first_ + len), 0);
  }

  const WorkloadSpec &spec_;
  const unsigned index_;
  std::vector<Request> &out_;
  std::vector<std::string> &violations_;
  std::mt19937_64 rng_;
  uint64_t first_ = 0, end_ = 0;
  std::vector<uint8_t> shadow_, known_;  // read_back: bytes of [first_, end_)
};

// Offsets and lengths: a third byte-granular, a third in 512-byte sectors, a
// third in clusters, so partial sectors, partial clusters and whole-cluster
// allocations all happen. Lengths reach 2.5 clusters (at most 160 KiB).
void Connection::range(uint64_t &off, uint64_t &len) {
  const uint64_t span = end_ - first_;
  const uint64_t cs = spec_.cluster_size;
  const uint64_t max_len = std::min<uint64_t>({span, cs * 5 / 2, 160 * 1024});
  const unsigned size_class = unsigned(rng_() % 3);
  const uint64_t cap = size_class == 0 ? std::min<uint64_t>(max_len, 4096)
                       : size_class == 1 ? std::min<uint64_t>(max_len, cs)
                                         : max_len;
  uint64_t align = 1;
  switch (rng_() % 3) {
  case 1: align = 512; break;
  case 2: align = cs; break;
  default: break;
  }
  len = 1 + rng_() % cap;
  if (align > 1 && max_len >= align)
    len = std::min((len + align - 1) / align * align, max_len / align * align);
  // An offset in [first_, end_ - len], aligned if the range holds one.
  const uint64_t lo = first_, hi = end_ - len;
  const uint64_t a = (lo + align - 1) / align * align;
  if (a <= hi)
    off = a + rng_() % ((hi - a) / align + 1) * align;
  else
    off = lo + rng_() % (hi - lo + 1);
}

void Connection::issue(nbd_handle *h, Request r) {
  send_request(h, r);
  if (spec_.read_back && r.kind != ReqKind::kFlush) {
    const uint64_t at = r.offset - first_;
    if (!r.ok() || r.kind == ReqKind::kTrim) {
      forget(r.offset, r.length);  // old, new or a mix; trim: old or zero
    } else {
      if (r.kind == ReqKind::kWrite)
        std::memcpy(shadow_.data() + at, r.data.data(), r.length);
      else
        std::memset(shadow_.data() + at, 0, r.length);
      std::fill(known_.begin() + long(at), known_.begin() + long(at + r.length), 1);
      check_back(h, r);
    }
  }
  out_.push_back(std::move(r));
}

void Connection::check_back(nbd_handle *h, const Request &r) {
  std::vector<uint8_t> got(r.length);
  if (nbd_pread(h, got.data(), got.size(), r.offset, 0) == -1) {
    violations_.push_back("read after " + r.describe() + " failed: " + nbd_get_error());
    return;
  }
  const uint64_t at = r.offset - first_;
  for (uint64_t i = 0; i < r.length; i++) {
    if (known_[at + i] && got[i] != shadow_[at + i]) {
      violations_.push_back("read-back after acknowledged " + r.describe() + ": byte " +
                            std::to_string(r.offset + i) + " holds " + std::to_string(got[i]) +
                            ", expected " + std::to_string(shadow_[at + i]));
      return;
    }
  }
}

void Connection::read_some(nbd_handle *h) {
  uint64_t off, len;
  range(off, len);
  std::vector<uint8_t> got(len);
  if (nbd_pread(h, got.data(), len, off, 0) == -1) {
    violations_.push_back("read of " + std::to_string(len) + " bytes at " + std::to_string(off) +
                          " failed: " + nbd_get_error());
    return;
  }
  if (!spec_.read_back)
    return;
  for (uint64_t i = 0; i < len; i++) {
    if (known_[off - first_ + i] && got[i] != shadow_[off - first_ + i]) {
      violations_.push_back("read at " + std::to_string(off) + ": byte " +
                            std::to_string(off + i) + " holds " + std::to_string(got[i]) +
                            ", expected " + std::to_string(shadow_[off - first_ + i]));
      return;
    }
  }
}

void Connection::run(nbd_handle *h) {
  for (unsigned op = 0; op < spec_.ops_per_connection; op++) {
    if (spec_.reads && rng_() % 3 == 0)
      read_some(h);
    Request r;
    r.kind = ReqKind::kWrite;
    r.conn = index_;
    const unsigned pick = unsigned(rng_() % 100);
    if (pick < 10) {
      r.kind = ReqKind::kFlush;
      issue(h, std::move(r));
      continue;
    }
    range(r.offset, r.length);
    if (pick < 75) {
      if (pick >= 65)
        r.flags = LIBNBD_CMD_FLAG_FUA;
      r.data.resize(r.length);
      for (auto &b : r.data)
        b = uint8_t(1 + rng_() % 255);  // never 0: a lost write cannot pass for a zeroed one
    } else if (pick < 90) {
      r.kind = ReqKind::kZero;
      if (rng_() % 2)
        r.flags |= LIBNBD_CMD_FLAG_NO_HOLE;
      if (rng_() % 5 == 0)
        r.flags |= LIBNBD_CMD_FLAG_FUA;
      if (spec_.fast_zero && rng_() % 6 == 0)
        r.flags |= LIBNBD_CMD_FLAG_FAST_ZERO;
    } else {
      r.kind = ReqKind::kTrim;
      if (rng_() % 5 == 0)
        r.flags = LIBNBD_CMD_FLAG_FUA;
    }
    issue(h, std::move(r));
  }
  Request last;
  last.kind = ReqKind::kFlush;
  last.conn = index_;
  issue(h, std::move(last));
}

}  // namespace

WorkloadResult run_workload(const std::string &socket, const WorkloadSpec &spec) {
  WorkloadResult result;
  std::vector<std::vector<Request>> per(spec.connections);
  std::vector<std::vector<std::string>> bad(spec.connections);
  std::vector<std::thread> threads;
  for (unsigned c = 0; c < spec.connections; c++) {
    threads.emplace_back([&, c] {
      std::string why;
      Handle h = connect(socket, why);
      if (!h) {
        bad[c].push_back("connection " + std::to_string(c) + ": " + why);
        return;
      }
      Connection(spec, c, per[c], bad[c]).run(h.get());
      nbd_shutdown(h.get(), 0);
    });
  }
  for (auto &t : threads)
    t.join();
  tally(result, per, bad);
  return result;
}

WorkloadResult run_requests(const std::string &socket,
                            std::vector<std::vector<Request>> per) {
  WorkloadResult result;
  std::vector<std::vector<std::string>> bad(per.size());
  std::vector<std::thread> threads;
  for (size_t c = 0; c < per.size(); c++) {
    threads.emplace_back([&, c] {
      std::string why;
      Handle h = connect(socket, why);
      if (!h) {
        bad[c].push_back("connection " + std::to_string(c) + ": " + why);
        per[c].clear();
        return;
      }
      for (Request &r : per[c])
        send_request(h.get(), r);
      nbd_shutdown(h.get(), 0);
    });
  }
  for (auto &t : threads)
    t.join();
  tally(result, per, bad);
  return result;
}

bool server_answers(const std::string &socket, uint64_t count, std::string &why,
                    uint64_t offset) {
  Handle h = connect(socket, why);
  if (!h)
    return false;
  std::vector<uint8_t> buf(count);
  if (nbd_pread(h.get(), buf.data(), buf.size(), offset, 0) == -1) {
    why = std::string("read: ") + nbd_get_error();
    return false;
  }
  nbd_shutdown(h.get(), 0);
  return true;
}

bool read_disk(const std::string &socket, std::vector<uint8_t> &disk, std::string &why) {
  Handle h = connect(socket, why);
  if (!h)
    return false;
  const int64_t size = nbd_get_size(h.get());
  if (size < 0) {
    why = nbd_get_error();
    return false;
  }
  disk.resize(uint64_t(size));
  constexpr uint64_t kChunk = 8 << 20;
  for (uint64_t off = 0; off < disk.size(); off += kChunk) {
    const uint64_t n = std::min<uint64_t>(kChunk, disk.size() - off);
    if (nbd_pread(h.get(), disk.data() + off, n, off, 0) == -1) {
      why = "read at " + std::to_string(off) + ": " + nbd_get_error();
      return false;
    }
  }
  nbd_shutdown(h.get(), 0);
  return true;
}

}  // namespace qsys
