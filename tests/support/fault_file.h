// Files for tests, not part of the shipped engine: an in-memory file, and a
// wrapper that injects failures and records every mutating operation (the raw
// material of crash simulation).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <vector>

#include "tests/support/crash_record.h"
#include "lib/file.h"

namespace qed {

// An in-memory file, in chunks of 64 KiB made on first write (so a growing
// file never moves, and chunks stay small enough for the allocator to reuse).
// Whole chunks of zeroes are freed. mu_ guards everything: readers share it,
// mutations take it exclusively.
class MemoryFile final : public File {
public:
  explicit MemoryFile(std::string name = "memory") : name_(std::move(name)) {}
  explicit MemoryFile(std::vector<uint8_t> bytes, std::string name = "memory");

  const std::string &name() const override { return name_; }
  Status pread(void *buf, size_t count, uint64_t offset) override;
  Status pwrite(const void *buf, size_t count, uint64_t offset) override;
  Status sync() override { return Status::ok(); }
  Result<uint64_t> size() override;
  Status truncate(uint64_t size) override;
  Status extend_to(uint64_t size, uint64_t preferred = 0) override;
  Status punch_hole(uint64_t offset, uint64_t count) override;
  Status zero_range(uint64_t offset, uint64_t count) override;

  std::vector<uint8_t> contents() const;

private:
  static constexpr uint64_t kChunkBytes = 64 * 1024;
  uint8_t *chunk_locked(uint64_t index, uint64_t keep_from, uint64_t keep_to);
  void write_locked(const uint8_t *p, uint64_t count, uint64_t offset);
  void zero_locked(uint64_t offset, uint64_t count);  // within the file

  const std::string name_;
  mutable std::shared_mutex mu_;
  uint64_t size_ = 0;                                // guarded by mu_
  std::vector<std::unique_ptr<uint8_t[]>> chunks_;   // guarded by mu_; null: zeroes
};

// The operations failures are armed for (what a FaultFile records is a
// crash::Record: crash_record.h).
enum class FileOp { kRead, kWrite, kSync, kTruncate, kExtend, kPunch, kZero, kCount };

// Wraps another file. Failures are armed per operation kind; a recorded
// operation is appended to the log only if it reached the inner file.
// mu_ guards the log and the failure plan.
class FaultFile final : public File {
public:
  // What the log holds: the model's record (one type for every recorder).
  using Record = crash::Record;

  explicit FaultFile(std::shared_ptr<File> inner) : inner_(std::move(inner)) {}

  // The `nth` (1-based, counted from now) call of `op` fails with `err`.
  void fail_nth(FileOp op, uint64_t nth, int err);
  // From now on every call of `op` fails with `err` with probability 1/n,
  // decided by a deterministic generator seeded with `seed`.
  void fail_one_in(FileOp op, uint32_t n, uint64_t seed, int err);
  void clear_failures();
  void set_recording(bool on);
  // Appends a kMarker record with `tag` in `offset`: tests use it to note in
  // the log when an operation above the file (a flush) returned.
  void add_marker(uint64_t tag);
  std::vector<Record> records() const;
  // The log, moved out (it holds every byte written): the log is empty after.
  std::vector<Record> take_records();
  uint64_t calls(FileOp op) const { return calls_[size_t(op)].load(); }

  const std::string &name() const override { return inner_->name(); }
  Status pread(void *buf, size_t count, uint64_t offset) override;
  Status pwrite(const void *buf, size_t count, uint64_t offset) override;
  Status sync() override;
  Result<uint64_t> size() override { return inner_->size(); }
  Status truncate(uint64_t size) override;
  Status extend_to(uint64_t size, uint64_t preferred = 0) override;
  Status punch_hole(uint64_t offset, uint64_t count) override;
  Status zero_range(uint64_t offset, uint64_t count) override;

private:
  struct Plan {
    uint64_t nth = 0;       // 0: not armed
    uint32_t one_in = 0;    // 0: not armed
    uint64_t rng = 0;
    int err = EIO;
  };
  Status maybe_fail(FileOp op);
  void record(crash::Kind kind, uint64_t offset, uint64_t length, const void *bytes);

  std::shared_ptr<File> inner_;
  std::atomic<uint64_t> calls_[size_t(FileOp::kCount)] = {};
  // Held across each mutating call and its record, so that the log's order is
  // the order in which the calls took effect: crash simulation depends on it
  // (a write that landed before a sync but was logged after it would look
  // optional to a crash after that sync).
  std::mutex order_mu_;
  mutable std::mutex mu_;
  Plan plans_[size_t(FileOp::kCount)];  // guarded by mu_
  bool recording_ = false;              // guarded by mu_
  std::vector<Record> log_;             // guarded by mu_
};

}  // namespace qed
