// The structure-aware mutator of the image targets (fuzz_translate and
// fuzz_check, whose input is a QED file). Random bytes rarely make the
// structures that break a QED reader; what does is entries pointing past the
// end of the file, into the header, into the L1 table, into their own table or
// at a cluster another entry uses, and header fields at their edges. So the
// mutator decodes the header, the L1 table and the L2 tables of its input with
// the engine's own decoders (fuzz_image.h) and changes them as fields:
//   - an entry (L1 or L2) set to an offset at or past the end of the file,
//     inside the header, inside or just after the L1 table, inside its own
//     table, at another table, huge, or any of those made unaligned;
//   - an entry copied from another one (a shared data cluster, a table shared
//     by two L1 entries, data at a table, a table at data), or two swapped;
//   - a header field at its edges: cluster and table size, header size,
//     feature bits, image size, L1 offset, backing file name offset and size;
//   - the file cut or extended at cluster and table edges;
//   - a new data cluster or L2 table appended and linked in;
// and falls back to libFuzzer's byte mutation for the rest (and for inputs
// whose header it cannot read).
//
// QED_FUZZ_MUTATOR=off in the environment turns it off (plain byte mutation),
// to measure what it adds.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fuzz {

struct MutatorProfile {
  // Decode the input as fuzz_translate sees it (header made valid first).
  bool translatable;
  // Out of 100 mutations, how many change a header field.
  unsigned header_percent;
};

// LLVMFuzzerCustomMutator for an image target.
size_t mutate_image(uint8_t *data, size_t size, size_t max_size, unsigned seed,
                    const MutatorProfile &profile);

// LLVMFuzzerCustomCrossOver for an image target: the header and L1 table of
// one input with L2 tables of the other, or a cluster-aligned splice.
size_t cross_over_images(const uint8_t *data1, size_t size1, const uint8_t *data2, size_t size2,
                         uint8_t *out, size_t max_out_size, unsigned seed,
                         const MutatorProfile &profile);

}  // namespace fuzz

// Defines libFuzzer's mutator hooks of an image target with `profile` (a
// constexpr fuzz::MutatorProfile): one line per target instead of two
// extern "C" definitions each.
#define QED_FUZZ_IMAGE_MUTATOR_HOOKS(profile)                                                    \
  extern "C" size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size,         \
                                            unsigned seed) {                                     \
    return fuzz::mutate_image(data, size, max_size, seed, profile);                              \
  }                                                                                              \
  extern "C" size_t LLVMFuzzerCustomCrossOver(const uint8_t *data1, size_t size1,                \
                                              const uint8_t *data2, size_t size2, uint8_t *out,  \
                                              size_t max_out_size, unsigned seed) {              \
    return fuzz::cross_over_images(data1, size1, data2, size2, out, max_out_size, seed,          \
                                   profile);                                                     \
  }
