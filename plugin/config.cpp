// Parsing of key=value parameters (nbdkit's .config and .config_complete).
#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "plugin/config.h"
#include "common/check_log.h"
#include "common/key_table.h"
#include "common/key_values.h"
#include "lib/format.h"
#include "plugin/nbdkit_args.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>

namespace qed_plugin {

Config &config() {
  static Config c;
  return c;
}

namespace {

// The value of file= as given; made absolute in config_complete, when we know
// whether it must already exist (it need not with create=true).
std::string file_as_given;

using qed_nbdkit::parse_bool;
using qed_nbdkit::parse_size;

int parse_u32_size(const char *key, const char *value, uint32_t &out) {
  uint64_t v;
  if (parse_size(key, value, v) == -1)
    return -1;
  if (v > UINT32_MAX) {
    nbdkit_error("%s: %s is too large", key, value);
    return -1;
  }
  out = uint32_t(v);
  return 0;
}

using qed_nbdkit::Choice;

const Choice<qed::CheckPolicy> kPolicies[] = {{"auto", qed::CheckPolicy::kAuto},
                                              {"repair", qed::CheckPolicy::kRepair},
                                              {"report", qed::CheckPolicy::kReport},
                                              {"off", qed::CheckPolicy::kOff}};
const Choice<qed::Locking> kLockModes[] = {
    {"auto", qed::Locking::kAuto}, {"on", qed::Locking::kOn}, {"off", qed::Locking::kOff}};

// allow-backing=true|false|network: whether backing files may be local
// files (true, the default), anything (network also allows NBD URIs), or
// nothing (false).
int parse_allow_backing(Config &c, const char *value) {
  c.allow_network_backing = std::strcmp(value, "network") == 0;
  if (c.allow_network_backing) {
    c.allow_backing = true;
    return 0;
  }
  return parse_bool(value, c.allow_backing);
}

int parse_connections(const char *key, const char *value, unsigned &out) {
  unsigned n;
  if (nbdkit_parse_unsigned(key, value, &n) == -1)
    return -1;
  if (n < 1 || n > 64) {
    nbdkit_error("%s: %s is not between 1 and 64", key, value);
    return -1;
  }
  out = n;
  return 0;
}

using Key = qed_nbdkit::Key<Config>;

const Key kKeys[] = {
    {"file", "<FILENAME>", "(required) The QED image to serve.",
     [](Config &, const char *, const char *v) {
       file_as_given = v;
       return 0;
     }},
    {"cache-size", "<SIZE>", "L2 table cache for the whole backing chain (default 64M).",
     [](Config &c, const char *k, const char *v) { return parse_size(k, v, c.cache_bytes); }},
    {"check", "auto|repair|report|off", "Consistency check at open (default auto).",
     [](Config &c, const char *k, const char *v) {
       return qed_nbdkit::parse_choice(k, v, kPolicies, c.check);
     }},
    {"allow-backing", "true|false|network",
     "Backing files: local (true, the default), none, or local and NBD URIs.",
     [](Config &c, const char *, const char *v) { return parse_allow_backing(c, v); }},
    {"backing-connections", "<N>",
     "Most connections to NBD servers for the whole backing chain (default 8).",
     [](Config &c, const char *k, const char *v) {
       return parse_connections(k, v, c.backing_connections);
     }},
    {"locking", "auto|on|off",
     "QEMU's image locks (default auto: on where the file system has them).",
     [](Config &c, const char *k, const char *v) {
       return qed_nbdkit::parse_choice(k, v, kLockModes, c.locking);
     }},
    {"allow-local-exports", "true",
     "Below an image on an NBD server, allow NBD backing files on this host.",
     [](Config &c, const char *, const char *v) { return parse_bool(v, c.allow_local_exports); }},
    {"copy-on-read", "true",
     "Copy the clusters reads fetch from the backing file into the image.",
     [](Config &c, const char *, const char *v) { return parse_bool(v, c.copy_on_read); }},
    {"stream", "true",
     "Copy the whole backing file into the image while serving, then detach it.",
     [](Config &c, const char *, const char *v) { return parse_bool(v, c.stream); }},
    {"stream-rate", "<SIZE>", "With stream=true: most bytes copied per second (default no limit).",
     [](Config &c, const char *k, const char *v) { return parse_size(k, v, c.stream_rate); }},
    {"size", "<SIZE>", "Size of a new image; on an existing image, grow it to SIZE.",
     [](Config &c, const char *k, const char *v) { return parse_size(k, v, c.size); }},
    {"create", "true", "Create file= as a new, empty image (needs size= or backing=).",
     [](Config &c, const char *, const char *v) { return parse_bool(v, c.create); }},
    {"overwrite", "true", "With create=true, replace an existing file.",
     [](Config &c, const char *, const char *v) { return parse_bool(v, c.overwrite); }},
    {"cluster-size", "<SIZE>", "New image: cluster size, 4K to 64M (default 64K).",
     [](Config &c, const char *k, const char *v) {
       return parse_u32_size(k, v, c.create_options.cluster_size);
     }},
    {"table-size", "<N>", "New image: clusters per table, 1 to 16 (default 4).",
     [](Config &c, const char *k, const char *v) {
       return parse_u32_size(k, v, c.create_options.table_size);
     }},
    {"backing", "<FILENAME|URI>", "New image: its backing file (a path, or an NBD URI).",
     [](Config &c, const char *, const char *v) {
       c.create_options.backing_file = v;
       return 0;
     }},
    {"backing-format", "raw|qed", "New image: format of the backing file (default: probe).",
     [](Config &c, const char *, const char *v) {
       c.create_options.backing_format = v;
       return 0;
     }},
};

// With create=true the file need not exist yet: then the folder must.
std::string absolute_image_path(const std::string &given, bool may_be_missing) {
  using CString = std::unique_ptr<char, decltype(&std::free)>;
  if (may_be_missing && ::access(given.c_str(), F_OK) != 0 && errno == ENOENT) {
    CString abs(nbdkit_absolute_path(given.c_str()), std::free);
    return abs ? abs.get() : std::string();
  }
  CString real(nbdkit_realpath(given.c_str()), std::free);
  return real ? real.get() : std::string();  // nbdkit_realpath reported the error
}

}  // namespace

int config_key(const char *key, const char *value) {
  if (const Key *k = qed_nbdkit::find_key(kKeys, key))
    return k->parse(config(), key, value);
  nbdkit_error("unknown parameter '%s' (nbdkit qed --help lists the keys)", key);
  return -1;
}

int config_complete() {
  Config &c = config();
  if (file_as_given.empty()) {
    nbdkit_error("you must supply the file=<FILENAME> parameter");
    return -1;
  }
  c.file = absolute_image_path(file_as_given, c.create);
  if (c.file.empty())
    return -1;
  const bool creating_keys = c.create_options.cluster_size != qed::kDefaultClusterSize ||
                             c.create_options.table_size != qed::kDefaultTableSize ||
                             !c.create_options.backing_file.empty() ||
                             !c.create_options.backing_format.empty() || c.overwrite;
  if (!c.create && creating_keys) {
    nbdkit_error("cluster-size, table-size, backing, backing-format and overwrite "
                 "only apply with create=true");
    return -1;
  }
  if (!c.allow_backing && !c.create_options.backing_file.empty()) {
    nbdkit_error("backing=%s: backing files are refused (allow-backing=false)",
                 c.create_options.backing_file.c_str());
    return -1;
  }
  if (c.create && c.size == 0 && c.create_options.backing_file.empty()) {
    nbdkit_error("create=true needs size=<SIZE> (or backing=<FILENAME>)");
    return -1;
  }
  if (c.size > uint64_t(INT64_MAX)) {
    nbdkit_error("size: %llu is larger than NBD can serve", (unsigned long long)c.size);
    return -1;
  }
  c.create_options.size = c.size;
  c.create_options.overwrite = c.overwrite;
  // Unknown: lock as a writer, which keeps everyone else out.
  c.read_only = nbdkit_read_only().value_or(false);
  if (c.stream_rate && !c.stream) {
    nbdkit_error("stream-rate only applies with stream=true");
    return -1;
  }
  if (c.read_only && (c.copy_on_read || c.stream)) {
    nbdkit_error("%s: nbdkit runs with -r (read-only), and %s writes into the image what it "
                 "copies from the backing file; drop -r or the key",
                 c.copy_on_read ? "copy-on-read=true" : "stream=true",
                 c.copy_on_read ? "copy-on-read" : "the stream");
    return -1;
  }
  if (!c.allow_backing && (c.copy_on_read || c.stream)) {
    nbdkit_error("%s: there is no backing file to copy from with allow-backing=false",
                 c.copy_on_read ? "copy-on-read=true" : "stream=true");
    return -1;
  }
  nbdkit_debug("%s: locked as a %s (nbdkit %s -r)", c.file.c_str(),
               c.read_only ? "reader" : "writer", c.read_only ? "runs with" : "runs without");
  return 0;
}

qed::LockSettings lock_settings() {
  qed::LockSettings s;
  s.policy = config().locking;
  s.off_switch = "locking=off";
  s.on_unlocked = [](const std::string &why) { qed_nbdkit::log_info("%s", why.c_str()); };
  return s;
}

const char *config_help() {
  static const std::string help = qed_nbdkit::aligned_key_help(kKeys);
  return help.c_str();
}

std::string config_key_list() { return qed_nbdkit::key_list(kKeys); }

}  // namespace qed_plugin
