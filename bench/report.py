#!/usr/bin/python3
"""Make the benchmark's report (markdown) from the results file bench.sh
writes: one tab-separated line per measurement (workload, server, repeat,
metric, value; workload "run" for facts about the whole run).

  python3 bench/report.py RESULTS.tsv

Each table cell is the median of the repeats with their spread [min-max];
ratios are of medians; the targets compare ratios with what the project aims
at (reported, never gated on).  The numbers are formatted as bench.sh's awk
did before issue 21, so that reports stay comparable: a median of an odd
count is the middle value as measured, of an even count the mean of the two
middle ones to one decimal; ratios to two decimals; RSS in MiB to one.
"""
import sys

import workloads

SERVERS = {'ours': 'ours', 'qemu': 'qemu-nbd', 'raw': 'raw (file)'}
METRIC_OF_UNIT = {'MiB/s': 'mibs', 'IOPS': 'iops'}


class Results:
    """The records of one run: facts, values and errors by key."""

    def __init__(self, path):
        self.facts = {}
        self.values = {}   # (workload, server, metric) -> [value, ...] in file order
        self.errors = {}   # (workload, server) -> the last error message
        with open(path, encoding='utf-8') as f:
            header = f.readline().rstrip('\n').split('\t')
            if header != ['workload', 'server', 'repeat', 'metric', 'value']:
                raise ValueError('%s: not a bench.sh results file (header %r)' % (path, header))
            for n, line in enumerate(f, 2):
                fields = line.rstrip('\n').split('\t')
                if len(fields) != 5:
                    raise ValueError('%s:%d: %d fields, 5 expected' % (path, n, len(fields)))
                wl, server, _repeat, metric, value = fields
                if wl == 'run':
                    self.facts[metric] = value
                elif metric == 'error':
                    self.errors[(wl, server)] = value
                else:
                    self.values.setdefault((wl, server, metric), []).append(value)
        self.selected = self.facts.get('selected', '').split()

    def fact(self, key):
        return self.facts.get(key, '')

    def want(self, *names):
        return any(n in self.selected for n in names)

    def all(self, wl, server, metric):
        return [v for v in self.values.get((wl, server, metric), []) if v != '']

    def last(self, wl, server, metric):
        """The last repeat's value ('' if none), as the table of peak RSS
        for rand-read has always shown it."""
        v = self.values.get((wl, server, metric), [])
        return v[-1] if v else ''

    def median(self, wl, server, metric):
        return median(self.all(wl, server, metric))

    def cell(self, wl, server, metric, fail=True):
        """'median [min-max]'; FAIL (if fail) when no value and an error; '-'."""
        vals = self.all(wl, server, metric)
        if vals:
            sp = spread(vals)
            return median(vals) + (' [%s]' % sp if sp else '')
        if fail and (wl, server) in self.errors:
            return 'FAIL'
        return '-'


