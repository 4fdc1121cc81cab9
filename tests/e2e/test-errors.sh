#!/usr/bin/env bash
# Invalid images: nbdkit must refuse to start (non-zero exit, an error on stderr
# naming the file, the --run command never run).  Also: an L2 entry pointing beyond
# the end of the file reads as unallocated, without error; a misaligned L2 entry
# fails only the reads that touch it.
source "$(dirname "$0")/functions.sh" "$@"
requires /usr/bin/python3 -c 'import nbd'

# Header field offsets (little-endian), see docs qed-format.md.
OFF_MAGIC=0 OFF_CLUSTER=4 OFF_TABLE=8 OFF_HEADER=12 OFF_FEATURES=16
OFF_L1=40 OFF_SIZE=48 OFF_BNAME=56 OFF_BSIZE=60

fresh() {  # fresh NAME [qemu-img create options...]: a default 1 MiB image
  local name=$1
  shift
  rm -f "$name"
  qemu-img create -q -f qed "$@" "$name" 1M
}

# must_refuse WHAT IMAGE-ARG NAME...: starting nbdkit on file=IMAGE-ARG must fail,
# and stderr must mention one of the NAMEs (base names of files).
must_refuse() {
  local what=$1 file=$2
  shift 2
  echo "== $what"
  refuses file="$file" || fail "$what: nbdkit did not refuse $file cleanly"
  # The filter names the image by where it reads it from, not by a file name.
  ! through_filter || set -- "$@" "$filter_image_name"
  local n ok=
  for n in "$@"; do
    if grep -qF -- "$n" "$nbdkit_err"; then ok=1; fi
  done
  [[ -n $ok ]] || fail "$what: stderr does not name the file ($*)"
}

# Sanity: a good image starts.
fresh good.qed
serve_ro good.qed 'touch ran' || fail "a valid image was refused"
[[ -e ran ]] || fail "--run did not run on a valid image"

fresh badmagic.qed;   poke badmagic.qed $OFF_MAGIC 4 0x00444552
must_refuse "bad magic" badmagic.qed badmagic.qed

fresh feature8.qed;   poke feature8.qed $OFF_FEATURES 8 0x8
must_refuse "unknown feature bit 0x8" feature8.qed feature8.qed

fresh cs1000.qed;     poke cs1000.qed $OFF_CLUSTER 4 1000
must_refuse "cluster_size 1000" cs1000.qed cs1000.qed

fresh cs2k.qed;       poke cs2k.qed $OFF_CLUSTER 4 2048
must_refuse "cluster_size 2048 (below 4 KiB)" cs2k.qed cs2k.qed

fresh ts3.qed;        poke ts3.qed $OFF_TABLE 4 3
must_refuse "table_size 3" ts3.qed ts3.qed

fresh ts32.qed;       poke ts32.qed $OFF_TABLE 4 32
must_refuse "table_size 32" ts32.qed ts32.qed

fresh size.qed;       poke size.qed $OFF_SIZE 8 $(( 1024 * 1024 + 100 ))
must_refuse "image_size not a multiple of 512" size.qed size.qed

fresh trunc.qed;      truncate -s 200000 trunc.qed     # L1 is 65536..327680
must_refuse "truncated file (L1 table does not fit)" trunc.qed trunc.qed

fresh l1off.qed;      poke l1off.qed $OFF_L1 8 $(( 65536 + 512 ))
must_refuse "misaligned L1 table offset" l1off.qed l1off.qed

fresh l1hdr.qed;      poke l1hdr.qed $OFF_L1 8 0
must_refuse "L1 table inside the header" l1hdr.qed l1hdr.qed

must_refuse "missing file" "$tmp/no-such-file.qed" no-such-file.qed

mkdir adir.qed
must_refuse "a directory" adir.qed adir.qed

: >empty.qed
must_refuse "an empty file" empty.qed empty.qed

# Backing files.
qemu-img create -q -f qcow2 backing.qcow2 1M
qemu-img create -q -f qed -b backing.qcow2 -F qcow2 onqcow2.qed 1M
must_refuse "qcow2 backing file" onqcow2.qed onqcow2.qed backing.qcow2

