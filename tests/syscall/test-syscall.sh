#!/usr/bin/env bash
# Runs one mode of the system-call-level harness (crash, faults, extend,
# schedule or preload; see harness.cpp) against the built plugin in a real
# nbdkit:
#   test-syscall.sh PLUGIN MODE HARNESS PRELOAD
# The images live in /dev/shm when it is writable: the harness writes
# thousands of small crash states and the recordings fdatasync often.
if [[ -z ${TMPDIR:-} && -d /dev/shm && -w /dev/shm ]]; then
  export TMPDIR=/dev/shm
fi
here=$(cd "$(dirname "$0")" && pwd)
if [[ $# -ne 4 || ! -x $3 || ! -f $4 ]]; then
  echo "usage: $0 PLUGIN MODE HARNESS PRELOAD" >&2
  exit 1
fi
mode=$2 harness=$(realpath "$3") preload=$(realpath "$4")
source "$here/../e2e/functions.sh" "$1"

start=$SECONDS
dir=$tmp
if [[ ${QED_SYSCALL_KEEP:-0} != 0 ]]; then
  dir=$(mktemp -d "${TMPDIR:-/tmp}/qed-syscall-$mode.XXXXXX")
  echo "keeping the work files in $dir"
fi
rc=0
"$harness" "$mode" "$plugin" "$preload" "$dir" ${_asan_lib:+"$_asan_lib"} || rc=$?
echo "syscall-$mode: $((SECONDS - start)) s"
exit "$rc"
