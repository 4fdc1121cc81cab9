#!/usr/bin/env bash
# Regression tests for QEMU's QED data-loss bugs (docs/compared-with-qemu.md), done
# through the plugin, which must not have them; plus nbdkit 1.32's >64 MiB zero
# fallback bug and a crash (kill -9) after FUA writes.
#   bug 1: runs of >= cluster_size-1 clusters (4 KiB clusters, table_size 8): a
#          4095-cluster write/zero must not clobber the next cluster, and a write or
#          zero covering a whole L2 table must not corrupt the data after it;
#   bug 2: table_size=1 images work;
#   bug 4: a partial write into a zero cluster must not resurrect backing data.
# Images are checked afterwards with qemu-img check and read back with qemu-io.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/functions.sh" "$@"
requires /usr/bin/python3 -c 'import nbd'

KiB=1024 MiB=$((1024 * 1024))


# py NAME <<'PY' ... PY: save a Python script (it gets URI as argv[1]).
py() {
  cat >"$1.py"
}

# qio IMAGE CMD...: qemu-io -r commands on IMAGE; any failure (including a read -P
# pattern mismatch) fails the test.
qio() {
  local image=$1 c args=() out
  shift
  for c in "$@"; do args+=(-c "$c"); done
  out=$(qemu-io -r -f qed "${args[@]}" "$image" 2>&1) || { echo "$out" >&2; fail "qemu-io on $image: $*"; }
  if grep -Eq 'failed|Pattern verification|error' <<<"$out"; then
    echo "$out" >&2
    fail "qemu-io on $image: $*"
  fi
}

qcheck() {  # qcheck IMAGE [--allow-leaks] [--allow-dirty]
  /usr/bin/python3 "$here/write_qemu_check.py" "$@" || fail "qemu-img check $1"
}

# Common Python prelude: connect, and expect(off, len, byte) / pat(byte, len).
cat >prelude.py <<'PY'
import errno, os, sys
import nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
def pat(b, n):
    return bytes([b]) * n
def expect(off, n, b, what=""):
    """Bytes off..off+n must all be b (read in 1 MiB requests: the fastest here)."""
    for o in range(off, off + n, 1 << 20):
        k = min(1 << 20, off + n - o)
        got = h.pread(k, o)
        if got.count(b) != k:
            i = next(i for i in range(k) if got[i] != b)
            print("FAIL%s: byte %d reads 0x%02x, expected 0x%02x (checking %d+%d)" %
                  (" (" + what + ")" if what else "", o + i, got[i], b, off, n), file=sys.stderr)
            sys.exit(1)
def zero(n, off, flags=0):
    """h.zero, retrying without FAST_ZERO if the plugin says ENOTSUP."""
    try:
        h.zero(n, off, flags)
    except nbd.Error as e:
        if not (flags & nbd.CMD_FLAG_FAST_ZERO and e.errno == errno.ENOTSUP):
            raise
        h.zero(n, off, flags & ~nbd.CMD_FLAG_FAST_ZERO)
PY
run_py() {  # run_py IMAGE SCRIPT [PLUGIN-ARGS...]
  local image=$1 script=$2
  shift 2
  serve_rw "$image" "cat '$tmp/prelude.py' '$tmp/$script.py' >'$tmp/run.py' &&
                     /usr/bin/python3 '$tmp/run.py' \"\$uri\"" "$@" ||
    fail "$script on $image"
}
run_py_ro() {
  local image=$1 script=$2
  shift 2
  serve_ro "$image" "cat '$tmp/prelude.py' '$tmp/$script.py' >'$tmp/run.py' &&
                     /usr/bin/python3 '$tmp/run.py' \"\$uri\"" "$@" ||
    fail "$script (read-only) on $image"
}

