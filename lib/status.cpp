#include "lib/status.h"

#include <cstring>

namespace qed {

Status Status::with_context(const std::string &context) const {
  if (is_ok())
    return *this;
  return Status(code_, errno_, context + ": " + message_);
}

std::string errno_text(int err) {
  if (const char *text = strerrordesc_np(err))
    return text;
  return "error " + std::to_string(err);
}

}  // namespace qed
