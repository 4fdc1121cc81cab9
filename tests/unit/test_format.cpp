// Header decoding, encoding, validation and the maximum image size.
#include <doctest/doctest.h>

#include <string>

#include "lib/format.h"
#include "tests/unit/test_util.h"

using qed::Header;
using qed::HeaderBytes;
using qed::Status;
using Code = qed::Status::Code;

TEST_SUITE_BEGIN("format");

TEST_CASE("decode_header reads every field at its byte offset, little-endian") {
  // Byte i holds i+1, so every field has a distinct, hand-computable value.
  HeaderBytes b;
  for (size_t i = 0; i < b.size(); i++)
    b[i] = uint8_t(i + 1);
  const Header h = qed::decode_header(b);
  CHECK(h.magic == 0x04030201u);
  CHECK(h.cluster_size == 0x08070605u);
  CHECK(h.table_size == 0x0c0b0a09u);
  CHECK(h.header_size == 0x100f0e0du);
  CHECK(h.features == 0x1817161514131211ull);
  CHECK(h.compat_features == 0x201f1e1d1c1b1a19ull);
  CHECK(h.autoclear_features == 0x2827262524232221ull);
  CHECK(h.l1_table_offset == 0x302f2e2d2c2b2a29ull);
  CHECK(h.image_size == 0x3837363534333231ull);
  CHECK(h.backing_filename_offset == 0x3c3b3a39u);
  CHECK(h.backing_filename_size == 0x403f3e3du);
  // And back to the very same bytes.
  CHECK(qed::encode_header(h) == b);
}

TEST_CASE("encode_header writes a qemu-img style header byte for byte") {
  Header h;
  h.cluster_size = 65536;
  h.table_size = 4;
  h.header_size = 1;
  h.features = 0x5;
  h.compat_features = 0;
  h.autoclear_features = 0x100;
  h.l1_table_offset = 65536;
  h.image_size = 0x123456789a00ull;
  h.backing_filename_offset = 64;
  h.backing_filename_size = 9;
  const uint8_t expected[64] = {
      'Q', 'E', 'D', 0,                  // magic
      0x00, 0x00, 0x01, 0x00,            // cluster_size 65536
      0x04, 0x00, 0x00, 0x00,            // table_size 4
      0x01, 0x00, 0x00, 0x00,            // header_size 1
      0x05, 0, 0, 0, 0, 0, 0, 0,         // features
      0, 0, 0, 0, 0, 0, 0, 0,            // compat
      0x00, 0x01, 0, 0, 0, 0, 0, 0,      // autoclear 0x100
      0x00, 0x00, 0x01, 0, 0, 0, 0, 0,   // l1 offset 65536
      0x00, 0x9a, 0x78, 0x56, 0x34, 0x12, 0, 0,  // image size
      0x40, 0, 0, 0,                     // backing name offset 64
      0x09, 0, 0, 0,                     // backing name size 9
  };
  const HeaderBytes b = qed::encode_header(h);
  for (size_t i = 0; i < 64; i++) {
    INFO("byte " << i);
    CHECK(b[i] == expected[i]);
  }
  const Header d = qed::decode_header(b);
  CHECK(d.magic == qed::kMagic);
  CHECK(d.cluster_size == h.cluster_size);
  CHECK(d.table_size == h.table_size);
  CHECK(d.header_size == h.header_size);
  CHECK(d.features == h.features);
  CHECK(d.compat_features == h.compat_features);
  CHECK(d.autoclear_features == h.autoclear_features);
  CHECK(d.l1_table_offset == h.l1_table_offset);
  CHECK(d.image_size == h.image_size);
  CHECK(d.backing_filename_offset == h.backing_filename_offset);
  CHECK(d.backing_filename_size == h.backing_filename_size);
  CHECK(d.has_backing_file());
  CHECK(!d.needs_check());
  CHECK(d.backing_is_raw());
}

TEST_CASE("round trip of random headers") {
  qt::Rng r(7);
  for (int i = 0; i < 200; i++) {
    HeaderBytes b;
    for (auto &x : b)
      x = uint8_t(r.next());
    CHECK(qed::encode_header(qed::decode_header(b)) == b);
  }
}

namespace {

// A valid header: 64 KiB clusters, 4-cluster tables, L1 right after the header.
Header good_header() {
  Header h;
  h.cluster_size = 65536;
  h.table_size = 4;
  h.header_size = 1;
  h.l1_table_offset = 65536;
  h.image_size = 1ull << 30;
  return h;
}
constexpr uint64_t kGoodFileSize = 5 * 65536;

void expect_refused(const Header &h, uint64_t file_size, Code code, const std::string &needle) {
  const Status s = qed::validate_header(h, file_size);
  INFO("message: " << s.message());
  CHECK(!s.is_ok());
  CHECK(s.code() == code);
  CHECK(s.message().find(needle) != std::string::npos);
  CHECK(s.errno_value() != 0);
}

}  // namespace