# --- bug 1 -------------------------------------------------------------------------
echo "== bug 1: 4095-cluster write next to a written cluster (4 KiB clusters, table_size 8)"
# One L2 table holds 4096 entries = 16 MiB; 16773120 = 4095 clusters.
py bug1-write <<'PY'
h.pwrite(pat(0xcd, 4096), 16773120)
h.pwrite(pat(0xab, 16773120), 0)          # one request: 4095 clusters
expect(16773120, 4096, 0xcd, "the cluster after a 4095-cluster write")
expect(0, 16773120, 0xab)
expect(16 << 20, 4096, 0x00, "the first cluster of the next L2 table")
h.flush()
PY
py bug1-check <<'PY'
expect(16773120, 4096, 0xcd)
expect(0, 16773120, 0xab)
expect(16 << 20, 48 << 20, 0)
PY
run_py b1.qed bug1-write create=true size=64M cluster-size=4096 table-size=8
qcheck b1.qed
run_py_ro b1.qed bug1-check
qio b1.qed "read -P 0xcd 16773120 4096" "read -P 0xab 0 16773120" "read -P 0 16M 48M"

echo "== bug 1: writes and zeroes covering a whole L2 table (16 MiB) next to data at 16M"
py bug1-table <<'PY'
h.zero(4096, 0)
h.pwrite(pat(0x5a, 4096), 16 << 20)
h.zero(16 << 20, 0)                       # nothing allocated yet: a no-op here
expect(16 << 20, 4096, 0x5a, "after zeroing 0..16M")
h.pwrite(pat(0x11, 16 << 20), 0)          # one request: the whole L2 table
expect(16 << 20, 4096, 0x5a, "after writing the whole table before it")
expect(0, 16 << 20, 0x11)
h.zero(16 << 20, 0, nbd.CMD_FLAG_NO_HOLE) # allocated: zeroes written in place
expect(0, 16 << 20, 0)
expect(16 << 20, 4096, 0x5a, "after zeroing (NO_HOLE) the whole table before it")
h.pwrite(pat(0x22, 16 << 20), 0)
h.zero(16 << 20, 0)                       # may trim
expect(0, 16 << 20, 0)
expect(16 << 20, 4096, 0x5a, "after zeroing (may trim) the whole table before it")
h.pwrite(pat(0x33, 4096), 16773120)
h.zero(16773120, 0)                       # 4095 clusters next to 0x33
expect(16773120, 4096, 0x33, "the cluster after a 4095-cluster zero")
h.flush()
PY
py bug1-table-check <<'PY'
expect(0, 16773120, 0)
expect(16773120, 4096, 0x33)
expect(16 << 20, 4096, 0x5a)
expect((16 << 20) + 4096, (48 << 20) - 4096, 0)
PY
run_py zo.qed bug1-table create=true size=64M cluster-size=4096 table-size=8
qcheck zo.qed
run_py_ro zo.qed bug1-table-check
qio zo.qed "read -P 0 0 16773120" "read -P 0x33 16773120 4096" "read -P 0x5a 16M 4k"

echo "== bug 1 with a backing file: zero clusters over a whole L2 table and over 4095 clusters"
/usr/bin/python3 -c 'import sys; open(sys.argv[1], "wb").write(b"\x11" * (20 << 20))' base11.raw
py bug1-backing <<'PY'
expect(0, 20 << 20, 0x11, "backing data")
zero(16773120, 0)                         # 4095 zero clusters over backing data
expect(0, 16773120, 0)
expect(16773120, 4096, 0x11, "the unallocated cluster after a 4095-cluster zero")
zero(16773120 - 4096, 8192, nbd.CMD_FLAG_NO_HOLE)
expect(16773120, 4096, 0, "zeroed last cluster of the table")
expect(16 << 20, 4096, 0x11, "the first cluster of the next table")
h.pwrite(pat(0x5a, 4096), 16 << 20)
h.zero(16 << 20, 0)                       # unallocated over backing data: 4096 zero clusters
expect(0, 16 << 20, 0)
expect(16 << 20, 4096, 0x5a, "after zeroing the whole table before it")
expect((16 << 20) + 4096, (4 << 20) - 4096, 0x11)
h.pwrite(pat(0xcd, 4096), 32 << 20)       # beyond the backing file
h.pwrite(pat(0x44, 4096), (32 << 20) + 16773120)
h.zero(16773120, 32 << 20, nbd.CMD_FLAG_NO_HOLE)
expect(32 << 20, 16773120, 0)
expect((32 << 20) + 16773120, 4096, 0x44, "the cluster after a 4095-cluster zero")
h.flush()
PY
py bug1-backing-check <<'PY'
expect(0, 16 << 20, 0)
expect(16 << 20, 4096, 0x5a)
expect((16 << 20) + 4096, (4 << 20) - 4096, 0x11)
expect(20 << 20, 12 << 20, 0)
expect(32 << 20, 16773120, 0)
expect((32 << 20) + 16773120, 4096, 0x44)
PY
run_py zb1.qed bug1-backing create=true size=64M cluster-size=4096 table-size=8 \
  backing=base11.raw backing-format=raw
