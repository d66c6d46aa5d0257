"""The committed CPU benchmark (issue 17): its per-seed CSV has the promised columns and cells, and the committed report's
table is what the CSV recomputes to (so anyone can check it). The plan itself runs end to end at a tiny size in
nbs/20_bench.ipynb. No training here: this file reads committed files only."""
import math
import subprocess
from pathlib import Path

import pytest

from dctkd.bench import BENCH_COLUMNS, bench_markdown, bench_summary, read_bench_csv
from dctkd.sweep import load_plan

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / 'benchmarks' / 'results'
PLAN = ROOT / 'nbs' / 'experiments' / 'plans' / 'cpu-bench.yaml'


@pytest.fixture(scope='module')
def rows():
    return read_bench_csv(RESULTS / 'cpu-bench.csv')


def test_csv_columns_and_cells(rows):
    assert (RESULTS / 'cpu-bench.csv').read_text().splitlines()[0] == ','.join(BENCH_COLUMNS)
    assert sum(r['role'] == 'teacher' for r in rows) == 1                      # the teacher is trained once
    assert {r['role'] for r in rows} == {'teacher', 'student'}
    plan = load_plan(PLAN)
    cells = {}
    for r in rows:
        if r['role'] == 'student': cells.setdefault((r['method'], r['transform']), set()).add(r['seed'])
    assert ('none', '') in cells                                                # the baseline
    assert all(len(s) >= 3 for s in cells.values()), cells                     # at least 3 seeds per cell
    assert {m for m, _ in cells} <= {r['config']['method'] for r in plan['runs']}
    assert all(0 <= r['top1_last'] <= 100 and r['top1_last'] <= r['top1_best'] + 1e-9 for r in rows)


def test_report_is_the_csv(rows):
    "Every table line of the committed report, and its verdicts, recompute from the committed CSV."
    md = (RESULTS / 'cpu-bench.md').read_text()
    table = lambda text: [l for l in text.splitlines() if l.startswith('| ') or l.startswith('- **Beat') or
                          l.startswith('- **Within') or l.startswith('- **Below') or l.startswith('**Teacher')]
    assert table(bench_markdown(rows)) == table(md)
    for k in ('**Date:**', '**Machine:**', '**Command:**', '**Wall time:**', '**Load:**'):
        assert k in md, k
    for d in bench_summary(rows):                                               # an independent check of one number per cell
        vals = [r['top1_last'] for r in rows if (r['role'], r['method'], r['transform']) == (d['role'], d['method'], d['transform'])]
        assert math.isclose(d['last'][0], sum(vals) / len(vals))
    for f in ('cpu-bench.png', 'cpu-bench-attention.png', 'cpu-bench-spectra.png'):
        assert (RESULTS / f).stat().st_size > 1000, f


def test_make_target_runs_the_benchmark():
    out = subprocess.run(['make', '-n', 'cpu-bench'], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert 'from dctkd.bench import bench_cli' in out
