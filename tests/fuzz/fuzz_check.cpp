// libFuzzer target: the check and repair over arbitrary files. The report must
// not write and must find what the repair finds; after a repair a second
// check must find no invalid entry and no duplicate reference, and the
// repaired image must open, read back what is written to it (where its tables
// pointed and at the edges), close consistent and read the same again.
#include <cstdio>
#include <cstdlib>

#include "lib/check.h"
#include "tests/fuzz/fuzz_image.h"
#include "tests/fuzz/qed_mutator.h"

namespace {

constexpr fuzz::MutatorProfile kProfile{false, 20};

}  // namespace

QED_FUZZ_IMAGE_MUTATOR_HOOKS(kProfile)

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < qed::kHeaderBytes || size > (4u << 20))
    return 0;
  qed::MemoryFile file(std::vector<uint8_t>(data, data + size), "fuzz.qed");
  qed::HeaderBytes hb;
  (void)file.pread(hb.data(), hb.size(), 0);
  const qed::Header h = qed::decode_header(hb);
  if (!qed::validate_header(h, size).is_ok())
    return 0;
  // Keep each run cheap: a run costs about the table entries it walks, and
  // the geometry arithmetic of big tables is fuzz_header's. 64 KiB tables
  // (8192 entries) still hold every shape of table a hostile file can have.
  if (uint64_t(h.table_size) * h.cluster_size > (64u << 10))
    return 0;
  const fuzz::Layout layout = fuzz::decode_layout(data, size, h);
  // The report reads through a read-only file: it must not write.
  fuzz::BytesFile input(data, size);
  auto report = qed::check_image(input, h, qed::CheckMode::kReport);
  if (!report)
    fuzz::fail("the check failed on a file in memory: " + report.status().message());
  if (std::getenv("QED_FUZZ_TRACE"))  // to read a finding
    std::fprintf(stderr, "qed-fuzz: check: %s\n", report->summary().c_str());
  auto repaired = qed::check_image(file, h, qed::CheckMode::kRepair);
  if (!repaired)
    fuzz::fail("the repair failed on a file in memory: " + repaired.status().message());
  if (repaired->invalid_entries != report->invalid_entries ||
      repaired->duplicate_refs != report->duplicate_refs ||
      repaired->leaked_clusters != report->leaked_clusters)
    fuzz::fail("the repair found other problems than the report: " + repaired->summary() +
               " against " + report->summary());
  auto again = qed::check_image(file, h, qed::CheckMode::kReport);
  if (!again || !again->clean()) {
    for (const std::string &p : repaired->problems)
      std::fprintf(stderr, "repaired: %s\n", p.c_str());
    if (again)
      for (const std::string &p : again->problems)
        std::fprintf(stderr, "left: %s\n", p.c_str());
    fuzz::fail("the repair left problems");
  }
  // Consistent now: clear NEED_CHECK as Image::open does after its repair, so
  // the open below does not walk the tables once more.
  if (h.needs_check()) {
    qed::Header clean = h;
    clean.features &= ~qed::kFeatureNeedCheck;
    hb = qed::encode_header(clean);
    (void)file.pwrite(hb.data(), hb.size(), 0);
  }
  // The probes come from the tables as they were: the repair cleared some.
  fuzz::exercise_read_write(file.contents(), fuzz::probe_points(layout, 16), size, true);
  return 0;
}