qcheck zb1.qed
run_py_ro zb1.qed bug1-backing-check
qio zb1.qed "read -P 0 0 16M" "read -P 0x5a 16M 4k" "read -P 0x11 $((16 * MiB + 4096)) $((4 * MiB - 4096))" \
  "read -P 0 32M 16773120" "read -P 0x44 $((32 * MiB + 16773120)) 4096"

# --- bug 2 -------------------------------------------------------------------------
echo "== bug 2: table_size=1 images (qemu cannot open them)"
# 64 KiB clusters, table_size 1: one L2 table maps 512 MiB.
py bug2-write <<'PY'
h.pwrite(pat(0x21, 100000), 1000)
h.pwrite(pat(0x22, 300000), (512 << 20) - 150000)  # across an L2 table boundary
h.pwrite(pat(0x23, 65536), 3 << 29)
h.flush()
PY
py bug2-check <<'PY'
expect(0, 1000, 0); expect(1000, 100000, 0x21); expect(101000, 65536, 0)
expect((512 << 20) - 150000, 300000, 0x22)
expect(3 << 29, 65536, 0x23); expect((3 << 29) + 65536, 65536, 0)
PY
py bug2-more <<'PY'
h.pwrite(pat(0x24, 5000), (3 << 29) + 60000)
h.zero(65536, 1 << 30)
h.pwrite(pat(0x25, 4096), (1 << 31) - 4096)         # the last cluster of the disk
h.flush()
PY
py bug2-check2 <<'PY'
expect(1000, 100000, 0x21)
expect((512 << 20) - 150000, 300000, 0x22)
expect(3 << 29, 60000, 0x23); expect((3 << 29) + 60000, 5000, 0x24)
expect((3 << 29) + 65000, 536, 0x23); expect((3 << 29) + 65536, 4096, 0)
expect((1 << 31) - 4096, 4096, 0x25)
PY
run_py t1.qed bug2-write create=true size=2G table-size=1
[[ $(peek t1.qed 8 4) -eq 1 ]] || fail "t1.qed: table_size is not 1"
run_py t1.qed bug2-check                  # restarted, writable
run_py t1.qed bug2-more
run_py_ro t1.qed bug2-check2              # restarted, read-only

