#!/usr/bin/env bash
# The Debian package, built as a user would: the source tree (tracked and
# untracked-but-not-ignored files of a git checkout, or a plain copy without
# build*/ folders) is copied to a fresh temporary folder, where
# `dpkg-buildpackage -us -uc -b` must produce ../nbdkit-qed-plugin_VERSION_amd64.deb
# (VERSION: meson.build's project version; the package is native, so there is no
# Debian revision) holding the plugin in nbdkit's plugindir, the compressed man
# page and the copyright file, depending on the very nbdkit version it was built
# against (the filter loads into no other); Build-Depends must name the package
# of every pkg-config dependency the build used; lintian must report no error
# (E:) on it.
#   test-package.sh PLUGIN.so SOURCE-ROOT
# The plugin argument is only there for the common harness (functions.sh).
if [[ $# -ne 2 || ! -d $2 ]]; then
  echo "usage: $0 PLUGIN.so SOURCE-ROOT" >&2
  exit 1
fi
src=$(realpath -- "$2")
source "$(dirname "$0")/functions.sh" "$@"
requires dpkg-buildpackage --version
requires dpkg-deb --version
requires lintian --version
requires command -v dh

version=${QED_VERSION:-}
if [[ -z $version ]]; then
  version=$(sed -n "s/^ *version: *'\([^']*\)'.*/\1/p" "$src/meson.build")
  version=${version%%$'\n'*}   # the first (not `| head -1`: SIGPIPE under pipefail)
fi
[[ -n $version ]] || fail "cannot find the project version in $src/meson.build"
arch=$(dpkg --print-architecture)
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH)
plugindir=$(pkg-config --variable=plugindir nbdkit)
[[ -n $plugindir ]] || fail "pkg-config does not know nbdkit's plugindir"
deb=nbdkit-qed-plugin_${version}_${arch}.deb

echo "== copy $src to a fresh folder"
mkdir "$tmp/pkg"
tree=$tmp/pkg/nbdkit-qed
mkdir "$tree"
if git -C "$src" rev-parse --show-toplevel >/dev/null 2>&1; then
  # Files deleted in the work tree but still tracked are listed too: skip them.
  (cd "$src" && git ls-files -z -co --exclude-standard |
     while IFS= read -r -d '' f; do [[ -e $f || -L $f ]] && printf '%s\0' "$f"; done |
     tar -c --null --no-recursion -T - | tar -x -C "$tree") || fail "copying the git files of $src"
else
  (cd "$src" && tar -c --exclude='./build*' --exclude='./obj-*' . | tar -x -C "$tree") ||
    fail "copying $src"
fi
[[ -x $tree/debian/rules ]] || fail "no executable debian/rules in the copy"
# A repository of its own in the copy, to see afterwards what the build left
# behind that .gitignore does not cover.
git_copy=false
if command -v git >/dev/null; then
  (cd "$tree" && git init -q && git add -A) && git_copy=true
fi

echo "== dpkg-buildpackage -us -uc -b"
start=$SECONDS
# Two jobs at most: the machines this runs on are shared.
if ! (cd "$tree" && DEB_BUILD_OPTIONS="parallel=2 ${DEB_BUILD_OPTIONS:-}" \
        dpkg-buildpackage -us -uc -b) >build.log 2>&1; then
  tail -60 build.log >&2
  fail "dpkg-buildpackage failed (log above)"
fi
echo "built in $((SECONDS - start)) s"
ls -l "$tmp/pkg"
[[ -f $tmp/pkg/$deb ]] || fail "dpkg-buildpackage did not produce $deb"
if $git_copy; then
  left=$(cd "$tree" && git status --porcelain | grep -v '^A  ' || true)
  if [[ -n $left ]]; then
    echo "$left" >&2
    fail "the package build changed or left files in the tree that .gitignore does not cover"
  fi
fi

echo "== contents of $deb"
dpkg-deb -c "$tmp/pkg/$deb" | tee contents.txt
# Paths as dpkg-deb prints them: ./usr/...
has() {
  grep -Eq -- "^[^ ]+ +[^ ]+ +[0-9]+ +[^ ]+ +[^ ]+ +\\.$1( |\$)" contents.txt ||
    fail "$deb does not hold $1"
}
has "$plugindir/nbdkit-qed-plugin.so"
has /usr/share/man/man1/nbdkit-qed-plugin.1.gz
has /usr/bin/qed-stream
has /usr/share/man/man1/qed-stream.1.gz
has /usr/share/doc/nbdkit-qed-plugin/copyright
[[ $plugindir == /usr/lib/$multiarch/nbdkit/plugins ]] ||
  echo "(nbdkit's plugindir is $plugindir, not the Debian default)"
if grep -q 'usr/local\|/tests/\|\.a$' contents.txt; then
  fail "$deb holds files it should not (tests, static libraries, /usr/local)"
fi
dpkg-deb -f "$tmp/pkg/$deb" Package Version Architecture Depends | tee fields.txt
grep -qx "Version: $version" fields.txt || fail "$deb: Version is not $version"

echo "== the package depends on the nbdkit its filter was built against"
# nbdkit loads a filter only into the version it was built for (debian/rules).
nbdkit_version=$(pkg-config --modversion nbdkit)
depends=$(sed -n 's/^Depends: //p' fields.txt)
for want in "nbdkit (>= $nbdkit_version)" "nbdkit (<< $nbdkit_version.~)"; do
  [[ ", $depends, " == *", $want, "* ]] || fail "$deb: Depends ($depends) lacks $want"
done
installed=$(dpkg-query -W -f='${Version}' nbdkit)
dpkg --compare-versions "$installed" ge "$nbdkit_version" &&
  dpkg --compare-versions "$installed" lt "$nbdkit_version.~" ||
  fail "the installed nbdkit $installed does not satisfy $deb's Depends"

echo "== Build-Depends names every pkg-config dependency the package build used"
# dpkg-checkbuilddeps passes on a machine where one is missing, and meson fails.
mapfile -t build_depends < <(sed -n '/^Build-Depends:/,/^[^ ]/p' "$src/debian/control" |
  sed 's/^Build-Depends://' | tr ',' '\n' | sed -n 's/^ *\([a-z0-9.+-]*\).*/\1/p')
echo "Build-Depends: ${build_depends[*]}"
intros=("$tree"/obj-*/meson-info/intro-dependencies.json)
intro=${intros[0]}
[[ -f $intro ]] || fail "no meson-info/intro-dependencies.json in the package's build folder"
mapfile -t used < <(/usr/bin/python3 -c 'import json, sys
for d in json.load(open(sys.argv[1])): print(d["name"])' "$intro")
for name in "${used[@]}"; do
  pc=$(pkg-config --path "$name" 2>/dev/null) || continue
  owner=$(dpkg -S "$(realpath -- "$pc")" 2>/dev/null || dpkg -S "$pc") ||
    fail "no package owns $pc (dependency $name)"
  owner=${owner%%:*}
  [[ " ${build_depends[*]} " == *" $owner "* ]] ||
    fail "the package build uses $name ($pc, from $owner), which Build-Depends does not name"
  echo "$name: $owner"
done

echo "== the packaged plugin and man page work"
mkdir unpacked
dpkg-deb -x "$tmp/pkg/$deb" unpacked
qed_nbdkit "unpacked$plugindir/nbdkit-qed-plugin.so" --dump-plugin >dump.out ||
  fail "nbdkit cannot load the packaged plugin"
grep -qx "qed_version=$version" dump.out || fail "the packaged plugin is not version $version"
# Unpacked first: `zcat | grep -q` under pipefail fails when grep stops early.
zcat "unpacked/usr/share/man/man1/nbdkit-qed-plugin.1.gz" >page.1 ||
  fail "the packaged man page does not decompress"
[[ $(man_th_field 1 page.1) == nbdkit-qed-plugin && $(man_th_field 2 page.1) == 1 ]] ||
  fail "the packaged man page has no .TH nbdkit-qed-plugin 1"
[[ $(man_th_field 4 page.1) == "$version" ]] ||
  fail "the packaged man page is not version $version: $(grep -m1 '^\.TH' page.1)"
cmp "unpacked/usr/share/doc/nbdkit-qed-plugin/copyright" "$src/debian/copyright" ||
  fail "the packaged copyright file is not debian/copyright"

echo "== the source package (dpkg-buildpackage -S), for lintian's checks of debian/"
if ! (cd "$tree" && dpkg-buildpackage -S -us -uc -d) >source.log 2>&1; then
  tail -30 source.log >&2
  fail "dpkg-buildpackage -S failed (log above)"
fi
dsc=nbdkit-qed_${version}.dsc
[[ -f $tmp/pkg/$dsc ]] || fail "dpkg-buildpackage -S did not produce $dsc"

echo "== lintian"
# lintian_errors FILE: lintian on FILE; fails the test on any error (E:).
lintian_errors() {
  local start=$SECONDS rc=0
  lintian --tag-display-limit 0 "$1" >lintian.out 2>&1 || rc=$?
  cat lintian.out
  echo "lintian $(basename "$1"): exit status $rc, $((SECONDS - start)) s"
  if grep -q '^E:' lintian.out; then
    fail "lintian reports errors on $(basename "$1")"
  fi
  if [[ $rc -ne 0 ]] && ! grep -q '^[EW]:' lintian.out; then
    fail "lintian failed on $(basename "$1") (exit status $rc)"
  fi
}
lintian_errors "$tmp/pkg/$deb"
lintian_errors "$tmp/pkg/$dsc"
echo "test-package: PASS ($deb)"
