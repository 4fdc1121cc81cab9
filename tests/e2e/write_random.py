#!/usr/bin/python3
"""Randomized differential test of the write path (used by test-write-random.sh).

    write_random.py URI REF SEED NREQ --cluster-size CS --table-size TS
                    [--backing RAW | --backing-uri BASE-URI]
        (writes REF and REF.windows, the byte ranges requests went to)
    write_random.py --patch REF OFFSET LENGTH BYTE [OFFSET LENGTH BYTE...]

Opens --conns connections to URI (4 by default) and runs NREQ random requests in
total, one Python thread per connection, each keeping up to --inflight requests in
flight with the libnbd async API: byte-granular pwrite (some FUA), zero (NO_HOLE,
FAST_ZERO, FUA), trim (some FUA), flush, pread and block status.  A reference model
of the disk is updated in the order requests are issued; every read and every
block-status reply is checked against it.  At the end the model is written to REF
(a sparse raw file) for the caller to compare the whole export with.  The image's
raw backing file is --backing (a local file) or --backing-uri (read through NBD
from the server that holds it, when the backing file is on an NBD server).

Determinism: each thread owns disjoint byte ranges ("slices") of the disk, so the
model does not depend on how threads interleave.  Slices are cut at offsets that
are not cluster aligned, so neighbouring threads write different bytes of the same
clusters at the same time.  Inside a thread a request is not issued while it
overlaps an in-flight request unless both only read.  Slices are placed around
interesting offsets: the start and end of the disk, L2-table boundaries, the end
of the backing file.

Trim is checked strictly against this plugin's documented behaviour: whole
clusters inside a trimmed range read back as zeroes if the cluster was ever written
or zeroed (it is data, a zero cluster, or unallocated without data below), and keep
their contents if it was never touched (unallocated over the backing file, which the
plugin leaves alone); partial clusters at the ends of a trim are unchanged.  If the
file system holding REF (the image's directory) cannot punch holes, trim is a no-op.
"""
import argparse
import os
import random
import sys
import threading
import time
import traceback

import nbd

CHUNK = 1 << 20  # model granularity
KiB = 1024
MiB = 1024 * KiB


class Model:
    """Sparse byte model of the disk: 1 MiB chunks created on first touch."""

    def __init__(self, size, base):
        self.size = size
        self.base = base  # bytes of the backing file (or b"")
        self.chunks = {}
        self.lock = threading.Lock()

    def _chunk(self, i):
        c = self.chunks.get(i)
        if c is None:
            with self.lock:
                c = self.chunks.get(i)
                if c is None:
                    lo = i * CHUNK
                    n = min(CHUNK, self.size - lo)
                    c = bytearray(n)
                    b = self.base[lo:lo + n]
                    c[:len(b)] = b
                    self.chunks[i] = c
        return c

    def get(self, off, n):
        out = bytearray()
        while n > 0:
            i, o = divmod(off, CHUNK)
            c = self._chunk(i)
            k = min(n, len(c) - o)
            out += c[o:o + k]
            off += k
            n -= k
        return bytes(out)

    def put(self, off, data):
        p = 0
        while p < len(data):
            i, o = divmod(off + p, CHUNK)
            c = self._chunk(i)
            k = min(len(data) - p, len(c) - o)
            c[o:o + k] = data[p:p + k]
            p += k

    def zero(self, off, n):
        while n > 0:
            i, o = divmod(off, CHUNK)
            c = self._chunk(i)
            k = min(n, len(c) - o)
            c[o:o + k] = bytes(k)
            off += k
            n -= k


class Failure(Exception):
    pass


def can_punch_holes(directory):
    """Whether fallocate(PUNCH_HOLE | KEEP_SIZE) works in directory."""
    import ctypes
    import tempfile
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    with tempfile.TemporaryFile(dir=directory) as f:
        f.write(b"x" * 8192)
        f.flush()
        return libc.fallocate(f.fileno(), 3, 0, 4096) == 0


