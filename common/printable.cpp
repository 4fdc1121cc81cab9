#include "common/printable.h"

#include <cstdint>

namespace qed_nbdkit {

namespace {

void escape(std::string &out, uint8_t byte) {
  static const char kHex[] = "0123456789abcdef";
  out.append("\\x").append(1, kHex[byte >> 4]).append(1, kHex[byte & 15]);
}

// The length of the valid UTF-8 sequence of two to four bytes at the start of
// `s` (a character from U+00A0 on: no C1 control, no overlong form, no
// surrogate, nothing past U+10FFFF), or 0.
size_t utf8_length(std::string_view s) {
  const auto b = [&](size_t i) { return uint8_t(s[i]); };
  const auto cont = [&](size_t i) { return i < s.size() && (b(i) & 0xc0) == 0x80; };
  const uint8_t lead = b(0);
  if (lead >= 0xc2 && lead <= 0xdf && cont(1))
    return lead == 0xc2 && b(1) < 0xa0 ? 0 : 2;  // C2 80..C2 9F: the C1 controls
  if (lead >= 0xe0 && lead <= 0xef && cont(1) && cont(2)) {
    if ((lead == 0xe0 && b(1) < 0xa0) || (lead == 0xed && b(1) >= 0xa0))
      return 0;  // overlong, or a surrogate
    return 3;
  }
  if (lead >= 0xf0 && lead <= 0xf4 && cont(1) && cont(2) && cont(3)) {
    if ((lead == 0xf0 && b(1) < 0x90) || (lead == 0xf4 && b(1) >= 0x90))
      return 0;  // overlong, or past U+10FFFF
    return 4;
  }
  return 0;
}

}  // namespace

std::string printable(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    const uint8_t c = uint8_t(text[i]);
    if (c == '\\') {
      out += "\\\\";
      i++;
    } else if (c >= 0x20 && c < 0x7f) {
      out += char(c);
      i++;
    } else if (const size_t n = c >= 0x80 ? utf8_length(text.substr(i)) : 0; n > 0) {
      out.append(text.substr(i, n));
      i += n;
    } else {
      escape(out, c);
      i++;
    }
  }
  return out;
}

}  // namespace qed_nbdkit
