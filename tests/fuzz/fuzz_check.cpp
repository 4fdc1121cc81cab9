// libFuzzer target: the check and repair over arbitrary files. After a repair
// a second check must find no invalid entry and no duplicate reference, and
// the repaired image must open, read and write cleanly.
#include <cstdio>
#include <cstdlib>

#include "check.h"
#include "fuzz_image.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < qed::kHeaderBytes || size > (4u << 20))
    return 0;
  qed::MemoryFile file(std::vector<uint8_t>(data, data + size), "fuzz.qed");
  qed::HeaderBytes hb;
  (void)file.pread(hb.data(), hb.size(), 0);
  const qed::Header h = qed::decode_header(hb);
  if (!qed::validate_header(h, size).is_ok())
    return 0;
  // Keep each run cheap: the check's memory is two bits per cluster, but huge
  // tables of a hostile geometry take long to walk.
  if (uint64_t(h.table_size) * h.cluster_size > (1u << 20))
    return 0;
  auto report = qed::check_image(file, h, qed::CheckMode::kReport);
  if (!report)
    std::abort();  // a memory file never fails to read
  auto repaired = qed::check_image(file, h, qed::CheckMode::kRepair);
  if (!repaired)
    std::abort();
  auto again = qed::check_image(file, h, qed::CheckMode::kReport);
  if (!again || !again->clean()) {
    for (const std::string &p : repaired->problems)
      std::fprintf(stderr, "repaired: %s\n", p.c_str());
    if (again)
      for (const std::string &p : again->problems)
        std::fprintf(stderr, "left: %s\n", p.c_str());
    std::abort();
  }
  if (auto image = fuzz::open_memory(file.contents(), false)) {
    fuzz::exercise_read(*image);
    fuzz::exercise_write(*image, size);
    (void)image->close();
  }
  return 0;
}
