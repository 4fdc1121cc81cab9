// Parsing of key=value parameters (nbdkit's .config and .config_complete).
#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "config.h"
#include "format.h"

#include <cstdlib>
#include <cstring>

namespace qed_plugin {

Config &config() {
  static Config c;
  return c;
}

const char *const kConfigHelp =
    "file=<FILENAME>     (required) The QED image to serve.\n"
    "cache-size=<SIZE>   L2 table cache per image (default 64M).\n"
    "allow-backing=false Refuse images that have a backing file.\n"
    "check=auto|repair|report|off  Consistency check at open (default auto:\n"
    "                    repair an image left dirty by a crash).\n"
    "create=true         Create a new image (needs size= or backing=).\n"
    "overwrite=true      With create=true, replace an existing file.\n"
    "size=<SIZE>         Size of a new image; on an existing image, grow it.\n"
    "cluster-size=<SIZE> Cluster size of a new image (default 64K).\n"
    "table-size=<N>      Clusters per table of a new image, 1-16 (default 4).\n"
    "backing=<FILENAME>  Backing file of a new image.\n"
    "backing-format=raw|qed  Format of that backing file (default: probe).";

namespace {

int parse_bool(const char *key, const char *value, bool &out) {
  int r = nbdkit_parse_bool(value);
  if (r == -1)
    return -1;  // nbdkit_parse_bool reported the error
  (void)key;
  out = r;
  return 0;
}

int parse_size(const char *key, const char *value, uint64_t &out) {
  int64_t r = nbdkit_parse_size(value);
  if (r == -1)
    return -1;
  if (r < 0) {
    nbdkit_error("%s: size must not be negative", key);
    return -1;
  }
  out = uint64_t(r);
  return 0;
}

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

int parse_check(const char *value, qed::CheckPolicy &out) {
  static const struct {
    const char *name;
    qed::CheckPolicy policy;
  } kPolicies[] = {{"auto", qed::CheckPolicy::kAuto},
                   {"repair", qed::CheckPolicy::kRepair},
                   {"report", qed::CheckPolicy::kReport},
                   {"off", qed::CheckPolicy::kOff}};
  for (const auto &p : kPolicies) {
    if (std::strcmp(value, p.name) == 0) {
      out = p.policy;
      return 0;
    }
  }
  nbdkit_error("check: '%s' is not auto, repair, report or off", value);
  return -1;
}

}  // namespace

int config_key(const char *key, const char *value) {
  Config &c = config();
  if (std::strcmp(key, "file") == 0) {
    char *path = nbdkit_absolute_path(value);
    if (!path)
      return -1;
    c.file = path;
    std::free(path);
    return 0;
  }
  if (std::strcmp(key, "cache-size") == 0)
    return parse_size(key, value, c.cache_bytes);
  if (std::strcmp(key, "allow-backing") == 0)
    return parse_bool(key, value, c.allow_backing);
  if (std::strcmp(key, "check") == 0)
    return parse_check(value, c.check);
  if (std::strcmp(key, "create") == 0)
    return parse_bool(key, value, c.create);
  if (std::strcmp(key, "overwrite") == 0)
    return parse_bool(key, value, c.overwrite);
  if (std::strcmp(key, "size") == 0)
    return parse_size(key, value, c.size);
  if (std::strcmp(key, "cluster-size") == 0)
    return parse_u32_size(key, value, c.create_options.cluster_size);
  if (std::strcmp(key, "table-size") == 0)
    return parse_u32_size(key, value, c.create_options.table_size);
  if (std::strcmp(key, "backing") == 0) {
    c.create_options.backing_file = value;
    return 0;
  }
  if (std::strcmp(key, "backing-format") == 0) {
    c.create_options.backing_format = value;
    return 0;
  }
  nbdkit_error("unknown parameter '%s'", key);
  return -1;
}

int config_complete() {
  Config &c = config();
  if (c.file.empty()) {
    nbdkit_error("you must supply the file=<FILENAME> parameter");
    return -1;
  }
  const bool creating_keys = c.create_options.cluster_size != qed::kDefaultClusterSize ||
                             c.create_options.table_size != qed::kDefaultTableSize ||
                             !c.create_options.backing_file.empty() ||
                             !c.create_options.backing_format.empty() || c.overwrite;
  if (!c.create && creating_keys) {
    nbdkit_error("cluster-size, table-size, backing, backing-format and overwrite "
                 "only apply with create=true");
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
  return 0;
}

}  // namespace qed_plugin
