#!/usr/bin/python3
"""Compare ranges of a QED image, as qemu reads it, with a raw reference file.

    write_qemu_read.py IMAGE REF WINDOWS

WINDOWS has one "START END" byte range per line.  The image is served by
`qemu-nbd -r -f qed` (socket activation) and read with plain NBD reads.

This is the qemu oracle for images where qemu-img compare/convert/map cannot be
used: QEMU 7.2 aborts in bdrv_co_block_status ("Assertion `*pnum &&
QEMU_IS_ALIGNED(*pnum, align) ...' failed") on any QED image with an allocated L2
table whose unallocated tail is 4 GiB or more (e.g. 1 MiB clusters, table_size 2,
one write, size > 4 GiB), while plain reads work.
"""
import sys

import nbd


def main():
    image, ref, windows = sys.argv[1:4]
    h = nbd.NBD()
    h.connect_systemd_socket_activation(["qemu-nbd", "-r", "-f", "qed", image])
    size = h.get_size()
    step = 16 << 20
    bad = 0
    total = 0
    with open(ref, "rb") as f, open(windows) as w:
        for line in w:
            if not line.strip():
                continue
            lo, hi = (int(x) for x in line.split())
            lo = lo // 512 * 512  # qemu-nbd's minimum block size
            hi = min((hi + 511) // 512 * 512, size)
            pos = lo
            while pos < hi:
                n = min(step, hi - pos)
                got = h.pread(n, pos)
                f.seek(pos)
                want = f.read(n)
                want += bytes(n - len(want))
                if got != want:
                    i = next(i for i in range(n) if got[i] != want[i])
                    print("%s: FAIL: qemu reads 0x%02x at %d, the reference has 0x%02x" %
                          (image, got[i], pos + i, want[i]), file=sys.stderr)
                    bad += 1
                    break
                total += n
                pos += n
    h.shutdown()
    if bad:
        return 1
    print("%s: qemu reads %d bytes in the touched windows as the reference" % (image, total))
    return 0


if __name__ == "__main__":
    sys.exit(main())
