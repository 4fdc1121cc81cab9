#!/usr/bin/env bash
# Read path through backing chains: raw <- qed <- qed with relative backing names,
# zero clusters hiding backing data, a raw backing file shorter than the image, a
# backing image smaller than its overlay, an absolute backing name, and a hand-made
# header_size=2 image.  The plugin must read exactly what qemu-img convert gives.
source "$(dirname "$0")/functions.sh" "$@"

mkdir chain
# base.raw: 100 KiB + 123 bytes (not even a multiple of 512) of a byte pattern.
/usr/bin/python3 - chain/base.raw <<'PY'
import sys
n = 100 * 1024 + 123
with open(sys.argv[1], "wb") as f:
    f.write(bytes((i * 31 + (i >> 9)) & 0xff for i in range(n)))
PY

# mid.qed: 1 MiB, 4 KiB clusters, raw backing named relative to the image directory.
(cd chain && qemu-img create -q -f qed -o cluster_size=4096,table_size=4 \
   -b base.raw -F raw mid.qed 1M)
qio_ok chain/mid.qed \
  "write -P 0x41 $((10 * KiB + 100)) 300"      `# COW: rest of cluster from base` \
  "write -z $((20 * KiB)) $((8 * KiB))"        `# zero clusters hiding base data` \
  "write -z $((40 * KiB + 10)) 20"             `# zero bytes inside a COW cluster` \
  "write -P 0x42 $((100 * KiB - 50)) 700"      `# straddles the end of base.raw` \
  "write -P 0x43 $((300 * KiB)) $((5 * KiB))"  `# beyond base.raw` \
  "write -z $((400 * KiB)) $((4 * KiB))"       `# zero cluster beyond base.raw` \
  "write -P 0x44 $((MiB - 512)) 512"           # last sector

# top.qed: 2 MiB (larger than mid.qed), 64 KiB clusters, qed backing, relative name.
(cd chain && qemu-img create -q -f qed -o cluster_size=65536,table_size=4 \
   -b mid.qed -F qed top.qed 2M)
qio_ok chain/top.qed \
  "write -P 0x51 $((64 * KiB + 7)) 1000"       `# COW from mid and base` \
  "write -z $((128 * KiB)) $((64 * KiB))"      `# zero cluster over mid data` \
  "write -P 0x52 $((MiB - 300)) 600"           `# straddles the end of mid.qed` \
  "write -P 0x53 $((MiB + 200 * KiB)) 4096"    `# beyond mid.qed` \
  "write -z $((1536 * KiB)) $((64 * KiB))"

echo "== each layer on its own"
check_same_as_qemu chain/mid.qed
echo "== raw <- qed <- qed, relative names, served by a relative path"
check_same_as_qemu chain/top.qed
echo "== the same, served from another working directory by an absolute path"
mkdir elsewhere
(cd elsewhere && check_same_as_qemu "$tmp/chain/top.qed")

echo "== absolute backing name"
qemu-img create -q -f qed -b "$tmp/chain/mid.qed" -F qed abs.qed 1536K
qio_ok abs.qed "write -P 0x61 $((3 * KiB)) $((70 * KiB))" "write -z $((256 * KiB)) $((64 * KiB))"
check_same_as_qemu abs.qed

echo "== raw backing file shorter than the image, directly under the top"
(cd chain && qemu-img create -q -f qed -b base.raw -F raw short.qed 1M)
qio_ok chain/short.qed "write -P 0x71 $((96 * KiB)) $((8 * KiB))"
check_same_as_qemu chain/short.qed
# Beyond the end of base.raw the export must be zeroes.
serve_ro chain/short.qed \
  "nbdcopy \"\$uri\" short.out" || fail "nbdcopy of short.qed"
/usr/bin/python3 - short.out chain/base.raw <<'PY' || fail "short.qed: bytes beyond base.raw are not zero"
import sys
out = open(sys.argv[1], "rb").read()
base = open(sys.argv[2], "rb").read()
# bytes [0, 64K) come straight from base.raw (untouched by the overlay)
assert out[:65536] == base[:65536]
# everything past max(end of base, end of the overlay's cluster at 96K..104K) is zero
tail = out[128 * 1024:]
assert tail == bytes(len(tail)), "nonzero bytes after the raw backing file"
PY

echo "== header_size=2 image (backing name in cluster 1, L1 at 2 * cluster_size)"
/usr/bin/python3 - chain/hs2.qed <<'PY'
import struct, sys
cs, ts, hs = 4096, 4, 2
size = 1536 * 1024
name = b"mid.qed"
l1_off = hs * cs
features = 0x1                      # backing file (format probed: qed)
hdr = struct.pack("<4sIIIQQQQQII", b"QED\0", cs, ts, hs, features, 0, 0,
                  l1_off, size, cs, len(name))
with open(sys.argv[1], "wb") as f:
    f.write(hdr)
    f.seek(cs)
    f.write(name)
    f.seek(l1_off + ts * cs - 1)
    f.write(b"\0")
PY
qemu-img info chain/hs2.qed >/dev/null || fail "qemu cannot open the hand-made header_size=2 image"
qio_ok chain/hs2.qed \
  "write -P 0x81 $((5 * KiB + 3)) $((9 * KiB))" \
  "write -z $((64 * KiB)) $((16 * KiB))" \
  "write -P 0x82 $((MiB + 4 * KiB)) 100"
[[ $(peek chain/hs2.qed 12 4) -eq 2 ]] || fail "qemu rewrote header_size"
check_same_as_qemu chain/hs2.qed

echo "PASS"