# --- bug 4 -------------------------------------------------------------------------
echo "== bug 4: a partial write into a zero cluster must not resurrect backing data"
/usr/bin/python3 -c 'import sys; open(sys.argv[1], "wb").write(b"\xbb" * ((256 << 10) + 100))' base2.raw
# 64 KiB clusters 0-3 lie over 0xbb backing data, which ends 100 bytes into cluster 4.
py bug4 <<'PY'
flags = int(os.environ["ZFLAGS"])
expect(0, (256 << 10) + 100, 0xbb, "backing data")
zero(65536, 0, flags)
expect(0, 65536, 0, "zeroed cluster")
h.pwrite(pat(0xcc, 4096), 8192)
expect(0, 8192, 0, "before the write into the zeroed cluster")
expect(8192, 4096, 0xcc)
expect(12288, 65536 - 12288, 0, "after the write into the zeroed cluster")
expect(65536, 65536, 0xbb)
# two clusters at once, then a write into the second one
zero(2 * 65536, 65536, flags)
h.pwrite(pat(0xcd, 100), 2 * 65536 + 30000)
expect(65536, 65536 + 30000, 0); expect(2 * 65536 + 30000, 100, 0xcd)
expect(2 * 65536 + 30100, 65536 - 30100, 0)
# zeroing part of a cluster over backing data keeps the rest of it
h.pwrite(pat(0xce, 10), (3 << 16) + 5)
zero(1000, 200000, flags)
expect(3 << 16, 5, 0xbb); expect((3 << 16) + 5, 10, 0xce)
expect((3 << 16) + 15, 200000 - (3 << 16) - 15, 0xbb)
expect(200000, 1000, 0); expect(201000, (256 << 10) + 100 - 201000, 0xbb)
expect((256 << 10) + 100, (1 << 20) - (256 << 10) - 100, 0)
h.flush()
PY
# expected contents, for qemu-img compare
/usr/bin/python3 - bug4.raw <<'PY'
import sys
d = bytearray(1 << 20)
d[0:(256 << 10) + 100] = b"\xbb" * ((256 << 10) + 100)
d[0:3 * 65536] = bytes(3 * 65536)
d[8192:12288] = b"\xcc" * 4096
d[2 * 65536 + 30000:2 * 65536 + 30100] = b"\xcd" * 100
d[(3 << 16) + 5:(3 << 16) + 15] = b"\xce" * 10
d[200000:201000] = bytes(1000)
open(sys.argv[1], "wb").write(d)
PY
for zflags in 0 NO_HOLE FAST_ZERO; do
  case $zflags in
    0) export ZFLAGS=0 ;;
    *) export ZFLAGS=$(/usr/bin/python3 -c "import nbd; print(nbd.CMD_FLAG_$zflags)") ;;
  esac
  echo "-- zero flags: $zflags"
  rm -f zb.qed
  run_py zb.qed bug4 create=true size=1M backing=base2.raw backing-format=raw
  qcheck zb.qed
  qio zb.qed "read -P 0 0 8k" "read -P 0xcc 8k 4k" "read -P 0 12k 52k" \
    "read -P 0 64k $((64 * KiB + 30000))" "read -P 0xcd $((128 * KiB + 30000)) 100" \
    "read -P 0xbb $((192 * KiB)) 5" "read -P 0 200000 1000"
  qemu-img compare -q -f qed -F raw zb.qed bug4.raw || fail "bug 4 ($zflags): qemu reads zb.qed differently"
  rm -f "$tmp/out.raw"
  serve_ro zb.qed "nbdcopy \"\$uri\" '$tmp/out.raw'" || fail "nbdcopy zb.qed"
  cmp bug4.raw out.raw || fail "bug 4 ($zflags): the plugin reads zb.qed differently after a restart"
done

# --- zero > 64 MiB -----------------------------------------------------------------
echo "== one zero request of 128 MiB (nbdkit 1.32.5 falls back to a 64 MiB pwrite on ENOTSUP)"
py bigzero <<'PY'
for flags in (0, nbd.CMD_FLAG_NO_HOLE, nbd.CMD_FLAG_FAST_ZERO):
    h.pwrite(pat(0x77, 65536), 10 << 20)
    h.pwrite(pat(0x77, 65536), 100 << 20)
    h.pwrite(pat(0x77, 1000), (128 << 20) - 500)
    h.pwrite(pat(0x78, 65536), 130 << 20)
    zero(128 << 20, 0, flags)
    expect(0, 128 << 20, 0, "zero of 128 MiB, flags %d" % flags)
    expect(128 << 20, 500, 0x77)
    expect(130 << 20, 65536, 0x78)
h.flush()
PY
run_py big.qed bigzero create=true size=256M
qcheck big.qed
qio big.qed "read -P 0 0 128M" "read -P 0x77 128M 500" "read -P 0x78 130M 64k"

# The same over backing data (zero clusters instead of zeroes in place).
truncate -s 200M base-big.raw
/usr/bin/python3 -c '
import sys
with open(sys.argv[1], "r+b") as f:
    f.seek(100 << 20); f.write(b"\xee" * (1 << 20))
    f.seek(150 << 20); f.write(b"\xef" * (1 << 20))' base-big.raw