def make_slices(size, cs, ts, backing_len, rng, nthreads):
    """Windows around interesting offsets, each cut into nthreads slices."""
    l2span = cs * (ts * cs // 8)
    points = {0, size}
    k = 1
    while k * l2span < size and k <= 3:
        points.add(k * l2span)
        k += 1
    if size > l2span:
        # the last L2 boundary before the end, if far from the others
        points.add((size - 1) // l2span * l2span)
    if backing_len:
        points.add(min(backing_len, size))
    points.add(rng.randrange(size // 512) * 512 + rng.randrange(1, 512))
    half = max(3 * MiB, 2 * cs)  # windows reach this far either side of a point
    wins = []
    for p in sorted(points):
        lo, hi = max(0, p - half), min(size, p + half)
        if wins and lo <= wins[-1][1]:
            wins[-1][1] = max(wins[-1][1], hi)
        else:
            wins.append([lo, hi])
    slices = [[] for _ in range(nthreads)]
    for j, (lo, hi) in enumerate(wins):
        cuts = [lo]
        for t in range(1, nthreads):
            c = lo + (hi - lo) * t // nthreads
            c += rng.randrange(1, min(cs, 4096))  # never cluster aligned
            cuts.append(min(max(c, cuts[-1] + 1), hi - 1))
        cuts.append(hi)
        for t in range(nthreads):
            if cuts[t + 1] > cuts[t]:
                slices[(t + j) % nthreads].append((cuts[t], cuts[t + 1]))
    return slices, l2span, wins


class Worker:
    OPS = [("write", 26), ("write_seq", 10), ("burst", 4), ("read", 19), ("zero", 13),
           ("trim", 8), ("status", 12), ("flush", 3), ("write_aligned", 7)]

    def __init__(self, idx, uri, model, slices, nreq, seed, cs, l2span, inflight,
                 backing, touched, punch):
        self.idx = idx
        self.uri = uri
        self.model = model
        self.slices = slices
        self.nreq = nreq
        self.rng = random.Random(seed * 1000 + idx)
        self.cs = cs
        self.l2span = l2span
        self.maxflight = inflight
        self.backing = backing
        self.touched = touched  # set of cluster indices ever written or zeroed
        self.punch = punch  # trim frees clusters (else the plugin ignores it)
        self.inflight = {}  # cookie -> request dict
        self.log = []  # issued requests, for failure reports
        self.error = None
        self.stats = {}
        self.fast_zero_enotsup = 0
        self.h = None
        self.seq_pos = None  # where the next sequential write goes

    # -- request generation ------------------------------------------------------
    def pick_range(self, aligned=False):
        lo, hi = self.rng.choice(self.slices)
        cs = self.cs
        r = self.rng.random()
        if aligned:
            first = (lo + cs - 1) // cs
            last = hi // cs
            if last <= first:
                aligned = False
            else:
                maxk = max(1, max(300 * KiB, 2 * cs) // cs)
                k = self.rng.randint(1, maxk)
                c = self.rng.randrange(first, last)
                k = min(k, last - c)
                return c * cs, k * cs
        if r < 0.25:
            n = self.rng.randint(1, 512)
        elif r < 0.6:
            n = self.rng.randint(1, 64 * KiB)
        else:
            n = self.rng.randint(1, 300 * KiB)
        n = min(n, hi - lo)
        if self.rng.random() < 0.5:
            # cross a cluster or L2-table boundary inside the slice
            step = self.l2span if self.rng.random() < 0.3 else cs
            b0 = (lo + step - 1) // step * step
            if b0 < hi:
                nb = (hi - 1 - b0) // step + 1
                b = b0 + self.rng.randrange(min(nb, 1 << 30)) * step
                off = b - self.rng.randint(0, n)
                off = max(lo, min(off, hi - n))
                return off, n
        off = self.rng.randint(lo, hi - n)
        return off, n

    def next_sequential(self):
        n = self.rng.randint(1, max(1, min(self.cs // 3, 24 * KiB)))
        pos = self.seq_pos
        if pos is not None:
            pos += self.rng.choice((0, 0, 1, 7, 512))
        if pos is None or self.rng.random() < 0.04 or not any(
                lo <= pos and pos + n <= hi for lo, hi in self.slices):
            lo, hi = self.rng.choice(self.slices)
            n = min(n, hi - lo)
            pos = self.rng.randint(lo, hi - n)
        self.seq_pos = pos + n
        return pos, n

    def next_burst(self):
        """maxflight small writes one after the other, issued back to back: they
        allocate the same fresh clusters at the same time.  Often at the edge of a
        slice, where the neighbouring thread writes the other bytes of the cluster."""
        lo, hi = self.rng.choice(self.slices)
        sizes = [self.rng.randint(1, max(1, min(self.cs // 4, 8 * KiB)))
                 for _ in range(self.maxflight)]
        total = sum(sizes) + 3 * len(sizes)
        if total > hi - lo:
            return [self.one_request("write")]
        r = self.rng.random()
        pos = lo if r < 0.2 else hi - total if r < 0.4 else self.rng.randint(lo, hi - total)
        reqs = []
        for n in sizes:
            pos += self.rng.choice((0, 0, 1, 3))
            reqs.append({"op": "write", "flags": 0, "off": pos, "len": n,
                         "data": self.rng.randbytes(n)})
            pos += n
        return reqs

    def next_request(self):
        """The next group of requests to issue together (usually one)."""
        op = self.rng.choices([o for o, _ in self.OPS], [w for _, w in self.OPS])[0]
        if op == "burst":
            return self.next_burst()
        return [self.one_request(op)]

    def one_request(self, op):
        req = {"op": op, "flags": 0}
        if op == "flush":
            req["off"], req["len"] = 0, 0
            return req
        if op == "write_seq":
            # Small writes one after the other (with small gaps): several in flight
            # at once land in the same, often fresh, cluster.
            req["op"] = op = "write"
            off, n = self.next_sequential()
        else:
            off, n = self.pick_range(aligned=(op == "write_aligned" or
                                              (op in ("zero", "trim") and self.rng.random() < 0.5)))
        req["off"], req["len"] = off, n
        if op == "write_aligned":
            req["op"] = op = "write"
        if op == "write":
            r = self.rng.random()
            if r < 0.1:
                data = bytes(n)  # a write of zeroes still allocates
            elif r < 0.3:
                data = bytes([self.rng.randrange(256)]) * n
            else:
                data = self.rng.randbytes(n)
            req["data"] = data
            if self.rng.random() < 0.1:
                req["flags"] |= nbd.CMD_FLAG_FUA
        elif op == "zero":
            if self.rng.random() < 0.5:
                req["flags"] |= nbd.CMD_FLAG_NO_HOLE
            if self.rng.random() < 0.15:
                req["flags"] |= nbd.CMD_FLAG_FAST_ZERO
            if self.rng.random() < 0.1:
                req["flags"] |= nbd.CMD_FLAG_FUA
        elif op == "trim":
            if self.rng.random() < 0.1:
                req["flags"] |= nbd.CMD_FLAG_FUA
        elif op == "status":
            if self.rng.random() < 0.3:
                req["flags"] |= nbd.CMD_FLAG_REQ_ONE
        return req

    # -- model ---------------------------------------------------------------------
    def touch(self, off, n):
        cs = self.cs
        for c in range(off // cs, (off + n - 1) // cs + 1):
            self.touched.add(c)

    def apply(self, req):
        op, off, n = req["op"], req["off"], req["len"]
        if op == "write":
            self.model.put(off, req["data"])
            self.touch(off, n)
        elif op == "zero":
            self.model.zero(off, n)
            self.touch(off, n)
        elif op == "trim" and self.punch:
            cs = self.cs
            first = (off + cs - 1) // cs
            last = (off + n) // cs
            for c in range(first, last):
                if not self.backing or c in self.touched:
                    self.model.zero(c * cs, cs)
        # (a partial last cluster of the disk is never whole inside a trim: the
        # plugin leaves it alone, like the partial clusters at both ends)

    # -- I/O -------------------------------------------------------------------------
    @staticmethod
    def modifies(req):
        return req["op"] in ("write", "zero", "trim")

    def conflicts(self, req):
        if req["op"] == "flush":
            return False
        lo, hi = req["off"], req["off"] + req["len"]
        for r in self.inflight.values():
            if r["op"] == "flush":
                continue
            if not (self.modifies(req) or self.modifies(r)):
                continue
            if lo < r["off"] + r["len"] and r["off"] < hi:
                return True
        return False

    def issue(self, req):
        h = self.h
        op, off, n, fl = req["op"], req["off"], req["len"], req["flags"]
        if op == "write":
            req["buf"] = nbd.Buffer.from_bytearray(req["data"])
            cookie = h.aio_pwrite(req["buf"], off, flags=fl)
        elif op == "read":
            req["buf"] = nbd.Buffer(n)
            cookie = h.aio_pread(req["buf"], off)
        elif op == "zero":
            cookie = h.aio_zero(n, off, flags=fl)
        elif op == "trim":
            cookie = h.aio_trim(n, off, flags=fl)
        elif op == "flush":
            cookie = h.aio_flush()
        elif op == "status":
            req["extents"] = []

            def cb(meta, offset, entries, err, req=req):
                if meta == nbd.CONTEXT_BASE_ALLOCATION:
                    req["extents"].append((offset, list(entries)))
                return 0
            cookie = h.aio_block_status(n, off, cb, flags=fl)
        else:
            raise AssertionError(op)
        self.apply(req)
        self.inflight[cookie] = req
        self.stats[op] = self.stats.get(op, 0) + 1
        self.log.append(self.describe(req))

    @staticmethod
    def describe(req):
        fl = []
        for name in ("FUA", "NO_HOLE", "FAST_ZERO", "REQ_ONE"):
            if req["flags"] & getattr(nbd, "CMD_FLAG_" + name):
                fl.append(name)
        return "%s off=%d len=%d%s" % (req["op"], req["off"], req["len"],
                                       (" " + "|".join(fl)) if fl else "")

    def fail(self, req, msg):
        raise Failure("thread %d: %s: %s" % (self.idx, self.describe(req), msg))

    def first_diff(self, got, want):
        for i in range(len(want)):
            if got[i] != want[i]:
                j = i
                while j < len(want) and got[j] != want[j]:
                    j += 1
                return i, j - i, got[i], want[i]
        return None

    def retire(self, cookie):
        req = self.inflight[cookie]
        try:
            self.h.aio_command_completed(cookie)
        except nbd.Error as e:
            del self.inflight[cookie]
            if (req["op"] == "zero" and req["flags"] & nbd.CMD_FLAG_FAST_ZERO and
                    e.errno in ("ENOTSUP", "EOPNOTSUPP")):  # .errno is the name: do a normal zero instead
                self.fast_zero_enotsup += 1
                retry = dict(req, flags=req["flags"] & ~nbd.CMD_FLAG_FAST_ZERO)
                self.issue(retry)
                return
            self.fail(req, "request failed: %s (errno %s)" % (e, e.errno))
        del self.inflight[cookie]
        op, off, n = req["op"], req["off"], req["len"]
        if op == "read":
            got = req["buf"].to_bytearray()
            want = self.model.get(off, n)
            if got != want:
                d = self.first_diff(got, want)
                self.fail(req, "read mismatch at offset %d (+%d bytes differ): got 0x%02x, "
                               "want 0x%02x" % (off + d[0], d[1], d[2], d[3]))
        elif op == "status":
            ext = req["extents"]
            if len(ext) != 1:
                self.fail(req, "expected one base:allocation reply, got %d" % len(ext))
            offset, entries = ext[0]
            if offset != off:
                self.fail(req, "extents start at %d" % offset)
            if not entries or len(entries) % 2:
                self.fail(req, "bad extent list %r" % entries[:10])
            pos = off
            end = off + n
            for i in range(0, len(entries), 2):
                length, flags = entries[i], entries[i + 1]
                if length <= 0:
                    self.fail(req, "empty extent")
                if req["flags"] & nbd.CMD_FLAG_REQ_ONE and i > 0:
                    self.fail(req, "REQ_ONE gave more than one extent")
                if pos >= end:
                    self.fail(req, "extent beyond the request")
                if flags & nbd.STATE_ZERO:
                    k = min(length, end - pos)
                    data = self.model.get(pos, k)
                    if data.count(0) != k:
                        z = next(j for j in range(k) if data[j])
                        self.fail(req, "extent %d+%d reported zero but byte %d is 0x%02x "
                                       "in the model" % (pos, length, pos + z, data[z]))
                pos += length

    def run(self):
        try:
            self.h = nbd.NBD()
            self.h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
            self.h.connect_uri(self.uri)
            if not self.h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION):
                raise Failure("base:allocation not negotiated")
            issued = 0
            pending = None  # a group of requests, issued back to back
            while issued < self.nreq or self.inflight or pending:
                if pending is None and issued < self.nreq:
                    pending = self.next_request()
                    issued += len(pending)
                if (pending is not None and
                        len(self.inflight) + len(pending) <= self.maxflight and
                        not any(self.conflicts(r) for r in pending)):
                    for r in pending:
                        self.issue(r)
                    pending = None
                    continue
                # wait for a reply
                while True:
                    c = self.h.aio_peek_command_completed()
                    if c > 0:
                        self.retire(c)
                        break
                    if not self.inflight:
                        break
                    self.h.poll(-1)
            self.h.flush()
        except Exception as e:  # report and let the main thread fail
            self.error = e
            if not isinstance(e, Failure):
                traceback.print_exc()


def read_export(uri):
    """All the bytes of an NBD export."""
    b = nbd.NBD()
    b.connect_uri(uri)
    n = b.get_size()
    out = bytearray()
    while len(out) < n:
        out += b.pread(min(4 * MiB, n - len(out)), len(out))
    b.shutdown()
    return bytes(out)


def patch(ref, off, n, byte):
    with open(ref, "r+b") as f:
        f.seek(off)
        f.write(bytes([byte]) * n)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--patch":
        v = [int(x, 0) for x in sys.argv[3:]]
        for i in range(0, len(v), 3):
            patch(sys.argv[2], v[i], v[i + 1], v[i + 2])
        return 0
    ap = argparse.ArgumentParser()
    ap.add_argument("uri")
    ap.add_argument("ref")
    ap.add_argument("seed", type=int)
    ap.add_argument("nreq", type=int)
    ap.add_argument("--cluster-size", type=int, required=True)
    ap.add_argument("--table-size", type=int, required=True)
    ap.add_argument("--backing")
    ap.add_argument("--backing-uri")
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--inflight", type=int, default=4)
    # With copy-on-read or a stream, a cluster never written may have been copied
    # from the base: a trim may then free it (zeroes), which the model cannot tell.
    ap.add_argument("--no-trim", action="store_true")
    a = ap.parse_args()
    if a.no_trim:
        Worker.OPS = [o for o in Worker.OPS if o[0] != "trim"]

    h = nbd.NBD()
    h.connect_uri(a.uri)
    size = h.get_size()
    for what in ("can_multi_conn", "can_trim", "can_zero", "can_fua", "can_flush",
                 "can_fast_zero"):
        if not getattr(h, what)():
            print("write_random: FAIL: export does not advertise %s" % what, file=sys.stderr)
            return 1
    base = b""
    if a.backing:
        with open(a.backing, "rb") as f:
            base = f.read()
    elif a.backing_uri:
        base = read_export(a.backing_uri)
    rng = random.Random(a.seed)
    slices, l2span, windows = make_slices(size, a.cluster_size, a.table_size, len(base), rng, a.conns)
    model = Model(size, base)
    touched = set()
    punch = can_punch_holes(os.path.dirname(os.path.abspath(a.ref)))
    if not punch:
        print("write_random: this file system cannot punch holes: trims change nothing")
    per = a.nreq // a.conns
    workers = [Worker(i, a.uri, model, slices[i], per, a.seed, a.cluster_size, l2span,
                      a.inflight, bool(a.backing or a.backing_uri), touched, punch) for i in range(a.conns)]
    t0 = time.time()
    threads = [threading.Thread(target=w.run) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.time() - t0
    bad = [w for w in workers if w.error]
    if bad:
        for w in bad:
            print("write_random: FAIL (seed %d): %s" % (a.seed, w.error), file=sys.stderr)
            print("  last requests issued by thread %d (in flight at most %d):" %
                  (w.idx, a.inflight), file=sys.stderr)
            for line in w.log[-12:]:
                print("    " + line, file=sys.stderr)
        return 1
    h.flush()
    h.shutdown()
    stats = {}
    for w in workers:
        for k, v in w.stats.items():
            stats[k] = stats.get(k, 0) + v
    print("write_random: seed %d size %d cs %d ts %d: %d requests in %.1f s %s%s" %
          (a.seed, size, a.cluster_size, a.table_size, sum(stats.values()), elapsed,
           dict(sorted(stats.items())),
           " (FAST_ZERO ENOTSUP %d)" % sum(w.fast_zero_enotsup for w in workers)
           if any(w.fast_zero_enotsup for w in workers) else ""))
    # The reference, sparse: the backing data (if any), then every touched chunk.
    with open(a.ref, "wb") as f:
        if base:
            f.write(base[:size])
        f.truncate(size)
        for i in sorted(model.chunks):
            c = model.chunks[i]
            f.seek(i * CHUNK)
            if c.count(0) == len(c):
                if i * CHUNK < len(base):
                    f.write(c)
                continue
            f.write(c)
    with open(a.ref + ".windows", "w") as f:
        for lo, hi in windows:
            f.write("%d %d\n" % (lo, hi))
    return 0


if __name__ == "__main__":
    sys.exit(main())
