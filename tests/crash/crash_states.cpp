// Crash-consistency test: records a multi-threaded workload (writes, FUA
// writes, zero, trim, flush) on an Image, builds thousands of crash states from
// the log (see crash_model.h) and checks each one:
//   - the check finds nothing but leaks (before any repair), and, without a
//     backing file, entries past the end of the file (see the protocol at the
//     top of lib/image_write.cpp), which only an image marked NEED_CHECK may
//     hold;
//   - the image opens read-write (repairing if dirty), after which the check
//     finds nothing but leaks whose space was given back;
//   - every 512-byte unit acknowledged by a flush (or FUA) that completed
//     before the crash reads back exactly; every other unit reads its old
//     value or one of the values written to it.
// Prints the number of crash states and violations; exits 1 on a violation.
//
// Environment: QED_CRASH_STATES (total states, default 12000), QED_CRASH_SEED.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <random>
#include <set>
#include <string>
#include <thread>

#include "lib/byte_order.h"
#include "tests/support/crash_model.h"
#include "lib/create.h"
#include "tests/support/fault_file.h"
#include "lib/image.h"

namespace {

using qed::FaultFile;

constexpr uint64_t kUnit = 512;
constexpr uint64_t kZeroId = 0;
constexpr uint64_t kBackingId = 0xBAC0;

// The 512 bytes unit `u` holds after write `id`: decodable id and unit number.
void fill_unit(uint8_t *p, uint64_t id, uint64_t u) {
  if (id == kZeroId) {
    std::memset(p, 0, kUnit);
    return;
  }
  qed::store_le64(p, id);
  qed::store_le64(p + 8, u);
  uint64_t x = id * 0x9E3779B97F4A7C15ull ^ (u + 1) * 0xC2B2AE3D27D4EB4Full;
  for (uint64_t i = 16; i < kUnit; i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    qed::store_le64(p + i, x);
  }
}

struct Scenario {
  const char *name;
  uint32_t cluster_size;
  uint32_t table_size;
  uint64_t disk_bytes;
  uint64_t backing_bytes;  // 0: no backing file
};

// One change to a unit, in the order its thread made it.
struct Change {
  std::vector<uint64_t> ids;  // the values it may have left (trim: zero or before)
  uint64_t seq;               // completion order of the request
  uint64_t fua_tag;           // non-zero: the request was FUA, marker tag
};

struct FlushRecord {
  uint64_t start_seq;  // requests completed before the flush began
  uint64_t tag;
};

struct Workload {
  std::vector<std::vector<Change>> history;  // per unit
  std::vector<FlushRecord> flushes;
};

class Runner {
public:
  Runner(const Scenario &s, uint64_t seed, const std::string &dir)
      : s_(s), seed_(seed), dir_(dir), units_(s.disk_bytes / kUnit) {}

  bool record();
  uint64_t verify(uint64_t states, uint64_t &violations);

private:
  void thread_body(unsigned t, unsigned threads);
  uint64_t initial_id(uint64_t u) const {
    return u * kUnit < s_.backing_bytes ? kBackingId : kZeroId;
  }
  std::set<uint64_t> candidates(uint64_t u, size_t k) const;
  bool check_state(std::vector<uint8_t> bytes, size_t k, std::string &why);

  const Scenario s_;
  const uint64_t seed_;
  const std::string dir_;
  const uint64_t units_;
  std::string image_path_;
  std::vector<uint8_t> initial_;
  std::unique_ptr<qed::Image> image_;
  FaultFile *fault_ = nullptr;
  std::atomic<uint64_t> seq_{0};
  std::atomic<uint64_t> next_id_{1};
  std::atomic<uint64_t> next_tag_{1};
  std::mutex record_mu_;
  Workload w_;                       // guarded by record_mu_ while recording
  std::map<uint64_t, size_t> marker_index_;
  std::unique_ptr<crash::CrashStates> states_;
  std::atomic<bool> failed_{false};
};

std::vector<uint8_t> read_file(const std::string &path) {
  FILE *f = std::fopen(path.c_str(), "rb");
  std::vector<uint8_t> bytes;
  if (!f)
    return bytes;
  uint8_t buf[65536];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0)
    bytes.insert(bytes.end(), buf, buf + n);
  std::fclose(f);
  return bytes;
}

