#!/usr/bin/env bash
# Multi-conn on a writable export: the flags nbdinfo shows, cross-connection
# visibility after flush / FUA, and parallel nbdcopy in and out of a fresh image.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/functions.sh" "$@"
requires /usr/bin/python3 -c 'import nbd'

MiB=$((1024 * 1024))


echo "== nbdinfo flags of a writable export"
serve_rw flags.qed 'nbdinfo --json "$uri" >info.json' create=true size=64M || fail "nbdinfo"
/usr/bin/python3 - info.json <<'PY' || fail "export flags"
import json, sys
e = json.load(open(sys.argv[1]))["exports"][0]
want = {"is_read_only": False, "can_multi_conn": True, "can_fua": True, "can_trim": True,
        "can_zero": True, "can_fast_zero": True, "can_flush": True}
bad = {k: e.get(k) for k, v in want.items() if e.get(k) != v}
if bad:
    sys.exit("unexpected flags: %r (want %r)" % (bad, want))
if "base:allocation" not in e.get("contexts", []):
    sys.exit("no base:allocation context")
PY
serve_ro flags.qed 'nbdinfo --json "$uri" >info.json' || fail "nbdinfo -r"
/usr/bin/python3 - info.json <<'PY' || fail "read-only export flags"
import json, sys
e = json.load(open(sys.argv[1]))["exports"][0]
if not e["is_read_only"] or not e["can_multi_conn"]:
    sys.exit("read-only export: is_read_only=%r can_multi_conn=%r" %
             (e["is_read_only"], e["can_multi_conn"]))
PY

echo "== writes on one connection, reads on others"
cat >xconn.py <<'PY'
import sys
import nbd
uri = sys.argv[1]
hs = []
for _ in range(3):
    h = nbd.NBD()
    h.connect_uri(uri)
    assert h.can_multi_conn()
    hs.append(h)
a, b, c = hs
def check(h, off, data, what):
    got = h.pread(len(data), off)
    if got != data:
        i = next(i for i in range(len(data)) if got[i] != data[i])
        sys.exit("FAIL: %s: byte %d reads 0x%02x, expected 0x%02x" % (what, off + i, got[i], data[i]))
# Read first on b so that b's connection has looked at the (unallocated) area.
check(b, 1 << 20, bytes(70000), "before the write")
d1 = bytes(range(256)) * 300
a.pwrite(d1, (1 << 20) + 12345)              # allocating write
a.flush()
check(b, (1 << 20) + 12345, d1, "write + flush on a, read on b")
check(c, (1 << 20) + 12345, d1, "write + flush on a, read on c")
d2 = b"\xf0" * 5000
a.pwrite(d2, (8 << 20) - 2500, nbd.CMD_FLAG_FUA)   # FUA, across clusters
check(b, (8 << 20) - 2500, d2, "FUA write on a, read on b")
d3 = b"\x0f" * 3000
b.pwrite(d3, (1 << 20) + 20000)              # in place, over a's data
b.flush()
exp = bytearray(d1); exp[20000 - 12345:20000 - 12345 + 3000] = d3
check(a, (1 << 20) + 12345, bytes(exp), "overwrite on b, read on a")
c.zero(65536, 1 << 20, nbd.CMD_FLAG_FUA)
exp = bytearray(bytes(65536 - 12345)) + bytes(exp[65536 - 12345:])
check(a, 1 << 20, bytes(65536), "FUA zero on c, read on a")
check(b, (1 << 20) + 65536, bytes(exp[65536 - 12345:]), "data after the zeroed cluster")
a.pwrite(b"\x77" * (4 << 20), 16 << 20)
a.flush()
b.trim(4 << 20, 16 << 20)
b.flush()
# The plugin frees whole trimmed clusters by punching holes (if the file system can).
import ctypes, tempfile
libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
with tempfile.TemporaryFile(dir=".") as f:
    f.write(b"x" * 8192); f.flush()
    punch = libc.fallocate(f.fileno(), 3, 0, 4096) == 0
check(c, 16 << 20, bytes(4 << 20) if punch else b"\x77" * (4 << 20),
      "trim + flush on b, read on c")
# Concurrent allocating writes to the same clusters from the three handles.
cookies = []
bufs = []
for i, h in enumerate(hs):
    for j in range(16):
        buf = nbd.Buffer.from_bytearray(bytes([0x30 + i]) * 1000)
        bufs.append(buf)
        cookies.append((h, h.aio_pwrite(buf, (32 << 20) + j * 3000 + i * 1000)))
for h, ck in cookies:
    while not h.aio_command_completed(ck):
        h.poll(-1)
for h in hs:
    h.flush()
for i, h in enumerate(hs):
    for j in range(16):
        check(hs[(i + 1) % 3], (32 << 20) + j * 3000 + i * 1000, bytes([0x30 + i]) * 1000,
              "parallel writes from 3 connections")
for h in hs:
    h.shutdown()
PY
serve_rw x.qed "/usr/bin/python3 xconn.py \"\$uri\"" create=true size=64M cluster-size=4096 ||
  fail "cross-connection checks"
/usr/bin/python3 "$here/write_qemu_check.py" x.qed || fail "qemu-img check x.qed"

echo "== nbdcopy --connections=4 into a fresh image and back"
head -c $((64 * MiB)) /dev/urandom >rand.raw
# Holes and zero runs too: 1 MiB of zeroes every 8 MiB, and an unwritten tail.
/usr/bin/python3 - rand.raw <<'PY'
import sys
with open(sys.argv[1], "r+b") as f:
    for off in range(0, 64 << 20, 8 << 20):
        f.seek(off + (3 << 20)); f.write(bytes(1 << 20))
    f.truncate(80 << 20)
PY
serve_rw copy.qed "nbdcopy --connections=4 --flush rand.raw \"\$uri\" &&
                   nbdcopy --connections=4 \"\$uri\" out.raw" create=true size=80M ||
  fail "nbdcopy into/out of copy.qed"
cmp rand.raw out.raw || fail "nbdcopy round trip differs"
/usr/bin/python3 "$here/write_qemu_check.py" copy.qed || fail "qemu-img check copy.qed"
qemu-img compare -q -f qed -F raw copy.qed rand.raw || fail "qemu reads copy.qed differently"
rm -f out.raw
serve_ro copy.qed "nbdcopy --connections=4 \"\$uri\" out.raw" || fail "nbdcopy -r"
cmp rand.raw out.raw || fail "nbdcopy from the read-only export differs"
echo "test-write-multiconn: PASS"