TEST_CASE("validate_header accepts good headers") {
  CHECK(qed::validate_header(good_header(), kGoodFileSize).is_ok());

  SUBCASE("table size 1") {
    Header h = good_header();
    h.table_size = 1;
    const Status s = qed::validate_header(h, 2 * 65536);
    INFO(s.message());
    CHECK(s.is_ok());
  }
  SUBCASE("header size 2 with the backing name in the second cluster") {
    Header h = good_header();
    h.header_size = 2;
    h.l1_table_offset = 2 * 65536;
    h.features = qed::kFeatureBackingFile;
    h.backing_filename_offset = 65536 + 100;
    h.backing_filename_size = 20;
    const Status s = qed::validate_header(h, 6 * 65536);
    INFO(s.message());
    CHECK(s.is_ok());
  }
  SUBCASE("image size 0 and exactly the maximum") {
    Header h = good_header();
    h.image_size = 0;
    CHECK(qed::validate_header(h, kGoodFileSize).is_ok());
    h.image_size = 64ull << 40;
    CHECK(qed::validate_header(h, kGoodFileSize).is_ok());
  }
  SUBCASE("known feature bits, unknown compat and autoclear bits") {
    Header h = good_header();
    h.features = qed::kFeatureNeedCheck;
    h.compat_features = ~0ull;
    h.autoclear_features = ~0ull;
    CHECK(qed::validate_header(h, kGoodFileSize).is_ok());
  }
  SUBCASE("every valid cluster size and table size") {
    for (uint32_t cs = 4096; cs && cs <= (64u << 20); cs <<= 1)
      for (uint32_t ts = 1; ts <= 16; ts <<= 1) {
        Header h = good_header();
        h.cluster_size = cs;
        h.table_size = ts;
        h.l1_table_offset = cs;
        h.image_size = 1 << 20;
        const Status s = qed::validate_header(h, uint64_t(cs) * (1 + ts));
        INFO("cs " << cs << " ts " << ts << ": " << s.message());
        CHECK(s.is_ok());
      }
  }
}

TEST_CASE("validate_header refuses each bad field") {
  Header h = good_header();
  uint64_t fs = kGoodFileSize;

  SUBCASE("bad magic") {
    h.magic = 0x00444552;  // "RED\0"
    expect_refused(h, fs, Code::kCorruption, "magic");
  }
  SUBCASE("unknown feature bit 0x8") {
    h.features = 0x8 | qed::kFeatureNeedCheck;
    expect_refused(h, fs, Code::kNotSupported, "0x8");
    const Status s = qed::validate_header(h, fs);
    CHECK(s.errno_value() == ENOTSUP);
    CHECK(s.message().find("feature") != std::string::npos);
  }
  SUBCASE("unknown high feature bit") {
    h.features = 1ull << 63;
    expect_refused(h, fs, Code::kNotSupported, "0x8000000000000000");
  }
  SUBCASE("cluster size 1000") {
    h.cluster_size = 1000;
    expect_refused(h, fs, Code::kCorruption, "cluster size 1000");
  }
  SUBCASE("cluster size 2048") {
    h.cluster_size = 2048;
    expect_refused(h, fs, Code::kCorruption, "cluster size 2048");
  }
  SUBCASE("cluster size 128M") {
    h.cluster_size = 128u << 20;
    expect_refused(h, fs, Code::kCorruption, "cluster size 134217728");
  }
  SUBCASE("cluster size 3*4096") {
    h.cluster_size = 3 * 4096;
    expect_refused(h, fs, Code::kCorruption, "cluster size 12288");
  }
  SUBCASE("cluster size 0") {
    h.cluster_size = 0;
    expect_refused(h, fs, Code::kCorruption, "cluster size 0");
  }
  SUBCASE("table size 0") {
    h.table_size = 0;
    expect_refused(h, fs, Code::kCorruption, "table size 0");
  }
  SUBCASE("table size 3") {
    h.table_size = 3;
    expect_refused(h, fs, Code::kCorruption, "table size 3");
  }
  SUBCASE("table size 32") {
    h.table_size = 32;
    expect_refused(h, fs, Code::kCorruption, "table size 32");
  }
  SUBCASE("header size 0") {
    h.header_size = 0;
    expect_refused(h, fs, Code::kCorruption, "header size is 0 clusters; it must be at least 1");
  }
  SUBCASE("header size larger than the file") {
    h.header_size = 0xffffffffu;
    expect_refused(h, fs, Code::kCorruption, "header size");
  }
  SUBCASE("image size not a multiple of 512") {
    h.image_size = (1ull << 30) + 100;
    expect_refused(h, fs, Code::kCorruption, "multiple of 512");
  }
  SUBCASE("image size above the maximum") {
    h.image_size = (64ull << 40) + 512;
    expect_refused(h, fs, Code::kCorruption, "maximum");
  }
  SUBCASE("image size 2^64-512 with small clusters") {
    h.image_size = ~uint64_t(511);
    expect_refused(h, fs, Code::kCorruption, "maximum");
  }
  SUBCASE("L1 offset misaligned") {
    h.l1_table_offset = 65536 + 512;
    fs = 6 * 65536;
    expect_refused(h, fs, Code::kCorruption, "L1");
    const Status s = qed::validate_header(h, fs);
    CHECK(s.message().find("multiple of the cluster size") != std::string::npos);
  }
  SUBCASE("L1 offset inside the header") {
    h.header_size = 2;
    h.l1_table_offset = 65536;
    fs = 8 * 65536;
    expect_refused(h, fs, Code::kCorruption, "inside the header");
  }
  SUBCASE("L1 offset 0") {
    h.l1_table_offset = 0;
    expect_refused(h, fs, Code::kCorruption, "inside the header");
  }
  SUBCASE("L1 table beyond the end of the file") {
    expect_refused(h, fs - 1, Code::kCorruption, "does not fit");
    expect_refused(h, 200000, Code::kCorruption, "does not fit");
  }
  SUBCASE("L1 offset far beyond the end, near 2^64") {
    h.l1_table_offset = ~uint64_t(65535);
    expect_refused(h, fs, Code::kCorruption, "does not fit");
  }
  SUBCASE("backing name empty") {
    h.features = qed::kFeatureBackingFile;
    h.backing_filename_offset = 64;
    h.backing_filename_size = 0;
    expect_refused(h, fs, Code::kCorruption, "empty");
  }
  SUBCASE("backing name too long") {
    h.features = qed::kFeatureBackingFile;
    h.backing_filename_offset = 64;
    h.backing_filename_size = qed::kMaxBackingNameBytes + 1;
    expect_refused(h, fs, Code::kCorruption, "too long");
  }
  SUBCASE("backing name past the header cluster") {
    h.features = qed::kFeatureBackingFile;
    h.backing_filename_offset = 65536 - 10;
    h.backing_filename_size = 11;
    expect_refused(h, fs, Code::kCorruption, "ends past the header clusters (65536 bytes");
  }
  SUBCASE("backing name overlapping the header fields") {
    h.features = qed::kFeatureBackingFile;
    h.backing_filename_offset = 32;
    h.backing_filename_size = 10;
    expect_refused(h, fs, Code::kCorruption, "overlaps the 64-byte header");
  }
  SUBCASE("backing name offset near 2^32") {
    h.features = qed::kFeatureBackingFile;
    h.backing_filename_offset = 0xfffffff0u;
    h.backing_filename_size = 0x20;
    expect_refused(h, fs, Code::kCorruption, "ends past the header clusters");
  }
}

