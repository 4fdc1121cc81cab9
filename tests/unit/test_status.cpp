// Status, Result and the little-endian helpers.
#include <doctest/doctest.h>

#include <cerrno>
#include <string>

#include "lib/byte_order.h"
#include "lib/status.h"

using qed::Result;
using qed::Status;
using Code = qed::Status::Code;

TEST_SUITE_BEGIN("status");

TEST_CASE("Status constructors carry code, errno and message") {
  const Status ok;
  CHECK(ok.is_ok());
  CHECK(static_cast<bool>(ok));
  CHECK(ok.code() == Code::kOk);
  CHECK(ok.errno_value() == 0);
  CHECK(ok.message().empty());
  CHECK(Status::ok().is_ok());

  struct Case {
    Status s;
    Code code;
    int err;
  } cases[] = {
      {Status::io_error("io", ENOSPC), Code::kIoError, ENOSPC},
      {Status::io_error("io0", 0), Code::kIoError, EIO},
      {Status::corruption("c"), Code::kCorruption, EIO},
      {Status::invalid_argument("i"), Code::kInvalidArgument, EINVAL},
      {Status::not_supported("n"), Code::kNotSupported, ENOTSUP},
      {Status::no_space("s"), Code::kNoSpace, ENOSPC},
      {Status::read_only("r"), Code::kReadOnly, EROFS},
  };
  for (const Case &c : cases) {
    INFO(c.s.message());
    CHECK(!c.s.is_ok());
    CHECK(!static_cast<bool>(c.s));
    CHECK(c.s.code() == c.code);
    CHECK(c.s.errno_value() == c.err);
    CHECK(!c.s.message().empty());
  }
  CHECK(Status::corruption("bad table").message() == "bad table");
}

TEST_CASE("with_context prefixes failures only") {
  const Status s = Status::corruption("bad magic").with_context("/x/a.qed");
  CHECK(s.message() == "/x/a.qed: bad magic");
  CHECK(s.code() == Code::kCorruption);
  CHECK(s.errno_value() == EIO);
  const Status io = Status::io_error("read", EACCES).with_context("ctx");
  CHECK(io.errno_value() == EACCES);
  CHECK(io.code() == Code::kIoError);
  const Status ok = Status::ok().with_context("ctx");
  CHECK(ok.is_ok());
  CHECK(ok.message().empty());
}

namespace {

Result<int> half(int v) {
  if (v % 2)
    return Status::invalid_argument("odd");
  return v / 2;
}

int steps = 0;
Status step(bool fail) {
  steps++;
  return fail ? Status::no_space("full") : Status::ok();
}

Status run(bool fail_second) {
  QED_RETURN_IF_ERROR(step(false));
  QED_RETURN_IF_ERROR(step(fail_second));
  QED_RETURN_IF_ERROR(step(false));
  return Status::ok();
}

}  // namespace

TEST_CASE("Result holds a value or a status") {
  auto a = half(8);
  REQUIRE(a.is_ok());
  CHECK(*a == 4);
  CHECK(a.value() == 4);
  CHECK(a.status().is_ok());
  auto b = half(7);
  CHECK(!b.is_ok());
  CHECK(!static_cast<bool>(b));
  CHECK(b.status().code() == Code::kInvalidArgument);
  CHECK(b.status().message() == "odd");
}

TEST_CASE("QED_RETURN_IF_ERROR stops at the first failure") {
  steps = 0;
  CHECK(run(false).is_ok());
  CHECK(steps == 3);
  steps = 0;
  const Status s = run(true);
  CHECK(s.code() == Code::kNoSpace);
  CHECK(steps == 2);
}

TEST_SUITE_END();

TEST_SUITE_BEGIN("endian");

TEST_CASE("little-endian loads and stores") {
  const uint8_t b[8] = {0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef};
  CHECK(qed::load_le32(b) == 0x67452301u);
  CHECK(qed::load_le32(b + 4) == 0xefcdab89u);
  CHECK(qed::load_le64(b) == 0xefcdab8967452301ull);

  uint8_t out[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0x5a};
  qed::store_le64(out, 0xefcdab8967452301ull);
  for (int i = 0; i < 8; i++)
    CHECK(out[i] == b[i]);
  CHECK(out[8] == 0x5a);  // nothing past the value

  uint8_t o4[5] = {0, 0, 0, 0, 0x77};
  qed::store_le32(o4, 0x80000001u);
  CHECK(o4[0] == 0x01);
  CHECK(o4[1] == 0x00);
  CHECK(o4[2] == 0x00);
  CHECK(o4[3] == 0x80);
  CHECK(o4[4] == 0x77);

  // Unaligned addresses and extreme values.
  uint8_t buf[16] = {};
  for (uint64_t v : {0ull, 1ull, 0xffull, 0x100ull, 0x8000000000000000ull, ~0ull,
                     0x0102030405060708ull}) {
    qed::store_le64(buf + 3, v);
    CHECK(qed::load_le64(buf + 3) == v);
    uint64_t manual = 0;
    for (int i = 7; i >= 0; i--)
      manual = manual << 8 | buf[3 + i];
    CHECK(manual == v);
  }
}

TEST_SUITE_END();
