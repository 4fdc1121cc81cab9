#include "tests/syscall/syscall_log.h"

#include <linux/falloc.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>

namespace qsys {

std::string Op::describe() const {
  static const char *const kNames[] = {"?", "open", "close", "write", "fallocate", "truncate",
                                       "sync"};
  std::string s = "#" + std::to_string(seq) + " " + kNames[kind < 7 ? kind : 0];
  switch (kind) {
  case QSYS_WRITE:
    s += " [" + std::to_string(offset) + ", +" + std::to_string(length) + ")";
    break;
  case QSYS_FALLOCATE:
    s += " mode " + std::to_string(mode) + " [" + std::to_string(offset) + ", +" +
         std::to_string(length) + ")";
    break;
  case QSYS_TRUNCATE:
    s += " to " + std::to_string(offset);
    break;
  case QSYS_SYNC:
    s += call == QSYS_CALL_FDATASYNC ? " (fdatasync)" : call == QSYS_CALL_FSYNC ? " (fsync)" : "";
    break;
  default:
    break;
  }
  if (err)
    s += std::string(injected ? " failed (injected): " : " failed: ") + std::strerror(err);
  return s;
}

bool read_log(const std::string &path, std::vector<Op> &ops, std::string &error) {
  std::unique_ptr<FILE, int (*)(FILE *)> f(std::fopen(path.c_str(), "rb"), std::fclose);
  if (!f) {
    error = path + ": " + std::strerror(errno);
    return false;
  }
  qsys_record r;
  while (std::fread(&r, sizeof r, 1, f.get()) == 1) {
    if (r.magic != QSYS_MAGIC || r.kind < QSYS_OPEN || r.kind > QSYS_SYNC) {
      error = path + ": malformed record after " + std::to_string(ops.size()) + " records";
      return false;
    }
    Op op;
    op.kind = qsys_kind(r.kind);
    op.call = qsys_call(r.call);
    op.seq = r.seq;
    op.t_start = r.t_start;
    op.t_end = r.t_end;
    op.fd = r.fd;
    op.err = r.err;
    op.injected = r.injected != 0;
    op.mode = r.mode;
    op.offset = r.offset;
    op.length = r.length;
    op.data.resize(r.data_len);
    if (r.data_len && std::fread(op.data.data(), 1, r.data_len, f.get()) != r.data_len) {
      error = path + ": record " + std::to_string(r.seq) + " is cut short";
      return false;
    }
    ops.push_back(std::move(op));
  }
  if (std::ferror(f.get())) {
    error = path + ": read error";
    return false;
  }
  return true;
}

namespace {

[[noreturn]] void unsupported(const Op &op) {
  std::fprintf(stderr, "syscall replay: cannot model %s\n", op.describe().c_str());
  std::exit(2);
}

crash::Record effect_of(const Op &op) {
  using crash::Kind;
  crash::Record r;
  r.offset = op.offset;
  r.length = op.length;
  if (!op.ok()) {
    r.kind = op.is_barrier() ? Kind::kFailedSync : Kind::kNoEffect;
    return r;
  }
  switch (op.kind) {
  case QSYS_WRITE:
    if (op.data.size() != op.length)
      unsupported(op);  // the log was made without data (QED_SYSCALL_DATA=0)
    r.kind = Kind::kWrite;
    r.bytes = op.data;
    break;
  case QSYS_TRUNCATE:
    r.kind = Kind::kTruncate;
    break;
  case QSYS_FALLOCATE: {
    const uint32_t zeroes = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE;
    if (op.mode & ~uint32_t(FALLOC_FL_KEEP_SIZE | zeroes))
      unsupported(op);
    const bool keep_size = op.mode & FALLOC_FL_KEEP_SIZE;
    if (op.mode & zeroes) {
      r.kind = keep_size ? Kind::kPunch : Kind::kZero;
    } else if (keep_size) {
      r.kind = Kind::kNoEffect;  // blocks past the end: nothing a read shows
    } else {
      r.kind = Kind::kExtend;
      r.offset = op.offset + op.length;
    }
    break;
  }
  case QSYS_SYNC:
    r.kind = op.is_barrier() ? Kind::kSync : Kind::kNoEffect;
    break;
  default:
    r.kind = Kind::kNoEffect;
    break;
  }
  return r;
}

}  // namespace

crash::Log effects_of(const std::vector<Op> &ops) {
  crash::Log log;
  log.reserve(ops.size());
  for (const Op &op : ops)
    log.push_back(effect_of(op));
  return log;
}

std::vector<Op> ops_that_matter(const std::vector<Op> &ops) {
  std::vector<Op> out;
  for (const Op &op : ops)
    if (op.matters())
      out.push_back(op);
  return out;
}

uint64_t CallCounts::of(const std::string &kind) const {
  if (kind == "write")
    return write;
  if (kind == "fallocate")
    return fallocate;
  if (kind == "ftruncate")
    return ftruncate;
  if (kind == "sync")
    return sync;
  return 0;
}

CallCounts count_calls(const std::vector<Op> &ops) {
  CallCounts c;
  for (const Op &op : ops) {
    switch (op.kind) {
    case QSYS_WRITE: c.write++; break;
    case QSYS_FALLOCATE: c.fallocate++; break;
    // An open with O_TRUNC is logged as a truncation but is not an ftruncate call.
    case QSYS_TRUNCATE: c.ftruncate += op.call == QSYS_CALL_FTRUNCATE; break;
    case QSYS_SYNC: c.sync++; break;
    default: break;
    }
    c.injected += op.injected;
  }
  return c;
}

}  // namespace qsys