TEST_CASE("backing name fields are ignored without the backing feature") {
  Header h = good_header();
  h.backing_filename_offset = 0xfffffff0u;
  h.backing_filename_size = 0;
  CHECK(qed::validate_header(h, kGoodFileSize).is_ok());
}

TEST_CASE("max_image_size") {
  CHECK(qed::max_image_size(65536, 4) == 64ull << 40);
  CHECK(qed::max_image_size(4096, 4) == 16ull << 30);
  CHECK(qed::max_image_size(4096, 16) == 256ull << 30);
  CHECK(qed::max_image_size(65536, 16) == 1ull << 50);
  const uint64_t cap = ~uint64_t(0) - 511;  // 2^64 - 512
  CHECK(qed::max_image_size(64u << 20, 16) == cap);
  CHECK(qed::max_image_size(2u << 20, 16) == cap);
  CHECK(qed::max_image_size(4u << 20, 4) == cap);
  CHECK(qed::max_image_size(16u << 20, 1) == cap);
  CHECK(qed::max_image_size(1u << 20, 16) == 1ull << 62);
  CHECK(qed::max_image_size(8u << 20, 1) == 1ull << 63);
  CHECK(qed::max_image_size(4096, 1) == 1ull << 30);

  // Every geometry against log2 arithmetic: 2*log2(ts*cs/8) + log2(cs).
  for (unsigned cb = 12; cb <= 26; cb++)
    for (unsigned tb = 0; tb <= 4; tb++) {
      const unsigned bits = 2 * (tb + cb - 3) + cb;
      const uint64_t expected = bits >= 64 ? cap : uint64_t(1) << bits;
      INFO("cs 2^" << cb << " ts 2^" << tb);
      CHECK(qed::max_image_size(1u << cb, 1u << tb) == expected);
      CHECK(expected % 512 == 0);
    }
}

TEST_CASE("cluster and table size predicates") {
  for (uint64_t v = 0; v < (1u << 16); v++)
    CHECK(qed::is_valid_table_size(v) == (v == 1 || v == 2 || v == 4 || v == 8 || v == 16));
  int valid = 0;
  for (uint64_t v = 1; v <= (1ull << 40); v <<= 1) {
    const bool expect = v >= 4096 && v <= (64u << 20);
    CHECK(qed::is_valid_cluster_size(v) == expect);
    CHECK(!qed::is_valid_cluster_size(v + 512));  // never a power of two in range
    valid += expect;
  }
  CHECK(valid == 15);
  CHECK(!qed::is_valid_cluster_size(0));
  CHECK(!qed::is_valid_cluster_size(3 * 4096));
  CHECK(!qed::is_valid_cluster_size(1ull << 32));
}

TEST_SUITE_END();