bool Runner::record() {
  image_path_ = dir_ + "/" + s_.name + ".qed";
  qed::CreateOptions co;
  co.size = s_.disk_bytes;
  co.cluster_size = s_.cluster_size;
  co.table_size = s_.table_size;
  if (s_.backing_bytes) {
    const std::string base = dir_ + "/" + s_.name + "-base.raw";
    std::vector<uint8_t> bytes(s_.backing_bytes);
    for (uint64_t u = 0; u < s_.backing_bytes / kUnit; u++)
      fill_unit(&bytes[u * kUnit], kBackingId, u);
    FILE *f = std::fopen(base.c_str(), "wb");
    std::fwrite(bytes.data(), 1, bytes.size(), f);
    std::fclose(f);
    co.backing_file = std::string(s_.name) + "-base.raw";
    co.backing_format = "raw";
  }
  if (auto st = qed::create_image(image_path_, co); !st.is_ok()) {
    std::fprintf(stderr, "create: %s\n", st.message().c_str());
    return false;
  }
  initial_ = read_file(image_path_);
  auto mem = std::make_shared<qed::MemoryFile>(initial_, image_path_);
  auto fault = std::make_unique<FaultFile>(mem);
  fault_ = fault.get();
  fault_->set_recording(true);
  qed::OpenOptions o;
  o.read_only = false;
  o.cache_bytes = 64 * 1024;  // small: eviction and reloads happen too
  qed::ChainState chain;
  auto img = qed::Image::open_file(image_path_, std::move(fault), o, chain);
  if (!img) {
    std::fprintf(stderr, "open: %s\n", img.status().message().c_str());
    return false;
  }
  image_ = std::move(*img);
  w_.history.assign(units_, {});
  const unsigned threads = 3;
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < threads; t++)
    pool.emplace_back([this, t] { thread_body(t, threads); });
  for (auto &th : pool)
    th.join();
  auto log = fault_->records();
  for (size_t i = 0; i < log.size(); i++)
    if (log[i].kind == crash::Kind::kMarker)
      marker_index_[log[i].offset] = i;
  states_ = std::make_unique<crash::CrashStates>(initial_, std::move(log));
  image_.reset();  // never closed: the power went out
  return !failed_;
}

void Runner::thread_body(unsigned t, unsigned threads) {
  std::mt19937_64 rng(seed_ * 1000 + t);
  // Each thread owns a range of units; the boundaries fall inside clusters,
  // so neighbours allocate the same clusters at the same time.
  const uint64_t first = units_ * t / threads, last = units_ * (t + 1) / threads;
  const uint64_t cs_units = s_.cluster_size / kUnit;
  std::vector<uint8_t> buf;
  for (int op = 0; op < 45 && !failed_; op++) {
    const unsigned pick = unsigned(rng() % 100);
    const uint64_t len = 1 + rng() % std::min<uint64_t>(last - first, cs_units * 5 / 2);
    const uint64_t u0 = first + rng() % (last - first - len + 1);
    if (pick < 10) {
      const uint64_t start = seq_.load();
      if (!image_->flush().is_ok()) {
        failed_ = true;
        break;
      }
      const uint64_t tag = next_tag_++;
      fault_->add_marker(tag);
      std::lock_guard lock(record_mu_);
      w_.flushes.push_back({start, tag});
      continue;
    }
    std::vector<std::vector<uint64_t>> ids(len);
    qed::Status st;
    bool fua = false;
    if (pick < 65) {  // write, sometimes FUA
      fua = pick >= 55;
      const uint64_t id = (next_id_++) << 8 | t;
      buf.resize(len * kUnit);
      for (uint64_t i = 0; i < len; i++) {
        fill_unit(&buf[i * kUnit], id, u0 + i);
        ids[i] = {id};
      }
      st = image_->write(buf.data(), buf.size(), u0 * kUnit, fua);
    } else if (pick < 85) {  // zero
      qed::ZeroFlags z;
      z.may_trim = rng() & 1;
      for (auto &v : ids)
        v = {kZeroId};
      st = image_->zero(u0 * kUnit, len * kUnit, z);
    } else {  // trim: whole clusters may become zero, the rest stays
      std::lock_guard lock(record_mu_);
      for (uint64_t i = 0; i < len; i++) {
        const auto &h = w_.history[u0 + i];
        ids[i] = h.empty() ? std::vector<uint64_t>{initial_id(u0 + i)} : h.back().ids;
        const uint64_t c = (u0 + i) / cs_units;
        if (c * cs_units >= u0 && (c + 1) * cs_units <= u0 + len)
          ids[i].push_back(kZeroId);
      }
      st = image_->trim(u0 * kUnit, len * kUnit, false);
    }
    if (!st.is_ok()) {
      std::fprintf(stderr, "%s: request failed: %s\n", s_.name, st.message().c_str());
      failed_ = true;
      break;
    }
    const uint64_t seq = ++seq_;
    uint64_t tag = 0;
    if (fua) {
      tag = next_tag_++;
      fault_->add_marker(tag);
    }
    std::lock_guard lock(record_mu_);
    for (uint64_t i = 0; i < len; i++)
      w_.history[u0 + i].push_back({std::move(ids[i]), seq, tag});
  }
}

