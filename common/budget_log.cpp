#include "budget_log.h"

#include <cinttypes>
#include <mutex>
#include <set>
#include <string>

#include "check_log.h"

namespace qed_nbdkit {

void log_cache_budgets(const qed::Image &image, const char *key) {
  static std::mutex mu;
  static std::set<std::string> logged;  // guarded by mu
  for (const qed::Image::CacheBudget &b : image.cache_budgets()) {
    if (b.budget <= b.requested)
      continue;
    const std::string line = b.path + ": " + key + "=" + std::to_string(b.requested) +
                             " is below what this image needs, room for 4 of its L2 tables (" +
                             std::to_string(b.table) + " bytes each): its cache may take " +
                             std::to_string(b.budget) + " bytes";
    std::lock_guard lock(mu);
    if (logged.insert(line).second)
      log_info("%s", line.c_str());
  }
}

}  // namespace qed_nbdkit
