#!/bin/bash
# Makes the seed images of fuzz_translate and fuzz_check (tests/fuzz/corpus/):
# a few with qemu-img and qemu-io, and images with table_size=1 (which QEMU
# creates but cannot open) with a small builder below; then patches copies
# into the hostile shapes that matter to a QED reader: an entry shared by two
# clusters, one past the end of the file, one at its own table, one into the
# L1 table, an L1 entry into the header, a dirty image with a leak. Small
# tables (4 and 8 KiB clusters, mostly one cluster per table) keep the
# targets fast: their cost grows with the table entries they walk.
# Run from anywhere; it rewrites the seed-*.qed files.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"

qemu-img create -q -f qed -o cluster_size=4096,table_size=2 c4k-t2.qed 9M
qemu-io -f qed -c 'write -q -P 0x11 0 4k' -c 'write -q -P 0x22 8292 300' \
  -c 'write -q -P 0x33 4193792 1024' -c 'write -q -z 12k 4k' \
  -c 'write -q -P 0x44 8389632 8k' c4k-t2.qed

head -c 2M /dev/zero | tr '\0' '\252' >base.raw
qemu-img create -q -f qed -o cluster_size=4096,table_size=4 -b base.raw -F raw \
  c4k-t4-backing.qed 3M
qemu-io -f qed -c 'write -q -P 0x88 4196 100' -c 'write -q -P 0x99 2M 4k' c4k-t4-backing.qed

qemu-img create -q -f qed -o cluster_size=4096,table_size=2 c4k-t2-empty.qed 0

/usr/bin/python3 - <<'PY'
import struct