std::set<uint64_t> Runner::candidates(uint64_t u, size_t k) const {
  uint64_t floor = 0;
  for (const FlushRecord &f : w_.flushes)
    if (marker_index_.at(f.tag) < k)
      floor = std::max(floor, f.start_seq);
  const auto &h = w_.history[u];
  long durable = -1;
  for (long i = long(h.size()) - 1; i >= 0 && durable < 0; i--) {
    const Change &c = h[size_t(i)];
    if (c.seq <= floor || (c.fua_tag && marker_index_.at(c.fua_tag) < k))
      durable = i;
  }
  std::set<uint64_t> out;
  if (durable < 0)
    out.insert(initial_id(u));
  for (size_t i = size_t(std::max(durable, 0L)); i < h.size(); i++)
    out.insert(h[i].ids.begin(), h[i].ids.end());
  return out;
}

bool Runner::check_state(std::vector<uint8_t> bytes, size_t k, std::string &why) {
  auto mem = std::make_unique<qed::MemoryFile>(std::move(bytes), image_path_);
  qed::MemoryFile *raw = mem.get();
  qed::HeaderBytes hb;
  if (!raw->pread(hb.data(), hb.size(), 0).is_ok())
    return why = "header unreadable", false;
  const qed::Header header = qed::decode_header(hb);
  // Without a backing file, one sync covers data and metadata, so an entry
  // may point past the durable end of the file (it reads as unallocated, the
  // old content); with one, the data is durable before its entry.
  auto before = qed::check_image(*raw, header, qed::CheckMode::kReport);
  if (!before || !(s_.backing_bytes ? before->clean() : before->consistent()))
    return why = "check before repair: " +
                 (before ? before->problems.front() : before.status().message()), false;
  // Such entries are repaired only by a check, which only a dirty image gets
  // (from QEMU too).
  if (before->interrupted_entries && !header.needs_check())
    return why = "entries past the end of the file, but NEED_CHECK is not set: " +
                 before->problems.front(), false;
  qed::OpenOptions o;
  o.read_only = false;
  o.cache_bytes = 256 * 1024;
  qed::ChainState chain;
  auto img = qed::Image::open_file(image_path_, std::move(mem), o, chain);
  if (!img)
    return why = "open: " + img.status().message(), false;
  if (header.needs_check()) {
    auto after = qed::check_image(*raw, (*img)->header(), qed::CheckMode::kReport);
    // Leaks inside the file stay leaks (their space is punched out), since
    // clusters never move; anything else must be gone.
    if (!after || !after->clean())
      return why = "check after repair: " +
                   (after ? after->problems.front() : after.status().message()), false;
  }
  std::vector<uint8_t> disk(s_.disk_bytes), expect(kUnit);
  if (auto st = (*img)->read(disk.data(), disk.size(), 0); !st.is_ok())
    return why = "read: " + st.message(), false;
  for (uint64_t u = 0; u < units_; u++) {
    const uint8_t *p = &disk[u * kUnit];
    const uint64_t id = p[0] == 0 && std::memcmp(p, p + 1, kUnit - 1) == 0 ? kZeroId
                                                                            : qed::load_le64(p);
    const auto allowed = candidates(u, k);
    fill_unit(expect.data(), id, u);
    if (!allowed.count(id) || std::memcmp(p, expect.data(), kUnit) != 0) {
      why = "unit " + std::to_string(u) + " (offset " + std::to_string(u * kUnit) +
            ") holds id " + std::to_string(id) + ", allowed:";
      for (uint64_t a : allowed)
        why.append(" ").append(std::to_string(a));
      if (std::getenv("QED_CRASH_DEBUG")) {
        why += "; history:";
        for (const Change &c : w_.history[u]) {
          why += " [seq " + std::to_string(c.seq) + " fua " + std::to_string(c.fua_tag) + " ids";
          for (uint64_t i : c.ids)
            why.append(" ").append(std::to_string(i));
          why += "]";
        }
        for (const FlushRecord &f : w_.flushes)
          why += " flush(start " + std::to_string(f.start_seq) + " at " +
                 std::to_string(marker_index_.at(f.tag)) + ")";
      }
      return false;
    }
  }
  return true;
}

