#!/usr/bin/env bash
# The README's two commands as a new user runs them on a fresh, minimal Debian:
#
#   scripts/debian-chroot.sh RELEASE [STEP...]
#
# RELEASE is bookworm (12) or trixie (13). In a temporary folder: a fresh
# `debootstrap --variant=minbase RELEASE`, plus only what a person needs to
# clone (git, ca-certificates); /proc, /sys, /dev, /dev/pts, a /dev/shm of its
# own and the host's resolv.conf mounted in; this repository's current commit
# (HEAD: uncommitted changes are not part of it) cloned inside with the
# chroot's git, with a read-only copy of ../shared beside it as CI has it. Then
# each STEP, in the order given (a step may repeat), as root in the clone:
#   serve  ./scripts/serve.sh --run 'nbdinfo "$uri"' (the first command, in its
#          form that returns), then nbdkit finds the plugin and the filter by
#          their short names and man(1) their pages
#   test   ./scripts/test.sh (the second command)
#   build  ./scripts/test.sh --build-only: install what the suite needs and
#          build every test tree (GCC and clang, warnings as errors), no tests
# Default: serve test.
#
# Prints one line per step (STEP OK|FAIL and its time) with the last lines of
# its output, then "RELEASE: N passed, N failed". Each step's whole output is
# in the log folder it names (QED_CHROOT_LOGS, or a new folder under /tmp).
# Everything mounted is unmounted and the temporary folder removed on every
# path: success, failure, Ctrl-C. The script runs in a mount namespace of its
# own, so even a kill -9 leaves no mount behind on the host.
#
# Exit status: 0 every step passed; 1 a step or the set-up failed; 77 this
# machine cannot debootstrap at all (not root, or no network to the mirror).
#
# Environment:
#   DEBIAN_MIRROR     the mirror (default http://deb.debian.org/debian)
#   QED_CHROOT_CACHE  where the debootstrap result (minbase + git, before
#                     anything else touches it) is kept as a tarball for 7 days
#                     and reused (default /var/cache/nbdkit-qed; empty: never)
#   QED_CHROOT_LOGS   the log folder
#   QED_SHARED        the folder copied as ../shared (default: ../shared beside
#                     this repository; none when it does not exist)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

usage() { sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[[ $# -ge 1 ]] || usage
case $1 in
  bookworm|12) release=bookworm ;;
  trixie|13) release=trixie ;;
  -h|--help) usage ;;
  *) echo "debian-chroot: unknown release '$1' (bookworm or trixie)" >&2; exit 2 ;;