def build(name, cs, ts, size, writes, zeroes=()):
    """A QED image laid out as the engine and QEMU lay it out: header, L1,
    then tables and data clusters in the order the writes need them."""
    entries = ts * cs // 8
    span = entries * cs
    f = bytearray(cs + ts * cs)
    struct.pack_into('<IIIIQQQQQII', f, 0, 0x00444551, cs, ts, 1, 0, 0, 0, cs, size, 0, 0)
    def table(i):
        off, = struct.unpack_from('<Q', f, cs + 8 * i)
        if off == 0:
            off = len(f)
            f.extend(bytes(ts * cs))
            struct.pack_into('<Q', f, cs + 8 * i, off)
        return off
    def cluster(pos, allocate=True):
        t = table(pos // span)
        j = pos % span // cs
        off, = struct.unpack_from('<Q', f, t + 8 * j)
        if off <= 1 and allocate:
            off = len(f)
            f.extend(bytes(cs))
            struct.pack_into('<Q', f, t + 8 * j, off)
        return t + 8 * j, off
    for pos, length, byte in writes:
        for p in range(pos, pos + length):
            f[cluster(p)[1] + p % cs] = byte
    for pos in zeroes:
        struct.pack_into('<Q', f, cluster(pos, False)[0], 1)
    open(name, 'wb').write(f)

build('t1-4k.qed', 4096, 1, 5 * 2**20 - 1536,
      [(0, 4096, 0x11), (8292, 300, 0x22), (2 * 2**20 - 512, 1024, 0x33),
       (4 * 2**20 + 4096, 8192, 0x44)], zeroes=[12288])
build('t1-8k.qed', 8192, 1, 3 * 2**20, [(100, 300, 0x55), (2**20, 16384, 0x66),
                                        (3 * 2**20 - 8192, 8192, 0x77)])

def load(name):
    return bytearray(open(name, 'rb').read())

def header(f):
    cs, ts, hs = struct.unpack_from('<III', f, 4)
    feat, = struct.unpack_from('<Q', f, 16)
    l1, size = struct.unpack_from('<QQ', f, 40)
    return cs, ts, hs, feat, l1, size

def entries(f, off, n):
    return list(struct.unpack_from('<%dQ' % n, f, off))

def set_entry(f, off, v):
    struct.pack_into('<Q', f, off, v)

def first_table(f):
    cs, ts, hs, feat, l1, size = header(f)
    for i, e in enumerate(entries(f, l1, ts * cs // 8)):
        if e:
            return l1 + 8 * i, e
    raise SystemExit('no L2 table')

def data_slots(f):
    cs, ts, hs, feat, l1, size = header(f)
    _, t = first_table(f)
    return [(t + 8 * j, e) for j, e in enumerate(entries(f, t, ts * cs // 8)) if e > 1]

def save(f, name):
    open(name, 'wb').write(f)

def need_check(f):
    struct.pack_into('<Q', f, 16, header(f)[3] | 2)

base = load('t1-4k.qed')
cs, ts, hs, feat, l1, size = header(base)
(a, va), (b, vb) = data_slots(base)[:2]

f = bytearray(base); set_entry(f, b, va); save(f, 'shared.qed')
f = bytearray(base); set_entry(f, b, len(f) + 4 * cs); need_check(f); save(f, 'past-end.qed')
l1_slot, table = first_table(base)
f = bytearray(base); set_entry(f, a, table); save(f, 'own-table.qed')
f = bytearray(base); set_entry(f, a, l1 + cs); set_entry(f, b, vb + 1); save(f, 'into-l1.qed')
f = bytearray(base); set_entry(f, l1_slot + 8, 512); save(f, 'l1-header.qed')
f = bytearray(base); need_check(f); f += bytes([0x5a]) * cs; save(f, 'dirty-leak.qed')
PY
for f in c4k-t2 c4k-t4-backing c4k-t2-empty t1-4k t1-8k shared past-end own-table into-l1 l1-header dirty-leak; do
  for t in fuzz_translate fuzz_check; do
    cp "$f.qed" "$here/corpus/$t/seed-$f.qed"
  done
done
ls -l "$here"/corpus/fuzz_check/seed-*.qed

# fuzz_requests: request sequences in its input format (fuzz_requests.cpp,
# request_harness.h) for every scenario (geometry x backing file), using every
# kind of request, clean and growing reopens, and power losses at the end of
# the log and inside it.
mkdir -p "$here/corpus/fuzz_requests"
/usr/bin/python3 - "$here/corpus/fuzz_requests" <<'PY'
import struct, sys
out = sys.argv[1]

def place(kind, raw, lkind=None, lraw=0):
    b = bytes([kind])
    fmt = {0: '<I', 1: '<H', 2: '<B', 3: '<H'}[kind & 3]
    b += struct.pack(fmt, raw)
    if lkind is None:  # a position only (extents to the end)
        return b
    b += bytes([lkind])
    if lkind & 3 in (0, 2):
        b += struct.pack('<H', lraw)
    return b

def write(shape, fua, p):    return bytes([((shape | (4 if fua else 0)) << 4) | 0]) + p
def zero(flags, p):          return bytes([6, flags]) + p
def trim(fua, p):            return bytes([8, 1 if fua else 0]) + p
def flush():                 return bytes([9])
def read(p):                 return bytes([11]) + p
def extents(flags, p):       return bytes([13, flags]) + p
def reopen(crash=False, grow=None, point=0, survival=0, seed=0):
    flags = (1 if crash else 0) | (2 if grow is not None else 0)
    b = bytes([14, flags])
    if grow is not None:
        b += bytes([grow])
    if crash:
        b += bytes([point, survival, seed])
    return b

edge = lambda c, skew=0: place(1 | (skew << 2), c, 1)           # at a cluster, ~1 cluster
near_end = lambda back: place(3, back, 0, 300)                    # 300 bytes near the end
span_edge = lambda s: place(2 | (0x3f << 2), s, 3 | (3 << 2))     # across an L2 span, 2 KiB
anywhere = lambda raw: place(0, raw, 2, 5000)

# Three per scenario, each with at most two reopens (what a run takes):
# a clean one then a growing one; a power loss at the end of the log (what
# was not synced is lost) then one inside it (torn); a power loss inside the
# log then a clean reopen.
for g in range(4):
    for below in range(3):
        head = bytes([g + 4 * below, (g + below) % 3])
        work = (write(2, False, edge(0)) + write(0, False, place(1 | (0x3e << 2), 1, 0, 100)) +
                read(edge(0)) + flush() + write(1, True, span_edge(1)) + zero(1, edge(3)) +
                zero(0, anywhere(123456)) + trim(False, edge(2)) + extents(2, place(0, 0)))
        more = (read(anywhere(777)) + write(0, False, near_end(10)) + zero(2, edge(5)) +
                write(2, False, edge(6)) + extents(1 | (3 << 2), edge(0)) + trim(True, edge(0)))
        seqs = {
            'clean-grow': work + reopen() + more + reopen(grow=g + 1) + write(0, True, near_end(0)),
            'lost-torn': work + reopen(crash=True) + more + reopen(crash=True, point=200, survival=2, seed=g),
            'torn-clean': work + more + reopen(crash=True, point=160 + 8 * g, survival=2, seed=g) +
                          read(edge(0)) + reopen() + read(edge(1)),
        }
        for name, seq in seqs.items():
            open('%s/seed-g%d-b%d-%s' % (out, g, below, name), 'wb').write(head + seq)
PY