uint64_t Runner::verify(uint64_t states, uint64_t &violations) {
  std::mt19937_64 rng(seed_ ^ 0x5eed);
  const size_t n = states_->log().size();
  // Crash points in increasing order, so the synced base is built once.
  std::vector<size_t> points(states);
  for (auto &p : points)
    p = size_t(rng() % (n + 1));
  std::sort(points.begin(), points.end());
  uint64_t checked = 0;
  for (size_t k : points) {
    const unsigned r = unsigned(rng() % 10);
    const auto survival = r < 2 ? crash::Survival::kNone
                          : r < 4 ? crash::Survival::kAll
                                  : crash::Survival::kRandom;
    std::string why;
    checked++;
    if (!check_state(states_->state_at(k, survival, rng), k, why)) {
      if (violations++ < 5)
        std::fprintf(stderr, "VIOLATION %s seed %llu crash point %zu/%zu: %s\n", s_.name,
                     (unsigned long long)seed_, k, n, why.c_str());
      if (violations == 1 && std::getenv("QED_CRASH_DEBUG")) {
        const auto &log = states_->log();
        for (size_t i = 0; i < log.size() && i < k + 5; i++)
          std::fprintf(stderr, "  log %zu: op %d off %llu len %llu first8 %llx\n", i, int(log[i].kind),
                       (unsigned long long)log[i].offset, (unsigned long long)log[i].length,
                       log[i].bytes.size() >= 8 ? (unsigned long long)qed::load_le64(log[i].bytes.data()) : 0ull);
      }
    }
  }
  return checked;
}

}  // namespace

int main() {
  const char *env_states = std::getenv("QED_CRASH_STATES");
  const char *env_seed = std::getenv("QED_CRASH_SEED");
  const uint64_t total = env_states ? std::strtoull(env_states, nullptr, 10) : 12000;
  const uint64_t seed = env_seed ? std::strtoull(env_seed, nullptr, 10) : 20261125;
  const Scenario scenarios[] = {
      {"c4k-t1", 4096, 1, 4 << 20, 0},
      {"c4k-t4-backing", 4096, 4, 4 << 20, 3 << 20},
      {"c64k-t2", 65536, 2, 4 << 20, 0},
      {"c64k-t4-backing", 65536, 4, 4 << 20, 4 << 20},
      {"c16k-t16", 16384, 16, 4 << 20, 0},
      {"c16k-t8-backing", 16384, 8, 4 << 20, 1 << 20},
  };
  char tmpl[] = "/tmp/qed-crash-XXXXXX";
  if (!mkdtemp(tmpl))
    return 2;
  const std::string dir = tmpl;
  uint64_t checked = 0, violations = 0;
  const size_t count = sizeof scenarios / sizeof scenarios[0];
  bool ok = true;
  for (size_t i = 0; i < count; i++) {
    Runner runner(scenarios[i], seed + i, dir);
    if (!runner.record()) {
      ok = false;
      continue;
    }
    const uint64_t before = violations;
    const uint64_t n = runner.verify(total / count, violations);
    checked += n;
    std::printf("%-18s %6llu crash states, %llu violations\n", scenarios[i].name,
                (unsigned long long)n, (unsigned long long)(violations - before));
  }
  std::filesystem::remove_all(dir);
  std::printf("crash states: %llu checked over %zu geometries (with and without backing "
              "files), %llu violations\n",
              (unsigned long long)checked, count, (unsigned long long)violations);
  return ok && violations == 0 ? 0 : 1;
}
