#include "lib/backing_store.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>

namespace qed {

bool is_uri(const std::string &name) {
  const size_t colon = name.find(':');
  return colon != std::string::npos && name.find('/') > colon;
}

Result<std::string> posix_identity(const std::string &path) {
  struct stat st;
  if (::stat(path.c_str(), &st) < 0)
    return Status::io_error(path + ": " + errno_text(errno), errno);
  return std::string("file ")
      .append(std::to_string(uint64_t(st.st_dev)))
      .append(":")
      .append(std::to_string(uint64_t(st.st_ino)));
}

Result<std::string> PosixBackingStore::identity(const std::string &path) {
  return posix_identity(path);
}

Result<std::unique_ptr<File>> PosixBackingStore::open(const std::string &path,
                                                      const BackingPlace &) {
  return open_posix_file(path, OpenMode::kReadOnly, LockAccess::kRead, locking_);
}

// The engine puts the name in front of the message.
Result<std::string> RefusingBackingStore::identity(const std::string &) {
  return Status::not_supported(reason_);
}

Result<std::unique_ptr<File>> RefusingBackingStore::open(const std::string &,
                                                         const BackingPlace &) {
  return Status::not_supported(reason_);
}

}  // namespace qed
