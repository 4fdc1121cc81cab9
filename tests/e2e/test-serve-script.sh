#!/usr/bin/env bash
# The README's first command, as a new user runs it: copy the source tree to a
# fresh folder, run scripts/serve.sh there (release build of the plugin alone,
# meson install, demo image, serve) twice, non-interactively, and check that
# afterwards nbdkit finds the plugin by its short name and serves the demo disk,
# and that man(1) finds nbdkit-qed-plugin(1).
#
#   test-serve-script.sh PLUGIN SOURCE-ROOT
#
# It installs into the system (nbdkit's plugin folder, /usr/local/share/man):
# that is what serve.sh is for. Skipped when not root and without sudo.
source "$(dirname "$0")/functions.sh" "$@"
src=${2:?usage: $0 PLUGIN SOURCE-ROOT}

if [[ $(id -u) -ne 0 ]] && ! sudo -n true 2>/dev/null; then
  echo "$0: SKIP: serve.sh installs into the system: needs root or sudo" >&2
  exit 77
fi

echo "== a fresh copy of the source tree"
tree="$tmp/tree"
mkdir "$tree"
if git -C "$src" rev-parse --show-toplevel >/dev/null 2>&1; then
  # What a clone would hold, plus files not yet committed (not ignored ones).
  git -C "$src" ls-files -z -co --exclude-standard |
    (cd "$src" && tar --null -T - -cf -) | tar -xf - -C "$tree"
else
  (cd "$src" && tar --exclude='./build*' -cf - .) | tar -xf - -C "$tree"
fi
[[ -x $tree/scripts/serve.sh || -f $tree/scripts/serve.sh ]] || fail "no scripts/serve.sh in the copy"
[[ ! -e $tree/build-release ]] || fail "the copy already has a build folder"

work="$tmp/user"
mkdir "$work"
cd "$work"

for run in first again; do
  echo "== scripts/serve.sh ($run run)"
  rm -f info.out
  bash "$tree/scripts/serve.sh" --run 'nbdinfo "$uri" >info.out' </dev/null ||
    fail "serve.sh ($run run) failed"
  cat info.out
  [[ -f disk.qed ]] || fail "serve.sh did not create the demo image disk.qed"
  grep -Eq 'export-size: 1073741824( |$)' info.out ||
    fail "serve.sh ($run run) did not serve the 1 GiB demo disk"
  grep -q 'description: qed ' info.out ||
    fail "the export description does not describe the QED image"
done
grep -q 'buildtype=release\|release' "$tree/build-release/meson-info/intro-buildoptions.json" ||
  fail "serve.sh did not build in release mode"
! grep -q '"unit-tests"' "$tree/build-release/meson-info/intro-targets.json" ||
  fail "serve.sh configured the test suite (it needs the plugin alone)"

echo "== the installed plugin, by its short name"
plugindir=$(pkg-config --variable=plugindir nbdkit)
[[ -f $plugindir/nbdkit-qed-plugin.so ]] || fail "no nbdkit-qed-plugin.so in $plugindir"
nbdkit qed --dump-plugin >dump.out || fail "nbdkit qed --dump-plugin failed"
grep -qx "path=$plugindir/nbdkit-qed-plugin.so" dump.out ||
  fail "nbdkit qed did not load the installed plugin: $(grep '^path=' dump.out)"
nbdkit -U - qed file="$work/disk.qed" --run 'nbdinfo --size "$uri" >size.out' ||
  fail "nbdkit qed file=disk.qed (short name) failed"
[[ $(cat size.out) == 1073741824 ]] || fail "nbdkit qed served $(cat size.out) bytes, not 1 GiB"

echo "== man nbdkit-qed-plugin"
page=$(man -w nbdkit-qed-plugin 2>/dev/null) || fail "man -w nbdkit-qed-plugin finds no page"
echo "page: $page"
MANPAGER=cat MANWIDTH=80 man nbdkit-qed-plugin 2>/dev/null >man.out || fail "man nbdkit-qed-plugin failed"
grep -q 'PARAMETERS' man.out || fail "the man page has no PARAMETERS section"
grep -q 'file=' man.out || fail "the man page does not document file="

echo "PASS"
