#!/usr/bin/python3
"""The benchmark's workloads: their names, what each does, in which order they
run and are reported, and the old numbers (issue 21 renamed them) that --only
still accepts for one release.  bench.sh asks this file which workloads an
--only list selects; report.py reads the descriptions and units from it.  Each
workload's mechanism (image, server, client) is in bench.sh or golden.sh.

  python3 bench/workloads.py select LIST [SECTION]
                                  the selected names (of SECTION), in run order
  python3 bench/workloads.py list            names, old numbers, descriptions
"""
import sys


class Workload:
    def __init__(self, name, section, what, unit='', old=''):
        self.name = name          # as in --only and the results file
        self.section = section    # the table it is reported in
        self.what = what          # its row label in the report
        self.unit = unit          # of its main metric (the tables' "unit" column)
        self.old = old            # its number before issue 21 (an --only alias)


# Report order.  Section "image": one image per server (ours, qemu-nbd, raw),
# the main table; "nbd": a QED overlay over a base on an NBD server; "golden":
# copy-on-read and stream (golden.sh); "mem": peak RSS on 1 TiB images;
# "scale": a 64 TiB sparse image.
WORKLOADS = [
    Workload('seq-alloc-write', 'image', 'sequential allocating write (nbdcopy --flush, fresh image)', 'MiB/s', '1'),
    Workload('seq-read', 'image', 'sequential read (nbdcopy to null:)', 'MiB/s', '2'),
    Workload('seq-overwrite', 'image', 'sequential overwrite (nbdcopy --flush, allocated image)', 'MiB/s', '3'),
    Workload('rand-alloc-write', 'image', '4k random allocating write, QD32 (fresh image)', 'IOPS', '4'),
    Workload('rand-read', 'image', '4k random read, QD32 (allocated image)', 'IOPS', '5'),
    Workload('rand-overwrite', 'image', '4k random overwrite, QD32 (allocated image)', 'IOPS', '6'),
    Workload('cow-seq-alloc-write', 'image', 'CoW: sequential allocating write over raw backing', 'MiB/s', '7a'),
    Workload('cow-rand-alloc-write', 'image', 'CoW: 4k random allocating write over raw backing, QD32', 'IOPS', '7b'),
    Workload('flush-write-qd1', 'image',
             '4k random allocating write, flush after every write, QD1 (fresh image)', 'IOPS', '9a'),
    Workload('flush-write-qd32', 'image',
             '4k random allocating write, flush every 32 writes, QD32 (fresh image)', 'IOPS', '9b'),
    Workload('cow-flush-write-qd1', 'image',
             'CoW: 4k random allocating write, flush after every write, QD1, over raw backing', 'IOPS', '9c'),
    Workload('cow-flush-write-qd32', 'image',
             'CoW: 4k random allocating write, flush every 32 writes, QD32, over raw backing', 'IOPS', '9d'),
    Workload('nbd-seq-read', 'nbd', 'sequential read (nbdcopy to null:)', 'MiB/s', '8a'),
    Workload('nbd-rand-read', 'nbd', '4k random read, QD32', 'IOPS', '8b'),
    Workload('golden-cor', 'golden', 'copy-on-read: a quarter of the disk read three times'),
    Workload('golden-stream', 'golden', 'stream to standalone against nbdcopy of the base'),
    Workload('golden-read-during-stream', 'golden', '4k random read IOPS during a stream and without'),
    Workload('mem-sparse-1t', 'mem', '1 TiB sparse image, 4k random read over all of it'),
    Workload('mem-l2-miss-1t', 'mem', '1 TiB image, all 512 L2 tables allocated (128 MiB), 4k random read'),
    Workload('scale-64t', 'scale', '64 TiB sparse image: server start, nbdinfo --map'),
]
BY_NAME = {w.name: w for w in WORKLOADS}

# Run order of the image section: seq-read, seq-overwrite, rand-read and
# rand-overwrite reuse the image seq-alloc-write leaves.
IMAGE_RUN_ORDER = ['seq-alloc-write', 'seq-read', 'seq-overwrite', 'rand-read', 'rand-overwrite',
                   'rand-alloc-write', 'cow-seq-alloc-write', 'cow-rand-alloc-write',
                   'flush-write-qd1', 'flush-write-qd32', 'cow-flush-write-qd1', 'cow-flush-write-qd32']
SECTION_RUN_ORDER = ['image', 'nbd', 'golden', 'mem', 'scale']
RUN_ORDER = IMAGE_RUN_ORDER + [w.name for s in SECTION_RUN_ORDER[1:]
                               for w in WORKLOADS if w.section == s]
assert sorted(RUN_ORDER) == sorted(BY_NAME)

SECTIONS = {s: [w.name for w in WORKLOADS if w.section == s] for s in SECTION_RUN_ORDER}


def select(only):
    """The workloads an --only list (names, section names, old numbers)
    selects, in run order; all of them for an empty list.  ValueError names
    an unknown word."""
    words = [x for x in only.split(',') if x]
    if not words:
        return list(RUN_ORDER)
    aliases = {w.old: w.name for w in WORKLOADS if w.old}
    chosen = set()
    for word in words:
        if word in BY_NAME:
            chosen.add(word)
        elif word in SECTIONS:
            chosen.update(SECTIONS[word])
        elif word in aliases:
            chosen.add(aliases[word])
        else:
            raise ValueError("unknown workload '%s' (python3 bench/workloads.py list)" % word)
    return [n for n in RUN_ORDER if n in chosen]


def main(argv):
    if len(argv) in (3, 4) and argv[1] == 'select':
        try:
            names = select(argv[2])
            if len(argv) == 4:
                if argv[3] not in SECTIONS:
                    raise ValueError("unknown section '%s'" % argv[3])
                names = [n for n in names if BY_NAME[n].section == argv[3]]
            print(' '.join(names))
        except ValueError as e:
            print('bench.sh: --only: %s' % e, file=sys.stderr)
            return 2
        return 0
    if len(argv) == 2 and argv[1] == 'list':
        for s in SECTION_RUN_ORDER:
            print('section %s:' % s)
            for w in WORKLOADS:
                if w.section == s:
                    print('  %-26s %-4s %s' % (w.name, w.old, w.what))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == '__main__':
    sys.exit(main(sys.argv))
