#!/usr/bin/env bash
# Backing files on NBD servers (allow-backing=network).  Bases are served by nbdkit's
# file and memory plugins on Unix sockets in the test's folder.
#   - an overlay made by qemu-img over nbd+unix://, written by qemu-io, reads through
#     the plugin exactly as qemu decodes it (nbdcopy with and without extents,
#     qemu-img compare), beyond the end of the shorter base too;
#   - the plugin's map equals qemu-nbd's (remote holes show up);
#   - refusals: without allow-backing=network (message names the image, the URI and
#     the key), with allow-backing=false, create=true with a URI, bad URIs;
#   - create=true backing=URI backing-format=raw writes what qemu-img writes, sized
#     from the remote export; then the plugin writes and qemu reads it back;
#   - a QED base served raw by nbdkit, itself on an NBD base (a chain of URIs), and a
#     remote image naming a local file (refused);
#   - a base that only takes small, aligned requests (blocksize-policy filter).
source "$(dirname "$0")/nbd-functions.sh" "$@"
requires qemu-nbd --version


# The base: 20 MiB + 1536 bytes (a multiple of 512, not of the cluster size), data
# and holes; overlays are 32 MiB, so their tail lies beyond the base.
base_size=$((20 * MiB + 1536))
sparse_base base.raw "$base_size" "0 4" "8 4"
dd if=/dev/urandom of=base.raw bs=512 seek=$((20 * 2048)) count=3 conv=notrunc status=none
start_base base -r file base.raw
uri=$(bg_uri base)

echo "== an overlay made by qemu-img, written by qemu-io"
qemu-img create -q -f qed -b "$uri" -F raw top.qed 32M
qio_ok top.qed 'write -P 0x11 0 64k' 'write -P 0x22 5M 100k' 'write -P 0x33 12M 4k' \
  'write -P 0x44 20M 4k' 'write -z 9M 128k' 'write -P 0x55 30M 64k'
check_same_as_qemu top.qed $net
echo "ok: the plugin reads what qemu wrote, with the base on an NBD server"

echo "== extents: the plugin's map equals qemu-nbd's"
serve_ro top.qed 'nbdinfo --map "$uri"' $net >plugin.map || fail "nbdinfo --map through the plugin"
nbdinfo --map -- [ qemu-nbd -r -f qed top.qed ] >qemu.map || fail "nbdinfo --map via qemu-nbd"
cat plugin.map
diff -u qemu.map plugin.map || fail "the plugin's map differs from qemu-nbd's"
# The base's holes [4M, 5M) and [12M+4K, 20M) show as holes.
grep -Eq '^ *4194304 +1048576 +3 +hole,zero$' plugin.map || fail "the remote hole at 4 MiB is missing"

echo "== --help and --dump-plugin name the keys"
qed_nbdkit "$plugin" --help >help.out || fail "--help failed"
grep -q '^allow-backing=true|false|network ' help.out || fail "--help: allow-backing does not offer network"
grep -q '^backing-connections=<N> .*default 8' help.out || fail "--help: no backing-connections=<N> (default 8)"
qed_nbdkit "$plugin" --dump-plugin >dump.out || fail "--dump-plugin failed"
grep -q '^qed_keys=.*,backing-connections,' dump.out || fail "--dump-plugin: qed_keys lacks backing-connections"
grep -q '^qed_backing_uri_schemes=nbd,nbds,nbd+unix,' dump.out || fail "--dump-plugin: no URI schemes"

echo "== refusals"
refuses file=top.qed || fail "a network backing file was opened without allow-backing=network"
grep -qF "$tmp/top.qed: backing file \"$uri\": network backing files are refused unless allowed with allow-backing=network" \
  "$nbdkit_err" || fail "the refusal does not name the image, the URI and the key"
refuses file=top.qed allow-backing=false || fail "allow-backing=false opened a backing file"
grep -q 'allow-backing=false' "$nbdkit_err" || fail "allow-backing=false: no mention of the key"
refuses file=top.qed allow-backing=sometimes || fail "allow-backing=sometimes was accepted"
refuses file=top.qed $net backing-connections=0 || fail "backing-connections=0 was accepted"
refuses file=new.qed create=true backing="$uri" backing-format=raw ||
  fail "create=true with a URI was not refused without allow-backing=network"
grep -q 'allow-backing=network' "$nbdkit_err" || fail "create=true refusal does not name the key"
[[ ! -e new.qed ]] || fail "a refused create=true left new.qed behind"
for bad in "nbd:unix:$tmp/base.sock" "http://localhost/x.img"; do
  rm -f bad.qed
  qemu-img create -q -f qed -u -b "$bad" -F raw bad.qed 1M
  refuses file=bad.qed $net || fail "backing file $bad was opened"
  grep -qF "backing file \"$bad\": $bad: " "$nbdkit_err" || fail "$bad: no message naming it"
  case $bad in
    nbd:*) grep -q "legacy nbd: syntax is not supported" "$nbdkit_err" || fail "$bad: not called legacy" ;;
    *) grep -q 'protocol "http" is not supported' "$nbdkit_err" || fail "$bad: protocol not named" ;;
  esac
done
# A server that is not there: the message names the URI.
qemu-img create -q -f qed -u -b "nbd+unix:///?socket=$tmp/nobody.sock" -F raw gone.qed 1M
refuses file=gone.qed $net || fail "a backing server that does not exist was accepted"
grep -qF "nbd+unix:///?socket=$tmp/nobody.sock: cannot connect" "$nbdkit_err" ||
  fail "a missing server: the message does not name the URI"

