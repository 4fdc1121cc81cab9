#include "plugin/nbdkit_args.h"

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>

namespace qed_plugin {

namespace {

// nbdkit's options (server/options.h, the same from 1.32 to today): short
// ones that take a value, and every long one with whether it takes a value.
constexpr const char *kShortWithValue = "DegiPptuU";
constexpr char kShortReadOnly = 'r';

struct LongOption {
  const char *name;
  bool value;
  bool read_only;
};

constexpr LongOption kLongOptions[] = {
    {"ipv4-only", false, false},     {"ipv6-only", false, false},
    {"debug", true, false},          {"dump-config", false, false},
    {"dump-plugin", false, false},   {"exit-with-parent", false, false},
    {"export", true, false},         {"export-name", true, false},
    {"exportname", true, false},     {"filter", true, false},
    {"foreground", false, false},    {"no-fork", false, false},
    {"group", true, false},          {"help", false, false},
    {"ip-addr", true, false},        {"ipaddr", true, false},
    {"log", true, false},            {"long-options", false, false},
    {"mask-handshake", true, false}, {"new-style", false, false},
    {"newstyle", false, false},      {"no-sr", false, false},
    {"old-style", false, false},     {"oldstyle", false, false},
    {"pid-file", true, false},       {"pidfile", true, false},
    {"port", true, false},           {"read-only", false, true},
    {"readonly", false, true},       {"run", true, false},
    {"selinux-label", true, false},  {"short-options", false, false},
    {"single", false, false},        {"stdin", false, false},
    {"swap", false, false},          {"threads", true, false},
    {"tls", true, false},            {"tls-certificates", true, false},
    {"tls-psk", true, false},        {"tls-verify-peer", false, false},
    {"unix", true, false},           {"user", true, false},
    {"verbose", false, false},       {"version", false, false},
    {"vsock", false, false},
};

// getopt_long's matching: the exact name, else the one option the name
// abbreviates (several that mean the same count as one). Null when none or
// ambiguous (nbdkit would have refused the command line).
const LongOption *find_long(const std::string &name) {
  const LongOption *found = nullptr;
  for (const LongOption &o : kLongOptions) {
    if (name == o.name)
      return &o;
    if (std::strncmp(o.name, name.c_str(), name.size()) != 0)
      continue;
    if (found && (found->value != o.value || found->read_only != o.read_only))
      return nullptr;
    if (!found)
      found = &o;
  }
  return found;
}

}  // namespace

bool args_say_read_only(const std::vector<std::string> &args, bool posixly_correct) {
  bool read_only = false;
  for (size_t i = 1; i < args.size(); i++) {
    const std::string &a = args[i];
    if (a == "--")
      break;
    if (a.size() < 2 || a[0] != '-') {  // the plugin, a key=value, or "-"
      if (posixly_correct)
        break;
      continue;
    }
    if (a[1] == '-') {
      const size_t eq = a.find('=');
      const LongOption *o = find_long(a.substr(2, eq == std::string::npos ? eq : eq - 2));
      if (!o)
        continue;
      read_only |= o->read_only;
      if (o->value && eq == std::string::npos)
        i++;  // the value is the next argument
      continue;
    }
    for (size_t j = 1; j < a.size(); j++) {
      if (a[j] == kShortReadOnly)
        read_only = true;
      if (std::strchr(kShortWithValue, a[j])) {
        if (j + 1 == a.size())
          i++;  // the value is the next argument; else it is the rest of this one
        break;
      }
    }
  }
  return read_only;
}

std::optional<bool> nbdkit_read_only() {
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  if (!in)
    return std::nullopt;
  const std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (all.empty())
    return std::nullopt;
  std::vector<std::string> args;
  size_t start = 0;
  while (start < all.size()) {
    size_t end = all.find('\0', start);
    if (end == std::string::npos)
      end = all.size();
    args.emplace_back(all, start, end - start);
    start = end + 1;
  }
  return args_say_read_only(args, std::getenv("POSIXLY_CORRECT") != nullptr);
}

}  // namespace qed_plugin
