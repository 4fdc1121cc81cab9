// Status and Result<T>: how the engine reports failure without exceptions.
//
// The engine never logs and never throws on I/O or format errors; each call
// returns a Status that carries a code, an errno value for the NBD client and a
// message that names the file and the problem. The plugin is the only place
// that turns a Status into nbdkit_error + nbdkit_set_error.
#pragma once

#include <cerrno>
#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace qed {

class Status {
public:
  enum class Code {
    kOk,
    kIoError,          // a system call failed; errno says which way
    kCorruption,       // on-disk metadata is invalid
    kInvalidArgument,  // the caller asked for something impossible
    kNotSupported,     // valid, but not something we do (unknown features, formats)
    kNoSpace,          // the image or the file system is full
    kReadOnly,         // a write to something opened read-only
  };

  Status() = default;

  static Status ok() { return Status(); }
  static Status io_error(std::string msg, int err) {
    return Status(Code::kIoError, err ? err : EIO, std::move(msg));
  }
  static Status corruption(std::string msg) {
    return Status(Code::kCorruption, EIO, std::move(msg));
  }
  static Status invalid_argument(std::string msg) {
    return Status(Code::kInvalidArgument, EINVAL, std::move(msg));
  }
  static Status not_supported(std::string msg) {
    return Status(Code::kNotSupported, ENOTSUP, std::move(msg));
  }
  static Status no_space(std::string msg) {
    return Status(Code::kNoSpace, ENOSPC, std::move(msg));
  }
  static Status read_only(std::string msg) {
    return Status(Code::kReadOnly, EROFS, std::move(msg));
  }

  bool is_ok() const { return code_ == Code::kOk; }
  explicit operator bool() const { return is_ok(); }
  Code code() const { return code_; }
  // The errno a client should see for this failure (0 when ok).
  int errno_value() const { return errno_; }
  const std::string &message() const { return message_; }

  // A copy whose message starts with `context: `.
  Status with_context(const std::string &context) const;

private:
  Status(Code code, int err, std::string msg)
      : code_(code), errno_(err), message_(std::move(msg)) {}

  Code code_ = Code::kOk;
  int errno_ = 0;
  std::string message_;
};

// Either a value or a failed Status.
template <typename T>
class Result {
public:
  Result(T value) : value_(std::move(value)) {}
  Result(Status status) : status_(std::move(status)) {}

  bool is_ok() const { return value_.has_value(); }
  explicit operator bool() const { return is_ok(); }
  const Status &status() const { return status_; }
  T &value() { return *value_; }
  const T &value() const { return *value_; }
  T &operator*() { return *value_; }
  T *operator->() { return &*value_; }

private:
  std::optional<T> value_;
  Status status_;
};

}  // namespace qed

namespace qed {

// The text of an errno value, for messages. Not strerror(): strerrordesc_np
// is thread-safe and takes no locale lock (strerror under an ASan preload
// leaves that lock taken, and nbdkit then hangs at exit).
std::string errno_text(int err);

}  // namespace qed

// Return early from the enclosing function when `expr` yields a failed Status.
#define QED_RETURN_IF_ERROR(expr)              \
  do {                                         \
    ::qed::Status qed_status_tmp_ = (expr);    \
    if (!qed_status_tmp_.is_ok())              \
      return qed_status_tmp_;                  \
  } while (0)
