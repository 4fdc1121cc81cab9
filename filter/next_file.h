// The export of the plugin below the filter, as one more implementation of the
// engine's File: reads go into the plugin (or the next filter down) through
// the nbdkit_next context of the connection whose request is running. Read-
// only: every call that would change the export fails with kReadOnly without
// reaching the plugin.
//
// Why the context comes with the calling thread: one Image (and so one
// NextFile) serves every connection, while each connection reads through
// the context nbdkit opened for it (served.h says why), valid only during
// that connection's callbacks. Every filter callback that may reach the
// engine names its context first (a Through on its stack); the engine does
// its I/O on the thread that called it, so the file finds the context there.
// nbdkit's thread model applies to those contexts as to any filter's, so no
// serialisation of our own is needed.
//
// Thread safety: every method may be called from many threads at once. The
// size and limits are fixed at construction.
#pragma once

#include <cstdint>
#include <string>

#include "lib/file.h"

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
  // The context of the layer below for calls on this thread, for as long as
  // it lives (they nest: the inner one applies, the outer one comes back).
  class Through {
  public:
    explicit Through(nbdkit_next_ops *next);
    ~Through();
    Through(const Through &) = delete;
    Through &operator=(const Through &) = delete;

  private:
    nbdkit_next_ops *const outer_;
  };

  // `size` is the get_size answer of the layer below (the same through every
  // connection's context).
  NextFile(std::string name, uint64_t size, NextLimits limits);

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
  // One pread into the layer below (count within max_request), through this
  // thread's context.
  qed::Status call_pread(uint8_t *buf, uint32_t count, uint64_t offset);
  qed::Status refuse_write(const char *what) const;

  const std::string name_;
  const uint64_t size_;
  const NextLimits limits_;
};

}  // namespace qed_filter