echo "== create=true backing=URI: what qemu-img writes, sized from the export"
serve_rw new.p.qed true create=true backing="$uri" backing-format=raw $net ||
  fail "create=true backing=URI failed"
qemu-img create -q -f qed -b "$uri" -F raw new.q.qed
cmp new.p.qed new.q.qed || fail "create=true backing=URI differs from qemu-img create"
[[ $(qemu-img info --output=json new.p.qed | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])') -eq $base_size ]] ||
  fail "create=true backing=URI: the size is not the export's"
# The plugin writes (partial clusters over the remote base, and beyond it); qemu
# reads the same as the plugin, and qemu-img check is clean.
cp base.raw want.raw
py='import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1])
for off, n, b in ((100, 5000, 0x61), (4 * 1024 * 1024 - 300, 1000, 0x62),
                  (20 * 1024 * 1024 + 1000, 536, 0x63)):
    h.pwrite(bytes([b]) * n, off)
h.zero(3 * 65536, 65536)
h.flush()'
serve_rw new.p.qed "/usr/bin/python3 -c '$py' \"\$uri\"" $net || fail "writes through the plugin"
/usr/bin/python3 - want.raw <<'PY'
import sys
with open(sys.argv[1], "r+b") as f:
    for off, n, b in ((100, 5000, 0x61), (4 * 1024 * 1024 - 300, 1000, 0x62),
                      (20 * 1024 * 1024 + 1000, 536, 0x63)):
        f.seek(off); f.write(bytes([b]) * n)
    f.seek(65536); f.write(bytes(3 * 65536))
PY
qio_ok new.p.qed 'read -P 0x61 100 5000' "read -P 0x62 $((4 * MiB - 300)) 1000" \
  "read -P 0x63 $((20 * MiB + 1000)) 536" 'read -P 0 64k 192k'
qemu-img compare -q -f qed -F raw new.p.qed want.raw || fail "qemu reads something else than the plugin wrote"
qemu-img check -q new.p.qed || fail "qemu-img check of the plugin's writes over a remote base"
check_same_as_qemu new.p.qed $net

echo "== a QED base served raw by nbdkit, on its own NBD base (a chain of URIs)"
# Every server here is on this host, which the remote image may name only with
# allow-local-exports=true (test-nbd-trust.sh has the refusals).
start_base mid -r file top.qed   # top.qed (over the raw base) is now a base itself
qemu-img create -q -f qed -b "$(bg_uri mid)" -F qed chain.qed
qio_ok chain.qed 'write -P 0x71 64k 64k' 'write -P 0x72 21M 4k'
check_same_as_qemu chain.qed $net allow-local-exports=true
serve_ro chain.qed 'nbdinfo "$uri"' $net allow-local-exports=true >chain.info ||
  fail "nbdinfo on the chain"
grep -qF "backing file: qed $(bg_uri mid)" chain.info || fail "the description does not show the QED base"
grep -qF "backing file: raw $uri" chain.info || fail "the description does not show the raw base below it"
# create=true over the QED export probes its format and takes its virtual size.
serve_rw probed.qed 'nbdinfo --size "$uri" >size.out' create=true backing="$(bg_uri mid)" $net \
  allow-local-exports=true ||
  fail "create=true over a QED export"
[[ $(cat size.out) -eq $((32 * MiB)) ]] || fail "create=true over a QED export: size $(cat size.out)"
# A remote image whose backing file is a local name is refused.
qemu-img create -q -f qed -b "$tmp/base.raw" -F raw local.qed 8M
start_base local -r file local.qed
qemu-img create -q -f qed -u -b "$(bg_uri local)" -F qed over-local.qed 8M
refuses file=over-local.qed $net || fail "a remote image naming a local file was opened"
grep -qF "backing file \"$tmp/base.raw\": a local backing file below a network image is refused" \
  "$nbdkit_err" || fail "the refusal of a local name below a network image is not explained"

echo "== a base that takes only 4 KiB-aligned requests of at most 64 KiB"
cp base.raw small.raw
truncate -s $((20 * MiB)) small.raw   # a whole number of 4 KiB blocks
start_base small -r --filter=blocksize-policy file small.raw blocksize-minimum=4096 \
  blocksize-maximum=65536 blocksize-error-policy=error
qemu-img create -q -f qed -o cluster_size=4096 -u -b "$(bg_uri small)" -F raw small.qed 32M
qio_ok small.qed 'write -P 0x81 8193 100' 'write -P 0x82 1M 1'
# qemu 7.2 asserts in block status on such a server (block/nbd.c
# nbd_client_co_block_status): the reference comes from a copy on the plain base.
rm -f small.ref small.out
cp small.qed small-ref.qed
start_base small-plain -r file small.raw
qemu-img rebase -q -u -f qed -b "$(bg_uri small-plain)" -F raw small-ref.qed
qemu_raw small-ref.qed small.ref
serve_ro small.qed "nbdcopy --request-size=$((4 * MiB)) \"\$uri\" small.out" $net ||
  fail "nbdcopy with 4 MiB requests over a base limited to 64 KiB"
cmp small.ref small.out || fail "reads split for the base's block size limits differ"
py='import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1])
ref = open(sys.argv[2], "rb").read()
for off, n in ((1, 1), (4095, 2), (5000, 100), (65536 - 7, 65536 + 20), (8191, 200)):
    assert h.pread(n, off) == ref[off:off + n], (off, n)'
serve_ro small.qed "/usr/bin/python3 -c '$py' \"\$uri\" small.ref" $net ||
  fail "unaligned reads over a base with a 4 KiB minimum block size"

stop_bg small; stop_bg small-plain; stop_bg local; stop_bg mid; stop_bg base
echo "PASS"
