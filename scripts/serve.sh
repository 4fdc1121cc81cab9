#!/usr/bin/env bash
# Build and install the nbdkit-qed plugin, then serve a QED image in the foreground.
#
#   scripts/serve.sh [IMAGE.qed] [extra nbdkit args...]
#
# Without IMAGE (or when the first argument starts with "-"), a 1 GiB demo image
# disk.qed is created in the current directory if it does not exist yet, and served.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

say() { printf 'serve: %s\n' "$*"; }

say "checking build dependencies"
bash "$here/install-deps.sh"

builddir="$root/build"
if [[ -f $builddir/build.ninja ]]; then
  say "reusing configured build directory $builddir"
else
  say "configuring $builddir (meson setup, buildtype=release)"
  meson setup "$builddir" "$root" --buildtype=release
fi
say "building"
ninja -C "$builddir"

plugin="$builddir/plugin/nbdkit-qed-plugin.so"
if [[ ! -f $plugin ]]; then
  echo "serve: build did not produce $plugin" >&2
  exit 1
fi

plugindir=$(pkg-config --variable=plugindir nbdkit)
say "installing nbdkit-qed-plugin.so into $plugindir"
if [[ -w $plugindir ]]; then
  install -m 0755 "$plugin" "$plugindir/nbdkit-qed-plugin.so"
elif command -v sudo >/dev/null 2>&1; then
  sudo install -m 0755 "$plugin" "$plugindir/nbdkit-qed-plugin.so"
else
  echo "serve: cannot write to $plugindir (not root, no sudo)" >&2
  exit 1
fi

if [[ $# -gt 0 && $1 != -* ]]; then
  image=$1
  shift
else
  image=disk.qed
  if [[ -e $image ]]; then
    say "using existing demo image $image"
  else
    say "creating demo image $image (1 GiB, qemu-img create -f qed)"
    qemu-img create -q -f qed "$image" 1G
  fi
fi

if [[ ! -e $image ]]; then
  echo "serve: image $image does not exist" >&2
  exit 1
fi

say "running: nbdkit -f qed file=$image $*"
say "(stop with Ctrl-C)"
exec nbdkit -f qed file="$image" "$@"
