#!/usr/bin/env bash
# Install what is missing, build the plugin (release, without the test suite),
# install it with its man page, then serve a QED image with nbdkit.
#
#   scripts/serve.sh [--run CMD] [IMAGE.qed] [KEY=VALUE...] [-- NBDKIT-OPTIONS...]
#
# IMAGE defaults to disk.qed in the current directory, a 1 GiB demo image that
# is created when it does not exist. KEY=VALUE are plugin parameters
# (nbdkit-qed-plugin(1)); NBDKIT-OPTIONS go to nbdkit before the plugin name.
# Without --run, nbdkit serves in the foreground on its default port (10809)
# until Ctrl-C. With --run CMD, nbdkit serves on a private Unix socket, runs
# CMD (in which $uri names the export) and exits with CMD's status.
#
# Safe to run again: the build folder is reconfigured with the same options,
# and an existing image is served as it is.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

say() { printf 'serve: %s\n' "$*"; }
die() { printf 'serve: %s\n' "$*" >&2; exit 1; }

run_cmd=
image=
keys=()
nbdkit_options=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --run)
      [[ $# -ge 2 ]] || die "--run needs a command"
      run_cmd=$2
      shift 2
      ;;
    --) shift; nbdkit_options=("$@"); break ;;
    -h|--help) sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *=*) keys+=("$1"); shift ;;
    -*) die "unknown option $1 (nbdkit options go after --)" ;;
    *)
      [[ -z $image ]] || die "more than one image given: $image and $1"
      image=$1
      shift
      ;;
  esac
done

# As root, or through sudo when we are not.
as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "need root (or sudo) for: $*"
  fi
}

say "checking what building and serving need"
bash "$here/install-deps.sh"

# A folder of its own, configured with explicit options every time, so that
# neither the test suite's folders nor an earlier run change what is built.
builddir="$root/build-release"
options=(--buildtype=release -Db_ndebug=true -Dwerror=false -Dtests=false
         -Dsanitize=false -Dtsan=false -Dfuzz=false --prefix=/usr/local)
if [[ -f $builddir/build.ninja ]]; then
  say "reconfiguring $builddir"
  meson setup --reconfigure "$builddir" "$root" "${options[@]}" >/dev/null ||
    meson setup --wipe "$builddir" "$root" "${options[@]}" >/dev/null
else
  say "configuring $builddir (release, plugin and man page only)"
  rm -rf "$builddir"
  meson setup "$builddir" "$root" "${options[@]}" >/dev/null
fi
say "building"
ninja -C "$builddir" >/dev/null

say "installing (meson install: the plugin into nbdkit's plugin directory, the man page)"
as_root meson install -C "$builddir" --no-rebuild --quiet
# Let man(1) find the new page at once.
as_root mandb -q >/dev/null 2>&1 || true

if [[ -z $image ]]; then
  image=disk.qed
  if [[ -e $image ]]; then
    say "serving the existing demo image $PWD/$image"
  else
    say "creating the demo image $PWD/$image (1 GiB, empty)"
    nbdkit -U - qed file="$image" create=true size=1G --run true ||
      die "could not create $image"
  fi
fi
[[ -e $image ]] || die "$image: no such file (give an existing QED image, or none for the demo)"

if [[ -n $run_cmd ]]; then
  say "running: nbdkit -U - ${nbdkit_options[*]:+${nbdkit_options[*]} }qed file=$image ${keys[*]:+${keys[*]} }--run '$run_cmd'"
  exec nbdkit -U - "${nbdkit_options[@]}" qed file="$image" "${keys[@]}" --run "$run_cmd"
fi
say "running: nbdkit -f ${nbdkit_options[*]:+${nbdkit_options[*]} }qed file=$image${keys[*]:+ ${keys[*]}}"
say "serving on nbd://localhost (port 10809); try: nbdinfo nbd://localhost; stop with Ctrl-C"
exec nbdkit -f "${nbdkit_options[@]}" qed file="$image" "${keys[@]}"