py bigzero-backing <<'PY'
expect(100 << 20, 1 << 20, 0xee)
zero(128 << 20, 0)
expect(0, 128 << 20, 0, "zero of 128 MiB over backing data")
expect(150 << 20, 1 << 20, 0xef)
h.flush()
PY
run_py bigb.qed bigzero-backing create=true size=256M backing=base-big.raw backing-format=raw
qcheck bigb.qed
qio bigb.qed "read -P 0 0 128M" "read -P 0xef 150M 1M"
rm -f base-big.raw bigb.qed big.qed

# --- crash after FUA writes ----------------------------------------------------------
echo "== FUA writes, then kill -9 nbdkit; the FUA data must survive, metadata consistent"
pidfile=$tmp/bg.pid bgsock=$tmp/bg.sock
bg_pid=
kill_bg() {
  if [[ -n $bg_pid ]] && kill -0 "$bg_pid" 2>/dev/null; then
    kill -9 "$bg_pid" 2>/dev/null || true
  fi
}
trap '_rc=$?; kill_bg; (exit $_rc); _cleanup' EXIT

serve_rw crash.qed true create=true size=5G || fail "create crash.qed"
rm -f "$pidfile" "$bgsock"
# Not captive: nbdkit forks into the background (-P writes its pid once it serves).
qed_nbdkit -P "$pidfile" -U "$bgsock" --log=stderr "$plugin" file=crash.qed ||
  fail "cannot start nbdkit in the background"
for _ in $(seq 100); do [[ -s $pidfile && -S $bgsock ]] && break; sleep 0.1; done
[[ -s $pidfile && -S $bgsock ]] || fail "nbdkit did not start"
bg_pid=$(cat "$pidfile")
py crash <<'PY'
import signal, time
pid = int(os.environ["BG_PID"])
h.pwrite(pat(0x42, 65536), 1 << 20, nbd.CMD_FLAG_FUA)      # allocates a table
h.pwrite(pat(0x43, 65536), 3 << 30, nbd.CMD_FLAG_FUA)      # a second L2 table
h.pwrite(pat(0x45, 4096), (1 << 20) + 4096, nbd.CMD_FLAG_FUA)  # in place
h.zero(65536, 4 << 20, nbd.CMD_FLAG_FUA | nbd.CMD_FLAG_NO_HOLE)
h.pwrite(pat(0x46, 65536), 4 << 20, nbd.CMD_FLAG_FUA)
h.pwrite(pat(0x44, 65536), 2 << 20)                        # not durable
os.kill(pid, signal.SIGKILL)
def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
for _ in range(100):
    if not alive(pid):
        break
    time.sleep(0.05)
try:
    h.pread(512, 0)
    print("FAIL: the connection survived kill -9", file=sys.stderr)
    sys.exit(1)
except nbd.Error:
    pass
PY
BG_PID=$bg_pid /usr/bin/python3 -c "
import sys; sys.argv = ['run', 'nbd+unix:///?socket=$bgsock']
exec(open('prelude.py').read() + open('crash.py').read())" || fail "FUA writes before the crash"
bg_pid=
echo "header features after the crash: $(peek crash.qed 16 8)"
qcheck crash.qed --allow-leaks --allow-dirty
qio crash.qed "read -P 0x42 1M 4k" "read -P 0x45 $((MiB + 4096)) 4k" \
  "read -P 0x42 $((MiB + 8192)) $((64 * KiB - 8192))" "read -P 0x43 3G 64k" "read -P 0x46 4M 64k"
py crash-check <<'PY'
expect(1 << 20, 4096, 0x42)
expect((1 << 20) + 4096, 4096, 0x45)
expect((1 << 20) + 8192, 65536 - 8192, 0x42)
expect(3 << 30, 65536, 0x43)
expect(4 << 20, 65536, 0x46)
d = h.pread(65536, 2 << 20)
if d not in (pat(0, 65536), pat(0x44, 65536)):
    print("FAIL: a write not yet flushed reads as neither its old nor its new value",
          file=sys.stderr)
    sys.exit(1)
PY
run_py_ro crash.qed crash-check              # read-only open of a dirty image
run_py crash.qed crash-check                 # writable open: checks and repairs
qcheck crash.qed                             # now clean: no leaks, NEED_CHECK clear
run_py_ro crash.qed crash-check
echo "test-write-qemu-bugs: PASS"