fresh gone-base.qed
qemu-img create -q -f qed -b gone-base.qed -F qed ongone.qed 1M
rm gone-base.qed
must_refuse "missing backing file" ongone.qed ongone.qed gone-base.qed

# a.qed backed by itself: create with a placeholder name of the same length, then
# patch the name (qemu-img refuses to create a loop).
qemu-img create -q -f qed -u -b X.qed -F qed a.qed 1M
/usr/bin/python3 - a.qed <<'PY'
import sys
p = sys.argv[1]
data = bytearray(open(p, "rb").read())
off = int.from_bytes(data[56:60], "little"); n = int.from_bytes(data[60:64], "little")
assert data[off:off + n] == b"X.qed"
data[off:off + n] = b"a.qed"
open(p, "wb").write(data)
PY
must_refuse "backing loop (a.qed backed by itself)" a.qed a.qed

# b.qed -> c.qed -> b.qed
qemu-img create -q -f qed -u -b c.qed -F qed b.qed 1M
qemu-img create -q -f qed -u -b b.qed -F qed c.qed 1M
must_refuse "backing loop (b.qed -> c.qed -> b.qed)" b.qed b.qed c.qed

fresh bname.qed -b good.qed -F qed
poke bname.qed $OFF_BNAME 4 65500                  # name runs past the header cluster
poke bname.qed $OFF_BSIZE 4 100
must_refuse "backing name outside the header" bname.qed bname.qed

# A backing name with a terminal escape and a newline (a fake log line): the message
# quotes it escaped, and no control character reaches the log.  Through the filter,
# without qed-backing= (which would be the user's own words, printed by nbdkit).
echo "== a backing file name with control characters is printed escaped"
qemu-img create -q -f qed -u -b $'gone\x1b[31m\nFAKE LOG LINE' -F raw ctl.qed 1M
if ! through_filter; then
  refuses file=ctl.qed || fail "an image over a missing backing file was served"
else
  rm -f ran "$tmp/sock"
  QED_NBDKIT_TIMEOUT=8 qed_nbdkit -U "$tmp/sock" --filter="$filter" file "$tmp/ctl.qed" \
    --run "nbdinfo --size \"\$uri\" >/dev/null && touch ran" || true
  [[ ! -e ran ]] || fail "the filter served an image whose backing file it cannot open"
fi
grep -qF 'gone\x1b[31m\x0aFAKE LOG LINE' "$nbdkit_err" ||
  fail "the backing file name is not quoted escaped"
if grep -q $'\x1b' "$nbdkit_err" || grep -q '^FAKE' "$nbdkit_err"; then
  fail "control characters from the image reached the log"
fi

# L2 entries pointing beyond the end of the file read as unallocated.
echo "== L2 entry beyond EOF reads as unallocated"
# l2_entry_offset IMAGE GUEST_OFFSET: file offset of the L2 entry mapping the offset
l2_entry_offset() {
  /usr/bin/python3 - "$@" <<'PY'
import struct, sys
p, guest = sys.argv[1], int(sys.argv[2])
with open(p, "rb") as f:
    h = struct.unpack("<4sIIIQQQQQII", f.read(64))
    cs, ts, l1 = h[1], h[2], h[7]
    n = ts * cs // 8
    l1i, l2i = guest // cs // n, (guest // cs) % n
    f.seek(l1 + 8 * l1i)
    l2 = int.from_bytes(f.read(8), "little")
    assert l2 != 0
    print(l2 + 8 * l2i)
PY
}
qemu-img create -q -f qed -o cluster_size=4096 eof.qed 1M
qemu-io -f qed -c 'write -P 0x31 0 16k' -c 'write -P 0x32 64k 8k' eof.qed >/dev/null
qemu-img convert -f qed -O raw eof.qed eof.expected.raw
fsize=$(stat -c %s eof.qed)
entry=$(l2_entry_offset eof.qed 4096)               # guest cluster 1 (0x31 data)
poke eof.qed "$entry" 8 $(( (fsize / 4096 + 10) * 4096 ))
entry=$(l2_entry_offset eof.qed $(( 64 * 1024 )))   # guest 64k (0x32 data)
poke eof.qed "$entry" 8 $(( fsize / 4096 * 4096 ))  # exactly at EOF
/usr/bin/python3 - eof.expected.raw <<'PY'
import sys
p = sys.argv[1]
d = bytearray(open(p, "rb").read())
d[4096:8192] = bytes(4096)
d[65536:69632] = bytes(4096)
open(p, "wb").write(d)
PY
serve_ro eof.qed 'nbdcopy --no-extents "$uri" eof.out.raw && nbdinfo --map "$uri" >eof.map' ||
  fail "reading an image with L2 entries beyond EOF failed"
