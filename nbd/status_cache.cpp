#include "nbd/status_cache.h"

#include <algorithm>

namespace qed_nbd {

void StatusReply::add(uint64_t length, bool zero) {
  extents_++;
  if (ended_ || truncated_)
    return;
  if (length == 0 || pos_ >= end_) {
    ended_ = true;
    return;
  }
  const uint64_t end = pos_ + std::min(length, end_ - pos_);
  if (!spans_.empty() && spans_.back().zero == zero) {
    spans_.back().end = end;
  } else if (spans_.size() == StatusCache::kMaxSpans) {
    truncated_ = true;
    return;
  } else {
    spans_.push_back(Span{end, zero});
  }
  pos_ = end;
}

void StatusReply::reset() {
  pos_ = offset_;
  spans_.clear();
  extents_ = 0;
  truncated_ = false;
  ended_ = false;
}

std::optional<qed::File::Region> StatusCache::find(uint64_t offset, uint64_t limit) {
  qed::MutexLock lock(mu_);
  for (Slot &slot : slots_) {
    const StatusReply &r = slot.reply;
    if (slot.used == 0 || offset < r.offset_ || offset >= r.pos_)
      continue;
    const auto span = std::upper_bound(
        r.spans_.begin(), r.spans_.end(), offset,
        [](uint64_t off, const StatusReply::Span &s) { return off < s.end; });
    if (span == r.spans_.end())
      continue;  // cannot happen: offset < pos_, the end of the last span
    slot.used = ++clock_;
    return qed::File::Region{span->zero, std::min(span->end - offset, limit)};
  }
  return std::nullopt;
}

void StatusCache::insert(StatusReply &&reply) {
  qed::MutexLock lock(mu_);
  const uint64_t covered = reply.pos_ - reply.offset_;
  if (reply.truncated_)
    window_ = std::max(kMinWindow, covered);  // as dense ahead as here, about kMaxSpans
  else if (reply.pos_ >= reply.end_ && reply.extents_ <= kMaxSpans / 4)
    window_ = std::min(window_ * 2, kMaxWindow);
  if (covered == 0)
    return;
  Slot *victim = &slots_[0];
  for (Slot &slot : slots_) {
    if (slot.used != 0 && slot.reply.offset_ == reply.offset_) {
      victim = &slot;  // the same question asked twice at once: one answer is enough
      break;
    }
    if (slot.used < victim->used)
      victim = &slot;
  }
  victim->reply = std::move(reply);
  victim->used = ++clock_;
}

void StatusCache::clear() {
  qed::MutexLock lock(mu_);
  for (Slot &slot : slots_)
    slot = Slot();
  window_ = kMaxWindow;
}

uint64_t StatusCache::window() {
  qed::MutexLock lock(mu_);
  return window_;
}

}  // namespace qed_nbd
