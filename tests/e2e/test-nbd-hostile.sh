#!/usr/bin/env bash
# A hostile and fragmented NBD base (allow-backing=network):
#   - a base that is down when the first writer arrives (the read-write reopen
#     fails), then comes back: a later client opens the image again and is served;
#   - a base that answers reads and block status with errors: clients get EIO, the
#     log names the URI, the plugin keeps serving and recovers when the errors stop;
#   - a base with thousands of extents: nbdinfo --map over an empty overlay shows
#     all of them, and the base gets a number of requests, and sends a number of
#     extents, linear in the extents (counted at the base by the log filter; the
#     count, not the time, is what is checked).
source "$(dirname "$0")/nbd-functions.sh" "$@"
requires /usr/bin/python3 -c 'import nbd'


head -c $((8 * MiB)) /dev/urandom >base.raw
start_base base -r file base.raw
uri=$(bg_uri base)

echo "== the base is down when the first writer arrives, then comes back"
qemu-img create -q -f qed -b "$uri" -F raw top.qed 8M
serve_bg top -- file=top.qed $net   # opened read-only at start-up, with the base up
stop_bg base KILL
if nbdinfo --size "$(bg_uri top)" >/dev/null 2>&1; then
  fail "a writer was served while the base was down"
fi
grep -qF "$uri: cannot connect" "$(bg_err top)" || fail "the failed reopen does not name the URI"
start_base base -r file base.raw
py='import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1])
base = open(sys.argv[2], "rb").read()
assert h.pread(1 << 20, 3 << 20) == base[3 << 20:4 << 20], "reads the base wrongly"
h.pwrite(b"\x5a" * 1000, 5000)
h.flush()
assert h.pread(3000, 4000) == base[4000:5000] + b"\x5a" * 1000 + base[6000:7000]'
/usr/bin/python3 -c "$py" "$(bg_uri top)" base.raw ||
  fail "once the base came back, a new client was not served"
stop_bg top || fail "nbdkit failed"
if grep -q 'image is not open' "$(bg_err top)"; then
  fail "a client was refused for the earlier failure"
fi
qio_ok top.qed 'read -P 0x5a 5000 1000'
echo "ok: the next client reopened the image once the base was back"

echo "== a base that answers with errors"
# The error filter fails every request to the base while $tmp/fail exists.
start_base err -r --filter=error file base.raw error=EIO error-rate=100% error-file="$tmp/fail"
qemu-img create -q -f qed -b "$(bg_uri err)" -F raw err.qed 8M
qio_ok err.qed 'write -P 0x33 1M 64k'
cat >errors.py <<'PY'
import nbd, os, sys
h = nbd.NBD()
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(sys.argv[1])
base = open("base.raw", "rb").read()
def eio(what, fn):
    try:
        fn()
    except nbd.Error as e:
        assert e.errno == "EIO", "%s: errno %s, not EIO" % (what, e.errno)
    else:
        raise SystemExit(what + ": succeeded while the base fails")
open("fail", "w").close()
eio("a read of the base", lambda: h.pread(4096, 0))
eio("block status over the base", lambda: h.block_status(1 << 20, 4 << 20, lambda *a: 0))
eio("a partial write over the base", lambda: h.pwrite(b"x" * 100, 3 << 20))
# What the overlay holds, and writes of whole clusters, need no base.
assert h.pread(65536, 1 << 20) == b"\x33" * 65536
h.pwrite(b"\x44" * 65536, 5 << 20)
h.flush()
assert h.pread(65536, 5 << 20) == b"\x44" * 65536
os.unlink("fail")
assert h.pread(8192, 100) == base[100:8292], "the base reads wrongly after its errors"
h.block_status(1 << 20, 4 << 20, lambda *a: 0)
h.pwrite(b"x" * 100, 3 << 20)
h.shutdown()
print("errors from the base: EIO for what needs it, the rest served, then recovered")
PY
rm -f fail
serve_bg over-err -- file=err.qed $net
/usr/bin/python3 errors.py "$(bg_uri over-err)" || fail "a base answering with errors"
nbdcopy "$(bg_uri over-err)" err.out || fail "the plugin no longer serves after the base's errors"
stop_bg over-err || fail "nbdkit failed"
grep -qF "error: $(bg_uri err): read at offset" "$(bg_err over-err)" ||
  fail "the read errors do not name the URI"
grep -qF "error: $(bg_uri err): block status at offset" "$(bg_err over-err)" ||
  fail "the block status errors do not name the URI"
cp base.raw want.raw
/usr/bin/python3 - <<'PY'
with open("want.raw", "r+b") as f:
    for off, data in ((1 << 20, b"\x33" * 65536), (5 << 20, b"\x44" * 65536), (3 << 20, b"x" * 100)):
        f.seek(off); f.write(data)
PY
cmp want.raw err.out || fail "after the base's errors the plugin serves other data"
stop_bg err

echo "== a base with 4096 extents: the overlay's map shows them all, in few requests"
start_base frag --filter=log data '(1 @+65535)*2048' logfile="$tmp/frag.requests"
nbdinfo --map "$(bg_uri frag)" >base.map || fail "nbdinfo --map of the base"
read -r before_requests before_extents < <(status_counts frag.requests)
qemu-img create -q -f qed -u -b "$(bg_uri frag)" -F raw frag.qed 128M
serve_ro frag.qed 'nbdinfo --map "$uri"' $net >frag.map || fail "nbdinfo --map of the overlay"
read -r requests extents < <(status_counts frag.requests)
requests=$((requests - before_requests)) extents=$((extents - before_extents))
extents_in_map=$(wc -l <frag.map)
echo "map of 128 MiB over $extents_in_map base extents: the base got $requests block status" \
  "requests and sent $extents extents"
(( extents_in_map == 4096 )) || fail "the base shows $extents_in_map extents, not 4096"
diff -u base.map frag.map || fail "the overlay's map differs from the base's"
# Linear in the extents (it was one request per extent, and 8 million extents).
(( requests <= 8 )) || fail "$requests block status requests for 4096 extents"
(( extents <= 3 * 4096 )) || fail "$extents extents sent for a map of 4096"
stop_bg frag

echo "PASS"
