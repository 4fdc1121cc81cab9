#!/usr/bin/python3
"""Tests of bench/report.py and bench/workloads.py (standard library only):
the number formats the reports have always had, which cells say FAIL, which
sections a selection prints, and what --only selects.

  python3 bench/test_report.py
"""
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report  # noqa: E402
import workloads  # noqa: E402

HEADER = 'workload\tserver\trepeat\tmetric\tvalue\n'


def results(lines, selected):
    """A results file with these records (tuples) and the facts a report needs."""
    facts = [('run', '-', 0, 'selected', selected), ('run', '-', 0, 'size', '64M'),
             ('run', '-', 0, 'repeat', '3'), ('run', '-', 0, 'total-s', '92.5001')]
    f = tempfile.NamedTemporaryFile('w', suffix='.tsv', delete=False, encoding='utf-8')
    with f:
        f.write(HEADER)
        for r in facts + lines:
            f.write('\t'.join(str(x) for x in r) + '\n')
    return f.name


def render(lines, selected):
    path = results(lines, selected)
    try:
        return report.report(report.Results(path))
    finally:
        os.unlink(path)


def row(out, start):
    found = [line for line in out if line.startswith(start)]
    assert len(found) == 1, (start, found)
    return found[0]


class Numbers(unittest.TestCase):
    def test_median_odd_is_the_value_as_measured(self):
        self.assertEqual(report.median(['3', '10', '2']), '3')
        self.assertEqual(report.median(['0.750', '1.000', '1.000']), '1.000')

    def test_median_even_is_the_mean_to_one_decimal(self):
        self.assertEqual(report.median(['10', '11']), '10.5')
        self.assertEqual(report.median(['1.000', '1.000']), '1.0')
        self.assertEqual(report.median([]), '')

    def test_spread_sorts_numerically(self):
        self.assertEqual(report.spread(['9', '10', '100']), '9-100')
        self.assertEqual(report.spread(['5']), '')

    def test_ratio(self):
        self.assertEqual(report.ratio('3', '2'), '1.50')
        self.assertEqual(report.ratio('3', '0'), '-')
        self.assertEqual(report.ratio('', '2'), '-')

    def test_target_judges_the_printed_ratio(self):
        # 0.8996 is printed 0.90, and 0.90 meets ">= 0.9".
        r = report.ratio('899.6', '1000')
        self.assertEqual(report.target('x', r, '>=', '0.9'), '| x | 0.90 | >= 0.9 | met |')
        self.assertEqual(report.target('x', '0.71', '<=', '0.7'), '| x | 0.71 | <= 0.7 | missed |')
        self.assertEqual(report.target('x', '-', '>=', '2'), '| x | - | >= 2 | not measured |')

    def test_mib(self):
        self.assertEqual(report.mib('8780'), '8.6')
        self.assertEqual(report.mib(''), '-')


class Tables(unittest.TestCase):
    def test_image_row_medians_fail_and_ratios(self):
        out = render([('rand-read', 'ours', 1, 'iops', '100'), ('rand-read', 'ours', 2, 'iops', '300'),
                      ('rand-read', 'ours', 3, 'iops', '200'), ('rand-read', 'qemu', 1, 'error', 'client failed: x'),
                      ('rand-read', 'raw', 1, 'iops', '400')], 'rand-read')
        self.assertEqual(row(out, '| rand-read |'),
                         '| rand-read | 4k random read, QD32 (allocated image) | IOPS | 200 [100-300] | FAIL | 400 '
                         '| - | 0.50 |')
        self.assertIn('- rand-read on qemu: client failed: x', out)
        self.assertTrue(out[-1].endswith(' Total time 93 s.'), out[-1])

    def test_rand_read_rss_is_the_last_repeat(self):
        out = render([('rand-read', 'ours', 1, 'rss-kib', '1024'), ('rand-read', 'ours', 2, 'rss-kib', '2048'),
                      ('rand-read', 'qemu', 1, 'rss-kib', '4096')], 'rand-read')
        self.assertEqual(row(out, '| workload rand-read'),
                         '| workload rand-read (4k random read, 64M image) | 2.0 | 4.0 | - | 0.50 |')

    def test_only_selected_sections_and_targets(self):
        out = render([], 'nbd-rand-read')
        self.assertFalse([line for line in out if line.startswith('| seq-')])
        self.assertFalse([line for line in out if line.startswith('| nbd-seq-read')])
        self.assertIn('| nbd-rand-read ours/qemu-nbd, 4k random read over an NBD base | - | >= 1.3 | not measured |',
                      out)
        self.assertNotIn('Golden-image targets:', out)
        self.assertNotIn('Memory: ', ' '.join(out))

    def test_nbd_cells(self):
        out = render([('nbd-seq-read', 'ours', 1, 'mibs', '900.5'), ('nbd-seq-read', 'ours', 1, 'cpu-s-per-gib', '0.50'),
                      ('nbd-seq-read', 'ours', 1, 'rss-kib', '10240'), ('nbd-seq-read', 'qemu', 1, 'error', 'boom')],
                     'nbd-seq-read')
        self.assertEqual(row(out, '| nbd-seq-read |'),
                         '| nbd-seq-read | sequential read (nbdcopy to null:) | MiB/s | 900.5 | FAIL | - | 0.50 | - '
                         '| - | 10.0 | - |')

    def test_bad_file_is_an_error(self):
        f = tempfile.NamedTemporaryFile('w', suffix='.tsv', delete=False)
        with f:
            f.write(HEADER + 'a\tb\n')
        try:
            with self.assertRaises(ValueError):
                report.Results(f.name)
        finally:
            os.unlink(f.name)


class Select(unittest.TestCase):
    def test_empty_is_everything_in_run_order(self):
        self.assertEqual(workloads.select(''), workloads.RUN_ORDER)
        self.assertEqual(workloads.RUN_ORDER[:3], ['seq-alloc-write', 'seq-read', 'seq-overwrite'])

    def test_names_sections_and_old_numbers(self):
        self.assertEqual(workloads.select('9a,nbd,golden-stream'),
                         ['flush-write-qd1', 'nbd-seq-read', 'nbd-rand-read', 'golden-stream'])
        self.assertEqual(workloads.select('5,1'), ['seq-alloc-write', 'rand-read'])
        self.assertEqual(workloads.select('mem'), ['mem-sparse-1t', 'mem-l2-miss-1t'])

    def test_unknown_is_an_error(self):
        with self.assertRaises(ValueError):
            workloads.select('seq-alloc-write,8c')


if __name__ == '__main__':
    unittest.main()
