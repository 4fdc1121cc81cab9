// libFuzzer target: address translation over hostile tables. The input is a
// QED file whose header is first made valid and small (make_translatable), so
// every input reaches the L1 and L2 tables, which stay as hostile as the input
// makes them. The image is opened read-only and read where its tables point
// and at the edges, then read-write and written there. When the check finds
// the tables consistent (or the read-write open repairs them), every read must
// return what the target wrote, also after a close and a reopen; otherwise
// any failure must be a clean Status.
#include <cstring>

#include "lib/check.h"
#include "tests/fuzz/fuzz_image.h"
#include "tests/fuzz/qed_mutator.h"

namespace {

constexpr fuzz::MutatorProfile kProfile{true, 10};

}  // namespace

QED_FUZZ_IMAGE_MUTATOR_HOOKS(kProfile)

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < qed::kHeaderBytes || size > (1u << 20))
    return 0;
  qed::HeaderBytes hb;
  std::memcpy(hb.data(), data, hb.size());
  uint64_t needed;
  const qed::Header h = fuzz::make_translatable(qed::decode_header(hb), size, needed);
  std::vector<uint8_t> file(data, data + size);
  file.resize(needed);
  hb = qed::encode_header(h);
  std::memcpy(file.data(), hb.data(), hb.size());
  if (qed::Status s = qed::validate_header(h, file.size()); !s.is_ok())
    fuzz::fail("make_translatable gave an invalid header: " + s.message());

  const fuzz::Layout layout = fuzz::decode_layout(file.data(), file.size(), h);
  const std::vector<uint64_t> probes = fuzz::probe_points(layout, 16);
  // A dirty image opened read-write is repaired, so it is consistent then;
  // a clean one only if the check finds nothing but leaks (entries past the
  // end of the file are the traces of a crash only in an image marked dirty).
  bool consistent = h.needs_check();
  if (!consistent) {
    fuzz::BytesFile bytes(file.data(), file.size());
    auto report = qed::check_image(bytes, h, qed::CheckMode::kReport);
    if (!report)
      fuzz::fail("the check failed on a file in memory: " + report.status().message());
    consistent = report->clean();
  }
  if (auto ro = fuzz::open_memory(file, true))
    fuzz::exercise_read(*ro, probes);
  fuzz::exercise_read_write(std::move(file), probes, size * 131 + data[size - 1], consistent);
  return 0;
}
