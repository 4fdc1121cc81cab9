#include "tests/fuzz/disk_model.h"

#include <algorithm>
#include <cstring>

namespace fuzz {

DiskModel::DiskModel(uint64_t size, uint64_t cluster_size, BaseFill base, BaseZero base_zero)
    : size_(size),
      cluster_size_(cluster_size),
      base_(std::move(base)),
      base_zero_(std::move(base_zero)) {}

DiskModel::Page &DiskModel::own(std::shared_ptr<Page> &slot) {
  if (slot.use_count() > 1)  // shared with a copy of the model: copy on write
    slot = std::make_shared<Page>(*slot);
  return *slot;
}

DiskModel::Page &DiskModel::page(uint64_t index) {
  auto &slot = pages_[index];
  if (!slot) {
    slot = std::make_shared<Page>();
    if (base_) {
      base_(index * kPageBytes, slot->value, kPageBytes);
      std::memset(slot->state, kKnown, kPageBytes);
    } else {
      std::memset(slot->value, 0, kPageBytes);
      std::memset(slot->state, kUnknown, kPageBytes);
    }
    return *slot;
  }
  return own(slot);
}

const DiskModel::Page *DiskModel::find(uint64_t index) const {
  auto it = pages_.find(index);
  return it == pages_.end() ? nullptr : it->second.get();
}

// Calls fn(page, offset in page, offset in the range, length) for each piece
// of [pos, pos+len).
template <typename PageT, typename Fn>
static void for_pieces(uint64_t pos, uint64_t len, PageT &&get, Fn &&fn) {
  uint64_t done = 0;
  while (done < len) {
    const uint64_t at = pos + done;
    const uint64_t in_page = at % DiskModel::kPageBytes;
    const uint64_t n = std::min(len - done, DiskModel::kPageBytes - in_page);
    fn(get(at / DiskModel::kPageBytes), in_page, done, n);
    done += n;
  }
}

void DiskModel::resize(uint64_t size) {
  if (size < size_) {
    for (auto it = pages_.begin(); it != pages_.end();) {
      const uint64_t start = it->first * kPageBytes;
      if (start >= size) {
        it = pages_.erase(it);
        continue;
      }
      if (start + kPageBytes > size) {  // the page the new end falls in
        Page &p = own(it->second);
        const uint64_t from = size - start;
        if (base_) {
          base_(size, p.value + from, kPageBytes - from);
          std::memset(p.state + from, kKnown, kPageBytes - from);
        } else {
          std::memset(p.state + from, kUnknown, kPageBytes - from);
        }
      }
      ++it;
    }
  }
  size_ = size;
}

void DiskModel::write(uint64_t pos, const uint8_t *data, uint64_t len) {
  for_pieces(pos, len, [this](uint64_t i) -> Page & { return page(i); },
             [&](Page &p, uint64_t off, uint64_t from, uint64_t n) {
               std::memcpy(p.value + off, data + from, n);
               std::memset(p.state + off, kKnown, n);
             });
}

void DiskModel::zero(uint64_t pos, uint64_t len) {
  for_pieces(pos, len, [this](uint64_t i) -> Page & { return page(i); },
             [&](Page &p, uint64_t off, uint64_t, uint64_t n) {
               std::memset(p.value + off, 0, n);
               std::memset(p.state + off, kKnown, n);
             });
}

void DiskModel::trim(uint64_t pos, uint64_t len) {
  const uint64_t first = (pos + cluster_size_ - 1) / cluster_size_ * cluster_size_;
  const uint64_t last = (pos + len) / cluster_size_ * cluster_size_;
  if (first >= last)
    return;
  for_pieces(first, last - first, [this](uint64_t i) -> Page & { return page(i); },
             [&](Page &p, uint64_t off, uint64_t, uint64_t n) {
               for (uint64_t i = off; i < off + n; i++)
                 if (p.state[i] == kKnown)
                   p.state[i] = p.value[i] == 0 ? kKnown : kMaybeZero;
             });
}

void DiskModel::forget(uint64_t pos, uint64_t len) {
  for_pieces(pos, len, [this](uint64_t i) -> Page & { return page(i); },
             [&](Page &p, uint64_t off, uint64_t, uint64_t n) {
               std::memset(p.state + off, kUnknown, n);
             });
}

std::string DiskModel::check_read(uint64_t pos, const uint8_t *data, uint64_t len) {
  std::string problem;
  // An untouched page with a known base has nothing to settle: compare it
  // with the base, without making the page.
  uint64_t done = 0;
  while (base_ && done < len) {
    const uint64_t at = pos + done;
    const uint64_t in_page = at % kPageBytes;
    const uint64_t n = std::min(len - done, kPageBytes - in_page);
    if (pages_.count(at / kPageBytes) == 0) {
      uint8_t bytes[kPageBytes];
      base_(at, bytes, n);
      if (std::memcmp(bytes, data + done, n) != 0) {
        uint64_t i = 0;
        while (bytes[i] == data[done + i])
          i++;
        return "byte " + std::to_string(at + i) + " reads " + std::to_string(data[done + i]) +
               ", the model says " + std::to_string(bytes[i]) + " (never written)";
      }
    } else {
      problem = check_touched(at, data + done, n);
      if (!problem.empty())
        return problem;
    }
    done += n;
  }
  return base_ ? "" : check_touched(pos, data, len);
}

std::string DiskModel::check_touched(uint64_t pos, const uint8_t *data, uint64_t len) {
  std::string problem;
  for_pieces(pos, len, [this](uint64_t i) -> Page & { return page(i); },
             [&](Page &p, uint64_t off, uint64_t from, uint64_t n) {
               if (!problem.empty())
                 return;
               // The common case first: every byte known and equal.
               if (std::memcmp(p.value + off, data + from, n) == 0) {
                 std::memset(p.state + off, kKnown, n);
                 return;
               }
               for (uint64_t i = 0; i < n; i++) {
                 const uint8_t got = data[from + i];
                 const uint8_t want = p.value[off + i];
                 const State st = State(p.state[off + i]);
                 const bool ok = st == kUnknown || got == want || (st == kMaybeZero && got == 0);
                 if (!ok) {
                   problem = "byte " + std::to_string(pos + from + i) + " reads " +
                             std::to_string(got) + ", the model says " + std::to_string(want) +
                             (st == kMaybeZero ? " or 0" : "");
                   return;
                 }
                 p.value[off + i] = got;
                 p.state[off + i] = kKnown;
               }
             });
  return problem;
}

bool DiskModel::settle_zero(uint64_t pos, uint64_t len) {
  // Extents span the whole disk, which may be huge: untouched pages are not
  // made for this. They pass if their base is zero (or unknown); a base with
  // data is checked byte by byte (it is as large as a backing file at most).
  static const uint8_t kZeroes[kPageBytes] = {};
  auto settle_page = [&](Page &p, uint64_t from, uint64_t n) {
    if (std::memcmp(p.value + from, kZeroes, n) == 0) {  // the common case
      std::memset(p.state + from, kKnown, n);
      return true;
    }
    for (uint64_t i = from; i < from + n; i++) {
      if (p.state[i] == kKnown && p.value[i] != 0)
        return false;
      p.value[i] = 0;
      p.state[i] = kKnown;
    }
    return true;
  };
  const bool base_zero = !base_ || (base_zero_ && base_zero_(pos, len));
  if (base_zero && len / kPageBytes > pages_.size()) {
    for (auto &[index, p] : pages_) {
      const uint64_t start = index * kPageBytes;
      if (start + kPageBytes <= pos || start >= pos + len)
        continue;
      const uint64_t from = std::max(start, pos), to = std::min(start + kPageBytes, pos + len);
      if (!settle_page(own(p), from - start, to - from))
        return false;
    }
    return true;
  }
  uint64_t done = 0;
  while (done < len) {
    const uint64_t at = pos + done;
    const uint64_t in_page = at % kPageBytes;
    const uint64_t n = std::min(len - done, kPageBytes - in_page);
    auto it = pages_.find(at / kPageBytes);
    if (it != pages_.end()) {
      if (!settle_page(own(it->second), in_page, n))
        return false;
    } else if (!base_zero && !(base_zero_ && base_zero_(at, n))) {
      uint8_t bytes[kPageBytes];
      base_(at, bytes, n);
      for (uint64_t i = 0; i < n; i++)
        if (bytes[i] != 0)
          return false;
    }
    done += n;
  }
  return true;
}

void DiskModel::states(uint64_t pos, uint64_t n, uint8_t *values, uint8_t *states) const {
  uint64_t done = 0;
  while (done < n) {
    const uint64_t at = pos + done;
    const uint64_t in_page = at % kPageBytes;
    const uint64_t k = std::min(n - done, kPageBytes - in_page);
    if (const Page *p = find(at / kPageBytes)) {
      std::memcpy(values + done, p->value + in_page, k);
      std::memcpy(states + done, p->state + in_page, k);
    } else if (base_) {
      base_(at, values + done, k);
      std::memset(states + done, kKnown, k);
    } else {
      std::memset(values + done, 0, k);
      std::memset(states + done, kUnknown, k);
    }
    done += k;
  }
}

DiskModel::State DiskModel::state_at(uint64_t pos, uint8_t &value) const {
  if (const Page *p = find(pos / kPageBytes)) {
    value = p->value[pos % kPageBytes];
    return State(p->state[pos % kPageBytes]);
  }
  if (!base_) {
    value = 0;
    return kUnknown;
  }
  base_(pos, &value, 1);
  return kKnown;
}

void DiskModel::settle(uint64_t pos, uint8_t value) {
  Page &p = page(pos / kPageBytes);
  p.value[pos % kPageBytes] = value;
  p.state[pos % kPageBytes] = kKnown;
}

std::vector<uint64_t> DiskModel::touched_pages() const {
  std::vector<uint64_t> out;
  out.reserve(pages_.size());
  for (const auto &entry : pages_)
    out.push_back(entry.first);
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace fuzz
