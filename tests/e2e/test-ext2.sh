#!/usr/bin/env bash
# On a real ext2 file system, which has no fallocate: the plugin grows the
# image with ftruncate, while other connections write past its end. Before the
# fix, a write that landed between the fallback's fstat and its ftruncate was
# cut off, and a few flushed writes read back as zeroes (4 of 16,000 here).
#
# 16 connections each write 4 KiB into fresh clusters, with cache-size=0 so
# that write-backs (and so extensions) happen all the time, then flush; every
# write must read back, through the plugin and through qemu-img.
#
# Needs root to loop-mount a file system (skipped otherwise).
source "$(dirname "$0")/functions.sh" "$@"
requires /usr/bin/python3 -c 'import nbd'
requires mkfs.ext2 -V

if [[ $(id -u) -ne 0 ]]; then
  echo "$0: SKIP: mounting a loop file system needs root" >&2
  exit 77
fi
# A RAM-backed loop file, so that the test measures the race, not a disk.
fsdir=$(mktemp -d /dev/shm/qed-ext2.XXXXXX 2>/dev/null || mktemp -d "$tmp/fs.XXXXXX")
mnt="$tmp/mnt"
mkdir "$mnt"
_cleanup_ext2() {
  local rc=$?
  cd /
  umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
  rm -rf -- "$fsdir"
  rm -rf -- "$tmp"
  exit "$rc"
}
trap _cleanup_ext2 EXIT
truncate -s 768M "$fsdir/ext2.img"
mkfs.ext2 -q -F "$fsdir/ext2.img"
if ! mount -o loop "$fsdir/ext2.img" "$mnt" 2>mount.err; then
  cat mount.err >&2
  echo "$0: SKIP: cannot mount a loop file system here" >&2
  exit 77
fi
if fallocate -l 1M "$mnt/probe" 2>/dev/null; then
  echo "$0: SKIP: this ext2 supports fallocate, the fallback is not reached" >&2
  exit 77
fi
rm -f "$mnt/probe"

image="$mnt/disk.qed"
qemu-img create -q -f qed "$image" 2G

writer='
import nbd, sys, threading
uri = sys.argv[1]
conns, per, cs = 16, 1000, 65536
errors = []
def work(c):
    try:
        h = nbd.NBD()
        h.connect_uri(uri)
        for i in range(per):
            n = c * per + i
            h.pwrite(n.to_bytes(8, "little") * 512, n * cs + (n % 16) * 4096)
        h.flush()
        h.shutdown()
    except Exception as e:
        errors.append("connection %d: %s" % (c, e))
threads = [threading.Thread(target=work, args=(c,)) for c in range(conns)]
for t in threads: t.start()
for t in threads: t.join()
if errors:
    sys.exit("\n".join(errors))
h = nbd.NBD()
h.connect_uri(uri)
lost = [n for n in range(conns * per)
        if h.pread(4096, n * cs + (n % 16) * 4096) != n.to_bytes(8, "little") * 512]
h.shutdown()
print("%d writes, %d lost" % (conns * per, len(lost)))
if lost:
    sys.exit("flushed writes read back wrong: %s" % lost[:20])
'
serve_rw "$image" "/usr/bin/python3 -c '$writer' \"\$uri\"" cache-size=0 ||
  fail "flushed writes lost on ext2 (fallocate unsupported)"

echo "== after a restart, and for qemu"
reader='
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
lost = [n for n in range(16000)
        if h.pread(4096, n * 65536 + (n % 16) * 4096) != n.to_bytes(8, "little") * 512]
sys.exit("lost after a restart: %s" % lost[:20] if lost else 0)
'
serve_ro "$image" "/usr/bin/python3 -c '$reader' \"\$uri\"" || fail "writes lost after a restart"
/usr/bin/python3 "$(dirname "$0")/write_qemu_check.py" "$image" || fail "qemu-img check"
echo "PASS"
