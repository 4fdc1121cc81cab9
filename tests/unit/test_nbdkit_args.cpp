// plugin/nbdkit_args.h: -r found on nbdkit's command line as nbdkit's own
// getopt_long finds it, and nowhere else.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "plugin/nbdkit_args.h"

TEST_SUITE_BEGIN("nbdkit-args");

namespace {

bool ro(std::vector<std::string> args, bool posixly_correct = false) {
  args.insert(args.begin(), "nbdkit");
  return qed_plugin::args_say_read_only(args, posixly_correct);
}

}  // namespace

TEST_CASE("-r, --readonly and --read-only anywhere among the options") {
  CHECK(ro({"-r", "qed", "file=a.qed"}));
  CHECK(ro({"--readonly", "qed", "file=a.qed"}));
  CHECK(ro({"--read-only", "qed", "file=a.qed"}));
  CHECK(ro({"--read", "qed", "file=a.qed"}));  // an abbreviation getopt_long takes
  CHECK(ro({"--re", "qed"}));  // abbreviates only read-only and readonly: not ambiguous
  CHECK(ro({"-fvr", "qed", "file=a.qed"}));
  CHECK(ro({"-rf", "qed", "file=a.qed"}));
  CHECK(ro({"-U", "/s.sock", "-r", "qed", "file=a.qed"}));
  // getopt_long permutes: options may follow the plugin and its parameters.
  CHECK(ro({"qed", "file=a.qed", "-r"}));
  CHECK(ro({"-U", "-", "qed", "file=a.qed", "--run", "nbdinfo $uri", "-r"}));
}

TEST_CASE("not -r: no option, values of options, parameters, after --") {
  CHECK(!ro({"qed", "file=a.qed"}));
  CHECK(!ro({"-U", "-", "-f", "qed", "file=a.qed"}));
  CHECK(!ro({"-U", "-r", "qed", "file=a.qed"}));    // a socket named -r
  CHECK(!ro({"-U-r", "qed", "file=a.qed"}));
  CHECK(!ro({"-e", "-r", "qed", "file=a.qed"}));    // an export named -r
  CHECK(!ro({"-t4r", "qed", "file=a.qed"}));        // -t takes "4r"
  CHECK(!ro({"--run", "-r", "qed", "file=a.qed"}));
  CHECK(!ro({"--export=-r", "qed", "file=a.qed"}));
  CHECK(!ro({"--filter=cow", "qed", "file=a.qed"}));
  CHECK(!ro({"qed", "file=-r"}));
  CHECK(!ro({"qed", "file=a.qed", "--", "-r"}));
  CHECK(!ro({"--r", "qed"}));           // ambiguous (read-only, run): nbdkit refuses it
}

TEST_CASE("POSIXLY_CORRECT: options end at the plugin name") {
  CHECK(ro({"-r", "qed", "file=a.qed"}, true));
  CHECK(!ro({"qed", "file=a.qed", "-r"}, true));
}
