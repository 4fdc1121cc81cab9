// printable() (common/printable.h): what reaches nbdkit's log and clients from
// names in images is text, unambiguous, and valid UTF-8 stays readable.
#include <doctest/doctest.h>

#include <string>

#include "common/printable.h"

using qed_nbdkit::printable;

TEST_SUITE_BEGIN("printable");

TEST_CASE("printable ASCII and valid UTF-8 stay as they are") {
  CHECK(printable("") == "");
  CHECK(printable("/images/base.raw") == "/images/base.raw");
  CHECK(printable("nbd+unix:///?socket=/run/b.sock") == "nbd+unix:///?socket=/run/b.sock");
  CHECK(printable("b\xc3\xa4se \xe2\x82\xac \xf0\x9f\x92\xbe") == "b\xc3\xa4se \xe2\x82\xac \xf0\x9f\x92\xbe");
  CHECK(printable("\xc2\xa0") == "\xc2\xa0");  // U+00A0, the first after the C1 controls
}

TEST_CASE("control characters, DEL and the backslash are escaped") {
  CHECK(printable("base\x1b[31m.raw") == "base\\x1b[31m.raw");
  CHECK(printable("a\nnbdkit: error: fake") == "a\\x0anbdkit: error: fake");
  CHECK(printable("\t\r\x7f") == "\\x09\\x0d\\x7f");
  CHECK(printable(std::string("a\0b", 3)) == "a\\x00b");
  CHECK(printable("C:\\base") == "C:\\\\base");
  // Escaping twice shows that it happened twice: the output reads back.
  CHECK(printable(printable("\x1b")) == "\\\\x1b");
}

TEST_CASE("C1 controls and bytes that are not UTF-8 are escaped byte by byte") {
  CHECK(printable("\xc2\x9b" "31m") == "\\xc2\\x9b31m");          // U+009B, CSI
  CHECK(printable("\x9b" "31m") == "\\x9b31m");                    // a lone CSI byte
  CHECK(printable("\xc3") == "\\xc3");                             // cut short
  CHECK(printable("\xc0\xaf") == "\\xc0\\xaf");                    // overlong '/'
  CHECK(printable("\xe0\x80\xaf") == "\\xe0\\x80\\xaf");           // overlong
  CHECK(printable("\xed\xa0\x80") == "\\xed\\xa0\\x80");           // a surrogate
  CHECK(printable("\xf4\x90\x80\x80") == "\\xf4\\x90\\x80\\x80");  // past U+10FFFF
  CHECK(printable("\xff\xfe") == "\\xff\\xfe");
}

TEST_SUITE_END();
