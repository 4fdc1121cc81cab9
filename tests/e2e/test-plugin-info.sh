#!/usr/bin/env bash
# Plugin metadata and negotiation: --help, --dump-plugin, what nbdinfo sees on a
# read-only export (size, multi-conn, block sizes), and parameter handling.
source "$(dirname "$0")/functions.sh" "$@"

echo "== --help"
qed_nbdkit "$plugin" --help >help.out || fail "nbdkit PLUGIN --help failed"
cat help.out
grep -q '^file=' help.out || fail "--help does not list file="
grep -q '^cache-size=' help.out || fail "--help does not list cache-size="

echo "== --dump-plugin"
qed_nbdkit "$plugin" --dump-plugin >dump.out || fail "nbdkit PLUGIN --dump-plugin failed"
cat dump.out
grep -qx 'name=qed' dump.out || fail "--dump-plugin: name is not qed"
grep -Eq '^version=.+' dump.out || fail "--dump-plugin: no version"
if [[ -n ${QED_VERSION:-} ]]; then
  grep -qxF "version=$QED_VERSION" dump.out || fail "--dump-plugin: version is not $QED_VERSION"
fi
grep -qx 'thread_model=parallel' dump.out || fail "--dump-plugin: thread_model is not parallel"
grep -qx 'api_version=2' dump.out || fail "--dump-plugin: api_version is not 2"

echo "== nbdinfo on a read-only export"
size=$(( 1024 * 1024 * 1024 + 512 ))
qemu-img create -q -f qed disk.qed "$size"
qemu-io -f qed -c 'write -P 0x12 0 64k' disk.qed >/dev/null
serve_ro disk.qed 'nbdinfo "$uri" >info.out &&
                   nbdinfo --size "$uri" >size.out &&
                   nbdinfo --is read-only "$uri" &&
                   nbdinfo --can multi-conn "$uri"' ||
  fail "nbdinfo: not read-only, no multi-conn, or nbdinfo failed"
cat info.out
[[ $(cat size.out) -eq $size ]] || fail "export size $(cat size.out), expected $size"
grep -Eq "export-size: $size( |$)" info.out || fail "nbdinfo export-size is not $size"
grep -q 'can_multi_conn: true' info.out || fail "can_multi_conn is not true"
grep -q 'is_read_only: true' info.out || fail "is_read_only is not true"
grep -q 'block_size_minimum: 1$' info.out || fail "block_size_minimum is not 1"
grep -q 'base:allocation' info.out || fail "base:allocation context missing"

echo "== several connections (nbdcopy uses multi-conn)"
serve_ro disk.qed 'nbdcopy --connections=2 -v "$uri" out.raw 2>copy.log' ||
  { cat copy.log >&2; fail "nbdcopy with 2 connections failed"; }
grep -q 'connections=2' copy.log || { cat copy.log >&2; fail "nbdcopy did not use 2 connections"; }
qemu-img compare -q -f raw -F qed out.raw disk.qed || fail "multi-connection copy differs"

echo "== parameters"
serve_ro disk.qed 'nbdinfo --size "$uri" >/dev/null' cache-size=1M ||
  fail "cache-size=1M refused"
refuses file=disk.qed cache-size=bogus || fail "cache-size=bogus accepted"
refuses file=disk.qed no-such-key=1 || fail "an unknown parameter was accepted"
refuses || fail "nbdkit started without file="

echo "PASS"
