#!/usr/bin/env bash
# Install the Debian packages needed to build, install and test nbdkit-qed.
# Idempotent: does nothing (and prints nothing) when everything is present.
#   install-deps.sh         what building and serving need (and qemu-img for the demo)
#   install-deps.sh --test  also what the whole test suite needs: clang and its
#                           runtime (libFuzzer), fio (benchmark smoke run),
#                           debhelper, dpkg-dev and lintian (Debian package test)
set -euo pipefail

packages=(
  nbdkit nbdkit-plugin-dev
  libboost-dev doctest-dev
  meson ninja-build g++ pkg-config
  libnbd-dev libnbd-bin python3-libnbd
  qemu-utils
  perl  # pod2man and podchecker, for the man pages
)
if [[ ${1:-} == --test ]]; then
  packages+=(clang libclang-rt-14-dev fio qemu-utils)
  # The Debian package test (tests/e2e/test-package.sh) and the man page test.
  packages+=(debhelper dpkg-dev lintian git man-db)
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
