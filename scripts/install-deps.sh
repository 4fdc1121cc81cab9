#!/usr/bin/env bash
# Install the Debian packages needed to build, install and test nbdkit-qed, on
# Debian 12 (bookworm) and 13 (trixie), from a minimal install: every name here
# exists on both releases (version-neutral names, e.g. libclang-rt-dev, never
# libclang-rt-NN-dev). Packages are installed without recommends, so a tool a
# script runs is listed even when another package would usually pull it in.
# Idempotent: does nothing (and prints nothing) when everything is present.
#   install-deps.sh         what building and serving need (and qemu-img for the demo)
#   install-deps.sh --test  also what the whole test suite needs
# To add a package: append it to the group it belongs to, with why if not obvious.
set -euo pipefail

packages=(
  # Build: meson finds doctest by its header (Debian's doctest-dev has no .pc).
  meson ninja-build g++ pkg-config
  nbdkit nbdkit-plugin-dev
  libboost-dev doctest-dev
  libnbd-dev
  perl            # pod2man and podchecker, for the man pages
  man-db          # man(1), to read the installed pages (not in a minimal Debian)
  # Serve and demo.
  libnbd-bin python3-libnbd
  qemu-utils
)
if [[ ${1:-} == --test ]]; then
  packages+=(
    # The fuzz build: clang and its runtime (libFuzzer, the sanitizers).
    clang libclang-rt-dev
    fio             # bench/bench.sh --quick
    e2fsprogs       # mkfs.ext2 for e2e-ext2 (not in a minimal Debian 13)
    # The Debian package test (tests/e2e/test-package.sh): dpkg-buildpackage
    # checks build-essential, which dpkg-dev only recommends.
    build-essential debhelper dpkg-dev lintian git
  )
fi

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  if [[ $status != "install ok installed" ]]; then
    missing+=("$p")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi

if [[ $(id -u) -eq 0 ]]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1; then
  sudo=(sudo)
else
  echo "install-deps: missing packages: ${missing[*]}" >&2
  echo "install-deps: not root and sudo is not available; install them manually" >&2
  exit 1
fi

echo "install-deps: installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -q --no-install-recommends "${missing[@]}"
