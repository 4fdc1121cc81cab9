#include "common/budget_log.h"

#include <cinttypes>
#include <set>
#include <string>

#include "common/check_log.h"
#include "lib/thread_annotations.h"

namespace qed_nbdkit {

namespace {

// The lines logged so far: each is logged once per process.
qed::Mutex logged_mu;
std::set<std::string> logged GUARDED_BY(logged_mu);

}  // namespace

void log_cache_budgets(const qed::Image &image, const char *key) {
  for (const qed::Image::CacheBudget &b : image.cache_budgets()) {
    if (b.budget <= b.requested)
      continue;
    const std::string line = b.path + ": " + key + "=" + std::to_string(b.requested) +
                             " is below what this image needs, room for 4 of its L2 tables (" +
                             std::to_string(b.table) + " bytes each): its cache may take " +
                             std::to_string(b.budget) + " bytes";
    qed::MutexLock lock(logged_mu);
    if (logged.insert(line).second)
      log_info("%s", line.c_str());
  }
}

}  // namespace qed_nbdkit
