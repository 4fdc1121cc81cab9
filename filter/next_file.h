// The export of the plugin below the filter, as one more implementation of the
// engine's File: reads go through an nbdkit_next context into the plugin (or
// the next filter down). Read-only: every call that would change the export
// fails with kReadOnly without reaching the plugin.
//
// Thread safety: every method may be called from many threads at once. The
// size and limits are fixed at construction. When the layer below does not
// accept parallel requests on one handle, call_mu_ serialises the calls into
// it (one context serves every connection, so nbdkit's own per-connection
// serialisation does not cover them); otherwise calls run concurrently.
#pragma once

#include <cstdint>
#include <mutex>
#include <optional>
#include <string>

#include "file.h"

struct nbdkit_next_ops;

namespace qed_filter {

// What the layer below accepts in one pread (its block_size answer, capped).
struct NextLimits {
  uint32_t alignment = 1;           // offsets and lengths are multiples of this
  uint32_t max_request = 32u << 20;  // a multiple of alignment
};

// The limits to use for a block_size answer of (minimum, maximum); (0, 0) is
// "no information". Requests stay at or below 32 MiB whatever the layer says,
// as NBD servers below an nbd plugin commonly refuse more.
NextLimits limits_from_block_size(uint32_t minimum, uint32_t maximum);

class NextFile final : public qed::File {
public:
  // `next` must be prepared and stay valid as long as this object; `size` is
  // its get_size answer.
  NextFile(std::string name, nbdkit_next_ops *next, uint64_t size, NextLimits limits,
           bool serialize);

  const std::string &name() const override { return name_; }
  // Bytes at or beyond the end of the export read as zeroes.
  qed::Status pread(void *buf, size_t count, uint64_t offset) override;
  qed::Status pwrite(const void *buf, size_t count, uint64_t offset) override;
  // Nothing is ever written, so there is nothing to make durable.
  qed::Status sync() override { return qed::Status::ok(); }
  qed::Result<uint64_t> size() override { return size_; }
  qed::Status truncate(uint64_t size) override;
  qed::Status extend_to(uint64_t size, uint64_t preferred = 0) override;
  qed::Status punch_hole(uint64_t offset, uint64_t count) override;
  qed::Status zero_range(uint64_t offset, uint64_t count) override;

private:
  // Reads [offset, offset+count), which lies within the export, obeying the
  // limits: whole blocks straight into `buf`, partial ones through a bounce
  // buffer.
  qed::Status read_within(uint8_t *buf, uint64_t count, uint64_t offset);
  // One pread into the layer below (count within max_request).
  qed::Status call_pread(uint8_t *buf, uint32_t count, uint64_t offset);
  qed::Status refuse_write(const char *what) const;

  const std::string name_;
  nbdkit_next_ops *const next_;
  const uint64_t size_;
  const NextLimits limits_;
  const bool serialize_;
  std::mutex call_mu_;  // held across each call into next_ when serialize_
};

}  // namespace qed_filter