cmp eof.expected.raw eof.out.raw || fail "L2 entry beyond EOF: not read as zeroes"
awk '$1 <= 4096 && 4096 < $1 + $2 && $3 != 3 { bad = 1 }
     $1 <= 65536 && 65536 < $1 + $2 && $3 != 3 { bad = 1 }
     END { exit bad }' eof.map || { cat eof.map; fail "L2 entry beyond EOF: map does not say hole,zero"; }

echo "== L2 entry beyond EOF over a backing file reads the backing file"
qemu-img create -q -f qed -o cluster_size=4096 eofbase.qed 1M
qemu-io -f qed -c 'write -P 0x41 0 64k' eofbase.qed >/dev/null
qemu-img create -q -f qed -o cluster_size=4096 -b eofbase.qed -F qed eoftop.qed 1M
qemu-io -f qed -c 'write -P 0x42 0 8k' eoftop.qed >/dev/null
fsize=$(stat -c %s eoftop.qed)
entry=$(l2_entry_offset eoftop.qed 4096)
poke eoftop.qed "$entry" 8 $(( (fsize / 4096 + 3) * 4096 ))
serve_ro eoftop.qed '/usr/bin/python3 -c "
import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1])
assert h.pread(4096, 0) == b\"\\x42\" * 4096
assert h.pread(4096, 4096) == b\"\\x41\" * 4096, \"cluster 1 should come from the backing file\"
assert h.pread(8192, 8192) == b\"\\x41\" * 8192
h.shutdown()
" "$uri"' || fail "L2 entry beyond EOF over a backing file"

echo "== misaligned L2 entry: reads of that cluster fail, others work, no crash"
qemu-img create -q -f qed -o cluster_size=4096 mis.qed 1M
qemu-io -f qed -c 'write -P 0x51 0 16k' mis.qed >/dev/null
entry=$(l2_entry_offset mis.qed 8192)
old=$(peek mis.qed "$entry" 8)
poke mis.qed "$entry" 8 $(( old + 512 ))
serve_ro mis.qed '/usr/bin/python3 -c "
import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1])
assert h.pread(8192, 0) == b\"\\x51\" * 8192
try:
    h.pread(4096, 8192)
except nbd.Error as e:
    print(\"expected error:\", e)
else:
    raise SystemExit(\"read of a cluster with a misaligned L2 entry succeeded\")
assert h.pread(4096, 12288) == b\"\\x51\" * 4096
assert h.pread(4096, 16384) == bytes(4096)
h.shutdown()
" "$uri"' || fail "misaligned L2 entry"

echo "== an image larger than NBD can serve (2^63 bytes or more)"
rm -f big.qed
serve_rw big.qed true create=true cluster-size=64M table-size=16 size=1G ||
  fail "could not create big.qed"
poke big.qed $OFF_SIZE 8 9223372036854777856  # 2^63 + 2048, valid for QED
must_refuse "image over 2^63-1 bytes" big.qed big.qed
grep -q 'larger than NBD can serve' "$nbdkit_err" || fail "the refusal does not say why"

if ! through_filter; then
  echo "== create=true with backing= and allow-backing=false leaves nothing behind"
  rm -f nob.qed
  refuses file=nob.qed create=true size=1M backing=good.qed allow-backing=false ||
    fail "create with a backing file and allow-backing=false was accepted"
  [[ ! -e nob.qed ]] || fail "the refused create left nob.qed behind"
fi

echo "PASS"