def median(vals):
    """The middle value as written, or the mean of the two middle ones to
    one decimal; '' for none."""
    if not vals:
        return ''
    v = sorted(vals, key=float)
    n = len(v)
    if n % 2:
        return v[n // 2]
    return '%.1f' % ((float(v[n // 2 - 1]) + float(v[n // 2])) / 2)


def spread(vals):
    """'min-max' as written, '' for fewer than two values."""
    if len(vals) < 2:
        return ''
    v = sorted(vals, key=float)
    return '%s-%s' % (v[0], v[-1])


def ratio(a, b):
    if a == '' or b == '' or float(b) == 0:
        return '-'
    return '%.2f' % (float(a) / float(b))


def mib(kib):
    return '%.1f' % (float(kib) / 1024) if kib != '' else '-'


def target(label, r, op, limit):
    """A line of a targets table: ratio (as printed) r against limit."""
    if r in ('', '-'):
        verdict, shown = 'not measured', '-'
    else:
        met = float(r) >= float(limit) if op == '>=' else float(r) <= float(limit)
        verdict, shown = ('met' if met else 'missed'), r
    return '| %s | %s | %s %s | %s |' % (label, shown, op, limit, verdict)


def header(res):
    f = res.fact
    return [
        '## nbdkit-qed benchmark',
        '',
        '- date: %s; host: %s, %s CPUs, load avg %s' % (f('date'), f('host'), f('cpus'), f('loadavg')),
        '- image %s (%s bytes), 64 KiB clusters, table_size 4 (images made with qemu-img create/convert); '
        'fio 4k, iodepth 32 unless the workload says otherwise, 1 job, %ss; '
        'medians of %s run(s) [min-max], ours, qemu-nbd and raw interleaved; nbdcopy 4 connections'
        % (f('size'), f('size-bytes'), f('runtime-s'), f('repeat')),
        '- ours: `nbdkit -f -U SOCK %s file=IMG cache-size=%s` (default 16 threads)'
        % (f('plugin'), f('cache-size')),
        '- qemu: `qemu-nbd -t -k SOCK -f qed %s IMG`; raw: `nbdkit -f -U SOCK file file=IMG`' % f('qemu-opts'),
        '- %s; %s; %s; %s' % (f('nbdkit-version'), f('qemu-nbd-version'), f('nbdcopy-version'),
                              f('fio-version')),
        '',
    ]


def image_table(res):
    names = [n for n in workloads.SECTIONS['image'] if res.want(n)]
    if not names:
        return []
    out = ['| workload | what | unit | ours | qemu-nbd | raw (file) | ours/qemu | ours/raw |',
           '|---|---|---|--:|--:|--:|--:|--:|']
    for n in names:
        w = workloads.BY_NAME[n]
        m = METRIC_OF_UNIT[w.unit]
        med = {k: res.median(n, k, m) for k in SERVERS}
        out.append('| %s | %s | %s | %s | %s | %s | %s | %s |' % (
            n, w.what, w.unit, res.cell(n, 'ours', m), res.cell(n, 'qemu', m), res.cell(n, 'raw', m),
            ratio(med['ours'], med['qemu']), ratio(med['ours'], med['raw'])))
    return out


def nbd_table(res):
    names = [n for n in workloads.SECTIONS['nbd'] if res.want(n)]
    if not names:
        return []
    f = res.fact
    out = ['',
           'Backing file on an NBD server: an empty overlay (every read goes to the base) over the %s '
           'raw base served by `nbdkit -r file` on a Unix socket; ours with allow-backing=network '
           'backing-connections=%s, qemu-nbd opening the same overlay (QEMU\'s NBD client, one connection).'
           % (f('size'), f('backing-connections')),
           '',
           'Medians of %s run(s) each [min-max], ours and qemu-nbd interleaved; CPU is the overlay server\'s '
           'user + system time over the client\'s run (/proc/PID/stat) per GiB read; peak RSS is VmHWM (MiB).'
           % f('repeat'),
           '',
           '| workload | what | unit | ours | qemu-nbd | ours/qemu | CPU s/GiB ours | CPU s/GiB qemu-nbd '
           '| ours/qemu | peak RSS ours | peak RSS qemu-nbd |',
           '|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|']
    for n in names:
        w = workloads.BY_NAME[n]
        m = METRIC_OF_UNIT[w.unit]
        out.append('| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |' % (
            n, w.what, w.unit, res.cell(n, 'ours', m), res.cell(n, 'qemu', m),
            ratio(res.median(n, 'ours', m), res.median(n, 'qemu', m)),
            res.cell(n, 'ours', 'cpu-s-per-gib', fail=False), res.cell(n, 'qemu', 'cpu-s-per-gib', fail=False),
            ratio(res.median(n, 'ours', 'cpu-s-per-gib'), res.median(n, 'qemu', 'cpu-s-per-gib')),
            mib(res.median(n, 'ours', 'rss-kib')), mib(res.median(n, 'qemu', 'rss-kib'))))
    return out


def memory_table(res):
    if not res.want('rand-read', 'mem-sparse-1t', 'mem-l2-miss-1t'):
        return []
    f = res.fact
    out = ['',
           'Memory: peak RSS (VmHWM, MiB) of each server, read just before stopping it (plugin cache-size=%s, '
           'and %s for the image whose L2 tables do not fit; medians of %s run(s) there).'
           % (f('cache-size'), f('miss-cache-size'), f('repeat')),
           '',
           '| measurement | ours | qemu-nbd | raw (file) | ours/qemu |',
           '|---|--:|--:|--:|--:|']
    if res.want('rand-read'):
        rss = {k: res.last('rand-read', k, 'rss-kib') for k in SERVERS}
        out.append('| workload rand-read (4k random read, %s image) | %s | %s | %s | %s |' % (
            f('size'), mib(rss['ours']), mib(rss['qemu']), mib(rss['raw']), ratio(rss['ours'], rss['qemu'])))
    rows = [('mem-sparse-1t', '1 TiB sparse image, %ss 4k random read over all of it' % f('mem-runtime-s')),
            ('mem-l2-miss-1t', '1 TiB image, all 512 L2 tables allocated (128 MiB), ours cache-size=%s, '
             '%ss 4k random read' % (f('miss-cache-size'), f('mem-runtime-s')))]
    for n, label in rows:
        if not res.want(n):
            continue
        for metric, text, fmt in (('rss-kib', label, mib), ('iops', '(IOPS in that run)', lambda v: v or '-')):
            med = {k: res.median(n, k, metric) for k in SERVERS}
            out.append('| %s | %s | %s | %s | %s |' % (
                text, fmt(med['ours']), fmt(med['qemu']), fmt(med['raw']), ratio(med['ours'], med['qemu'])))
    return out


def scale_table(res):
    if not res.want('scale-64t'):
        return []
    out = ['', 'Scale: 64 TiB sparse image (milliseconds; lower is better).', '',
           '| measurement | ours | qemu-nbd | raw (file) | ours/qemu |',
           '|---|--:|--:|--:|--:|']
    for metric, label in (('open-ms', 'server start until socket is listening (ms)'),
                          ('map-ms', 'nbdinfo --map of the whole image (ms)')):
        v = {k: res.last('scale-64t', k, metric) for k in SERVERS}
        out.append('| %s | %s | %s | %s | %s |' % (label, v['ours'] or '-', v['qemu'] or '-', v['raw'] or '-',
                                                   ratio(v['ours'], v['qemu'])))
    note = res.last('scale-64t', 'raw', 'note')
    if note:
        out += ['', 'raw: %s' % note]
    return out


def golden_tables(res):
    if not res.want(*workloads.SECTIONS['golden']):
        return []
    f = res.fact
    med = res.median

    def row(label, wl, a, b, metric, rss=False):
        if rss:
            return '| %s | %s | %s | %s |' % (label, mib(med(wl, a, metric)), mib(med(wl, b, metric)),
                                              ratio(med(wl, a, metric), med(wl, b, metric)))
        return '| %s | %s | %s | %s |' % (label, res.cell(wl, a, metric, fail=False),
                                          res.cell(wl, b, metric, fail=False),
                                          ratio(med(wl, a, metric), med(wl, b, metric)))

    out = ['',
           'Golden images: a %s raw base with a quarter of it holes, served by `nbdkit -r file` on a '
           'Unix socket (for copy-on-read with `--filter=log`: bytes fetched counted in its log); empty QED '
           'overlays over it. Medians of %s run(s) [min-max].' % (f('size'), f('repeat')),
           '']
    if res.want('golden-cor', 'golden-stream'):
        out += ['| measurement | ours | qemu-nbd / nbdcopy | ours/other |', '|---|--:|--:|--:|']
    if res.want('golden-cor'):
        region = int(f('golden-region-bytes') or 0) >> 20
        out += [row('copy-on-read: bytes fetched from the base / region, region (%d MiB) read 3 times' % region,
                    'golden-cor', 'ours', 'qemu', 'fetched-per-region'),
                row('copy-on-read: MiB/s over the 3 reads', 'golden-cor', 'ours', 'qemu', 'mibs'),
                row('copy-on-read: peak RSS (MiB)', 'golden-cor', 'ours', 'qemu', 'rss-kib', rss=True)]
    if res.want('golden-stream'):
        out += [row('stream to standalone (ours) vs nbdcopy to a local file: seconds',
                    'golden-stream', 'ours', 'nbdcopy', 'seconds'),
                row('stream vs nbdcopy --flush (durable, as the stream is): seconds',
                    'golden-stream', 'ours', 'nbdcopy-flush', 'seconds'),
                row('stream vs nbdcopy: peak RSS (MiB)', 'golden-stream', 'ours', 'nbdcopy', 'rss-kib', rss=True)]
    if res.want('golden-read-during-stream'):
        wl = 'golden-read-during-stream'
        out += ['',
                'Client 4k random read IOPS, QD32, %ss, on an empty overlay, during a stream (stream-rate=%s, '
                'so that it lasts about the run) and without one:' % (f('runtime-s'), f('golden-stream-rate')),
                '',
                '| measurement | during the stream | without | during/without |',
                '|---|--:|--:|--:|',
                row('IOPS', wl, 'ours+stream', 'ours', 'iops'),
                row('peak RSS (MiB)', wl, 'ours+stream', 'ours', 'rss-kib', rss=True)]
    if res.want('golden-cor', 'golden-stream'):
        out += ['', 'Golden-image targets:', '', '| measurement | value | target | |', '|---|--:|--:|---|']
    if res.want('golden-cor'):
        out.append(target('copy-on-read, ours: bytes fetched / region read 3 times',
                          med('golden-cor', 'ours', 'fetched-per-region'), '<=', '1.1'))
    if res.want('golden-stream'):
        out.append(target('stream time, ours / nbdcopy of the same base',
                          ratio(med('golden-stream', 'ours', 'seconds'), med('golden-stream', 'nbdcopy', 'seconds')),
                          '<=', '1.2'))
    return out


# The ratios the project aims at: (label, workload, metric, server a, server b, op, limit).
TARGETS = [
    ('flush-write-qd1 ours/raw, flush after every write, QD1', 'flush-write-qd1', 'iops', 'raw', '>=', '0.9'),
    ('flush-write-qd1 ours/qemu-nbd', 'flush-write-qd1', 'iops', 'qemu', '>=', '2'),
    ('flush-write-qd32 ours/raw, flush every 32 writes, QD32', 'flush-write-qd32', 'iops', 'raw', '>=', '0.9'),
    ('flush-write-qd32 ours/qemu-nbd', 'flush-write-qd32', 'iops', 'qemu', '>=', '2'),
    ('cow-flush-write-qd1 ours/qemu-nbd over raw backing, QD1', 'cow-flush-write-qd1', 'iops', 'qemu', '>=', '2'),
    ('cow-flush-write-qd32 ours/qemu-nbd over raw backing, QD32', 'cow-flush-write-qd32', 'iops', 'qemu',
     '>=', '2'),
    ('seq-alloc-write ours/raw, nbdcopy into a fresh image', 'seq-alloc-write', 'mibs', 'raw', '>=', '0.9'),
    ('seq-read ours/raw, nbdcopy out of the image', 'seq-read', 'mibs', 'raw', '>=', '0.9'),
    ('nbd-seq-read ours/qemu-nbd, sequential read over an NBD base', 'nbd-seq-read', 'mibs', 'qemu', '>=', '1.2'),
    ('nbd-rand-read ours/qemu-nbd, 4k random read over an NBD base', 'nbd-rand-read', 'iops', 'qemu', '>=', '1.3'),
    ('nbd-rand-read ours/qemu-nbd, overlay server CPU s/GiB of those reads', 'nbd-rand-read', 'cpu-s-per-gib',
     'qemu', '<=', '0.7'),
    ('ours/qemu-nbd IOPS, 1 TiB, L2 tables 8x the cache', 'mem-l2-miss-1t', 'iops', 'qemu', '>=', '2'),
]


def targets(res):
    rows = [t for t in TARGETS if res.want(t[1])]
    if not rows:
        return []
    out = ['', 'Targets (ratios of medians; the benchmark reports them, it does not gate on them):', '',
           '| ratio | value | target | |', '|---|--:|--:|---|']
    for label, wl, metric, other, op, limit in rows:
        out.append(target(label, ratio(res.median(wl, 'ours', metric), res.median(wl, other, metric)), op, limit))
    return out


def failures(res):
    if not res.errors:
        return []
    lines = sorted('- %s on %s: %s' % (wl, server, msg) for (wl, server), msg in res.errors.items())
    return ['', 'Failures:', ''] + lines


def report(res):
    total = res.fact('total-s')
    return (header(res) + image_table(res) + nbd_table(res) + memory_table(res) + scale_table(res)
            + golden_tables(res) + targets(res) + failures(res)
            + ['', 'Ratios: higher is better for MiB/s and IOPS; for RSS and ms, lower is better. Total time %s s.'
               % ('%.0f' % float(total) if total else '?')])


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        res = Results(argv[1])
    except (OSError, ValueError) as e:
        print('report.py: %s' % e, file=sys.stderr)
        return 1
    print('\n'.join(report(res)))
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
