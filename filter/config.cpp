#include <nbdkit-filter.h>

#include "filter/config.h"
#include "common/key_table.h"
#include "common/key_values.h"
#include "common/nbdkit_errors.h"

#include "lib/backing_store.h"
#include "nbd/nbd_store.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

namespace qed_filter {

Config &config() {
  static Config c;
  return c;
}

namespace {

// qed-backing-format= seen without qed-backing= is an error, found only once
// every key is in.
bool format_given = false;
qed::BackingOverride::Format format_as_given = qed::BackingOverride::Format::kAsImageSays;

using qed_nbdkit::Choice;

// The filter only reads: no repair.
const Choice<qed::CheckPolicy> kPolicies[] = {{"off", qed::CheckPolicy::kOff},
                                              {"report", qed::CheckPolicy::kReport}};
const Choice<qed::BackingOverride::Format> kFormats[] = {
    {"raw", qed::BackingOverride::Format::kRaw}, {"qed", qed::BackingOverride::Format::kQed}};

int parse_check(Config &c, const char *key, const char *value) {
  return qed_nbdkit::parse_choice(key, value, kPolicies, c.check, "(the filter never repairs)");
}

// A local file, made absolute now (nbdkit changes to / before serving), or an
// NBD URI, kept as it is (the engine's rule tells them apart: a URI is never
// looked up as a file). Naming a URI here is the user's consent to connect.
int parse_backing(Config &c, const char *key, const char *value) {
  if (qed::is_uri(value)) {
    if (qed::Status s = qed_nbd::check_nbd_uri(value); !s.is_ok())
      return qed_nbdkit::report(s.with_context(key));
    c.backing = qed::BackingOverride{value, qed::BackingOverride::Format::kAsImageSays};
    return 0;
  }
  std::unique_ptr<char, decltype(&std::free)> real(nbdkit_realpath(value), std::free);
  if (!real)
    return -1;  // nbdkit_realpath reported the error, naming the file
  c.backing = qed::BackingOverride{real.get(), qed::BackingOverride::Format::kAsImageSays};
  return 0;
}

int parse_backing_format(Config &, const char *key, const char *value) {
  if (qed_nbdkit::parse_choice(key, value, kFormats, format_as_given) == -1)
    return -1;
  format_given = true;
  return 0;
}

using Key = qed_nbdkit::Key<Config>;

const Key kKeys[] = {
    {"qed-backing", "<FILENAME|URI>",
     "Base of an image with a backing file: a local file or an NBD URI.", parse_backing},
    {"qed-backing-format", "raw|qed",
     "Format of qed-backing= (default: as the image says).", parse_backing_format},
    {"qed-cache-size", "<SIZE>", "L2 table cache for the whole backing chain (default 64M).",
     [](Config &c, const char *k, const char *v) {
       return qed_nbdkit::parse_size(k, v, c.cache_bytes);
     }},
    {"qed-check", "off|report", "Consistency check when the image is opened (default off).",
     parse_check},
    {"qed-allow-local-exports", "true",
     "Below an image on an NBD server, allow NBD backing files on this host.",
     [](Config &c, const char *, const char *v) {
       return qed_nbdkit::parse_bool(v, c.allow_local_exports);
     }},
};

}  // namespace

int config_key(const char *key, const char *value, bool *ours) {
  *ours = std::strncmp(key, "qed-", 4) == 0;
  if (!*ours)
    return 0;
  if (const Key *k = qed_nbdkit::find_key(kKeys, key))
    return k->parse(config(), key, value);
  // The plugin's keys that write into the image: say why, not just "unknown".
  for (const char *writes : {"qed-copy-on-read", "qed-stream", "qed-stream-rate"}) {
    if (std::strcmp(key, writes) == 0) {
      nbdkit_error("%s: the qed filter serves the image read-only, and copy-on-read and the "
                   "stream write into it; serve the image with the plugin (nbdkit qed file=...)",
                   key);
      return -1;
    }
  }
  nbdkit_error("unknown qed filter parameter '%s' (nbdkit --filter=qed null --help lists them)",
               key);
  return -1;
}

int config_complete() {
  Config &c = config();
  if (format_given && !c.backing) {
    nbdkit_error("qed-backing-format= needs qed-backing=<FILENAME>");
    return -1;
  }
  if (c.backing)
    c.backing->format = format_as_given;
  return 0;
}

const char *config_help() {
  static const std::string help = qed_nbdkit::aligned_key_help(kKeys);
  return help.c_str();
}

}  // namespace qed_filter
