#include "status.h"

namespace qed {

Status Status::with_context(const std::string &context) const {
  if (is_ok())
    return *this;
  return Status(code_, errno_, context + ": " + message_);
}

}  // namespace qed
