#!/usr/bin/python3
"""Request patterns that make an NBD server's metadata cache work hard (used by
test-memory.sh, which measures the server's peak memory around them).

    memory_patterns.py URI PATTERN --span BYTES [--count N] [--inflight K]
                       [--request BYTES] [--each-span] [--written]

URI is the export; --span the bytes one L2 table maps (cluster size * entries
per table), so that each step of a pattern lands in another table.  Up to
--inflight requests are in flight at once (the libnbd async API), so that the
server's threads load, create and change tables side by side.  Patterns:

  span-writes  one byte into each of the first --count spans (every span if
               --count is 0), no flush: each one dirties another table.  Then
               reads every byte back.
  span-reads   one byte from each span: every table is read.  With
               --written, each must read what span-writes wrote there.
  zero         write-zeroes over the first --count spans (the whole disk if
               --count is 0), --request bytes at a time (may trim), no flush.
               Over a backing file every cluster becomes a zero cluster:
               every table changes entirely.
  trim         trim, like zero.

With --each-span, zero and trim send one request of --request bytes at the
start of each of the first --count spans instead (for spans too large to
cover: 512 TiB with 64 MiB clusters).

Exits non-zero, with a message, if a request fails or a read does not return
what the pattern wrote.
"""
import argparse
import sys

import nbd


def run_window(h, starts, inflight):
    """Issues start() for each function in `starts`, keeping at most `inflight`
    commands in flight, and waits for them all."""
    for start in starts:
        while h.aio_in_flight() >= inflight:
            h.poll(-1)
        start()
    while h.aio_in_flight() > 0:
        h.poll(-1)


def checked(what):
    """A completion callback that records a failed command."""
    def done(error):
        if error.value != 0:
            failures.append("%s: errno %d" % (what, error.value))
        return 1
    return done


failures = []


def span_offsets(size, span, count):
    n = (size + span - 1) // span
    if count:
        n = min(n, count)
    # The middle of each span, clipped to the disk: not cluster aligned, so
    # that a write is a read-modify-write of its cluster.
    return [min(i * span + span // 2 + 7, size - 1) for i in range(n)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("uri")
    ap.add_argument("pattern", choices=["span-writes", "span-reads", "zero", "trim"])
    ap.add_argument("--span", type=int, required=True)
    ap.add_argument("--count", type=int, default=0)
    ap.add_argument("--inflight", type=int, default=8)
    ap.add_argument("--request", type=int, default=1 << 30)
    ap.add_argument("--written", action="store_true")
    ap.add_argument("--each-span", action="store_true")
    a = ap.parse_args()

    h = nbd.NBD()
    h.connect_uri(a.uri)
    size = h.get_size()
    starts = []
    if a.pattern in ("span-writes", "span-reads"):
        offsets = span_offsets(size, a.span, a.count)
        if a.pattern == "span-writes":
            for i, off in enumerate(offsets):
                buf = nbd.Buffer.from_bytearray(bytearray([1 + i % 255]))
                starts.append(lambda b=buf, o=off: h.aio_pwrite(
                    b, o, completion=checked("write at %d" % o)))
            run_window(h, starts, a.inflight)
        bufs = []
        starts = []
        for off in offsets:
            buf = nbd.Buffer(1)
            bufs.append((off, buf))
            starts.append(lambda b=buf, o=off: h.aio_pread(
                b, o, completion=checked("read at %d" % o)))
        run_window(h, starts, a.inflight)
        for i, (off, buf) in enumerate(bufs):
            want = 1 + i % 255
            got = buf.to_bytearray()[0]
            if (a.pattern == "span-writes" or a.written) and got != want:
                failures.append("byte at %d reads %d, not %d" % (off, got, want))
    else:
        end = min(size, a.count * a.span) if a.count else size
        if a.each_span:
            ranges = [(o, min(a.request, size - o)) for o in range(0, end, a.span)]
        else:
            ranges = [(o, min(a.request, end - o)) for o in range(0, end, a.request)]
        for off, n in ranges:
            if a.pattern == "zero":
                starts.append(lambda o=off, n=n: h.aio_zero(
                    n, o, completion=checked("zero at %d" % o)))
            else:
                starts.append(lambda o=off, n=n: h.aio_trim(
                    n, o, completion=checked("trim at %d" % o)))
        run_window(h, starts, a.inflight)
    h.shutdown()
    if failures:
        for f in failures[:10]:
            print("%s: %s: %s" % (sys.argv[0], a.pattern, f), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