esac
shift
steps=("$@")
[[ ${#steps[@]} -gt 0 ]] || steps=(serve test)
for s in "${steps[@]}"; do
  [[ $s == serve || $s == test || $s == build ]] || { echo "debian-chroot: unknown step '$s'" >&2; exit 2; }
done

say() { printf 'debian-chroot %s: %s\n' "$release" "$*"; }
skip() { say "SKIP: $*" >&2; exit 77; }
die() { say "FAIL: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || skip "needs root (debootstrap, chroot and mounts); run it with sudo"

# A private mount namespace: nothing mounted here propagates to the host (whose
# / is usually a shared mount), and the kernel drops every mount of it when the
# last process in it ends, whatever ends it.
if [[ -z ${QED_CHROOT_NAMESPACE:-} ]]; then
  if unshare --mount --propagation private true 2>/dev/null; then
    QED_CHROOT_NAMESPACE=1 exec unshare --mount --propagation private bash "${BASH_SOURCE[0]}" "$release" "${steps[@]}"
  fi
  say "(no private mount namespace here: mounting in the host's, each mount made private)"
fi

mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
cache=${QED_CHROOT_CACHE-/var/cache/nbdkit-qed}
commit=$(git -C "$root" rev-parse HEAD) || die "$root is not a git checkout"
shared=${QED_SHARED:-$root/../shared}

# debootstrap itself, from the host's packages when it is missing.
if ! command -v debootstrap >/dev/null; then
  say "installing debootstrap"
  { command -v apt-get >/dev/null &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap; } ||
    skip "debootstrap is not installed and cannot be installed here"
fi
# The one reason to skip rather than fail: the mirror cannot be reached.
if ! wget -q -T 20 -t 2 -O /dev/null "$mirror/dists/$release/InRelease" 2>/dev/null; then
  skip "no network to the Debian mirror $mirror ($mirror/dists/$release/InRelease)"
fi

logs=${QED_CHROOT_LOGS:-}
if [[ -z $logs ]]; then
  logs=$(mktemp -d /tmp/qed-chroot-logs.XXXXXX)
else
  mkdir -p "$logs"
  logs=$(cd "$logs" && pwd)
fi
work=$(mktemp -d "${TMPDIR:-/var/tmp}/qed-$release.XXXXXX")
chroot_dir=$work/root
mkdir "$chroot_dir"

# Mount points under the temporary folder, deepest first.
mounts_under() {
  awk -v d="$work" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r
}

# Processes whose root is the chroot: started by this script's steps.
kill_inside() {
  local sig=$1 p r
  for p in /proc/[0-9]*; do
    r=$(readlink "$p/root" 2>/dev/null) || continue
    if [[ $r == "$chroot_dir" || $r == "$chroot_dir"/* ]]; then
      kill "-$sig" "${p#/proc/}" 2>/dev/null || true
    fi
  done
}

cleanup() {
  local rc=$? m tries
  trap - EXIT INT TERM HUP
  set +e
  kill_inside TERM
  sleep 0.5
  kill_inside KILL
  for tries in 1 2 3; do
    while read -r m; do
      [[ -n $m ]] || continue
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
    done < <(mounts_under)
    [[ -z $(mounts_under) ]] && break
    sleep 1
  done
  if [[ -n $(mounts_under) ]]; then
    say "could not unmount everything under $work; left in place:" >&2
    mounts_under >&2
    rc=1
  else
    # --one-file-system: never through a mount point, whatever went wrong above.
    rm -rf --one-file-system -- "$work"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'say "interrupted" >&2; exit 130' INT TERM HUP

# mount_private ARGS... TARGET: mount, then keep later mounts from propagating.
mount_private() {
  mount "$@"
  mount --make-private "${@: -1}"
}

say "commit $(git -C "$root" log -1 --format='%h %s' "$commit")"
say "working in $work, logs in $logs"

# The minimal system: from the cache when it holds a recent one, else made
# afresh (and then cached before anything else touches it).
arch=$(dpkg --print-architecture)
tarball=
[[ -n $cache ]] && tarball=$cache/$release-$arch-minbase-git.tar
start=$SECONDS
if [[ -n $tarball && -f $tarball && -n $(find "$tarball" -mtime -7 2>/dev/null) ]]; then
  say "minbase + git from the cache $tarball"
  tar -xpf "$tarball" --numeric-owner -C "$chroot_dir" || die "unpacking $tarball"
else
  say "debootstrap --variant=minbase --include=git,ca-certificates $release ($mirror)"
  if ! debootstrap --variant=minbase --include=git,ca-certificates "$release" "$chroot_dir" "$mirror" \
      >"$logs/debootstrap.log" 2>&1; then
    tail -20 "$logs/debootstrap.log" >&2
    die "debootstrap failed (log: $logs/debootstrap.log)"
  fi
  if [[ -n $tarball ]] && mkdir -p "$cache"; then
    tar -cpf "$tarball.$$" --numeric-owner -C "$chroot_dir" . && mv -f "$tarball.$$" "$tarball" ||
      { rm -f "$tarball.$$"; say "(could not cache it in $tarball)"; }
  fi
fi
say "minimal system ready in $((SECONDS - start)) s"

# Services that package scripts would start would run on the host: refused,
# as in any chroot.
printf '#!/bin/sh\nexit 101\n' >"$chroot_dir/usr/sbin/policy-rc.d"
chmod 755 "$chroot_dir/usr/sbin/policy-rc.d"

# Tells scripts/test.sh that it runs inside this check, which its own
# debian13-build step would only repeat, nested.
echo "$release" >"$chroot_dir/etc/nbdkit-qed-debian-chroot"

mount_private -t proc proc "$chroot_dir/proc"
mount_private --bind /sys "$chroot_dir/sys"
mount_private --bind /dev "$chroot_dir/dev"
mount_private --bind /dev/pts "$chroot_dir/dev/pts"
mount_private -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$chroot_dir/dev/shm"
rm -f "$chroot_dir/etc/resolv.conf"
: >"$chroot_dir/etc/resolv.conf"
mount_private --bind /etc/resolv.conf "$chroot_dir/etc/resolv.conf"

# in_chroot CMD: run the shell command CMD in the chroot, as root with the
# environment of a fresh login (nothing from ours).
in_chroot() {
  chroot "$chroot_dir" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    /bin/bash -c "$1"
}

# The clone, with the chroot's own git, from a bundle of HEAD (a commit on no
# branch included).
mkdir -p "$chroot_dir/build"
git -C "$root" bundle create "$chroot_dir/build/origin.bundle" HEAD >"$logs/clone.log" 2>&1 ||
  die "git bundle of $root (log: $logs/clone.log)"
in_chroot 'cd /build && git -c advice.detachedHead=false clone -q origin.bundle nbdkit-qed &&
  [ "$(git -C nbdkit-qed rev-parse HEAD)" = '"$commit"' ] && rm origin.bundle' >>"$logs/clone.log" 2>&1 ||
  die "git clone in the chroot (log: $logs/clone.log)"
if [[ -d $shared ]]; then
  cp -a "$shared" "$chroot_dir/build/shared"
  chmod -R a-w "$chroot_dir/build/shared"
  say "cloned $commit into /build/nbdkit-qed, with $shared as /build/shared"
else
  say "cloned $commit into /build/nbdkit-qed (no $shared to put beside it)"
fi

serve_step='./scripts/serve.sh --run '\''nbdinfo "$uri"'\'' && {
  echo "== nbdkit finds the plugin and the filter by their short names"
  nbdkit qed --version && nbdkit --filter=qed null --version &&
  echo "== man finds their pages" && man -w nbdkit-qed-plugin nbdkit-qed-filter
}'

passed=0 failed=0 n=0
results=()
for step in "${steps[@]}"; do
  n=$((n + 1))
  case $step in
    serve) cmd=$serve_step ;;
    test) cmd='./scripts/test.sh' ;;
    build) cmd='./scripts/test.sh --build-only' ;;
  esac
  log=$logs/$n-$step.log
  say "step $n: $step (log: $log)"
  start=$SECONDS rc=0
  # In the background and waited for, so that a signal to this script runs its
  # trap at once (which ends the step's processes) instead of after the step.
  in_chroot "cd /build/nbdkit-qed && $cmd" </dev/null >"$log" 2>&1 &
  wait $! || rc=$?
  secs=$((SECONDS - start))
  if [[ $rc -eq 0 ]]; then
    tail -n 8 "$log" | sed 's/^/    /'
    results+=("$step OK ($secs s)")
    passed=$((passed + 1))
  else
    tail -n 40 "$log" | sed 's/^/    /'
    results+=("$step FAIL ($secs s, exit status $rc)")
    failed=$((failed + 1))
  fi
  say "step $n: ${results[-1]}"
done

for r in "${results[@]}"; do say "$r"; done
echo "$release: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
