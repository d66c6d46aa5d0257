"""The committed CPU benchmark (issue 22): its per-seed CSV has the promised columns and cells, the committed report's
table and verdicts are what the CSV recomputes to, its fingerprint is complete, and the bench-check record agrees with
the CSV. The plan runs end to end at a tiny size in nbs/20_bench.ipynb, and `make bench-check` retrains the recorded
cell (CI). No training here: this file reads committed files only."""
import json
import math
import subprocess
from pathlib import Path

import pytest

from dctkd.bench import BENCH_COLUMNS, MATCH_KEYS, bench_markdown, bench_summary, read_bench_csv
from dctkd.runs import read_checkpoint
from dctkd.sweep import load_plan

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / 'benchmarks' / 'results'
PLAN = ROOT / 'nbs' / 'experiments' / 'plans' / 'cpu-bench.yaml'
MIN_SEEDS = 5          # the plan's seeds per cell (a row that did not finish them all is left out of the report, and named)


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
        if r['role'] == 'student': cells.setdefault(r['row'], set()).add(r['seed'])
    assert 'baseline' in cells
    assert all(len(s) >= MIN_SEEDS for s in cells.values()), cells
    assert set(cells) <= {r['name'] for r in plan['runs']}
    base = cells['baseline']
    assert all(s <= base for s in cells.values())                               # every student seed has its baseline pair
    assert all(0 <= r['top1_last'] <= 100 and r['top1_last'] <= r['top1_best'] + 1e-9 for r in rows)


def test_report_is_the_csv(rows):
    "Every table line of the committed report, and its verdicts with intervals, recompute from the committed CSV."
    md = (RESULTS / 'cpu-bench.md').read_text()
    pick = lambda text: [l for l in text.splitlines() if l.startswith('| ') or l.startswith('- **Better') or
                         l.startswith('- **Worse') or l.startswith('- **No detectable') or l.startswith('**Teacher')]
    assert pick(bench_markdown(rows)) == pick(md)
    for k in ('**Date:**', '**Fingerprint:**', '**Command:**', '**Wall time:**', '**Budget:**', '**Load:**', '**Smallest effect this design detects:'):
        assert k in md, k
    for d in bench_summary(rows):                                               # an independent check of one number per cell
        vals = {r['seed']: r['top1_last'] for r in rows if (r['role'], r['row']) == (d['role'], d['row'])}
        assert math.isclose(d['last'][0], sum(vals.values()) / len(vals))
        if d['paired']:
            base = {r['seed']: r['top1_last'] for r in rows if r['row'] == 'baseline'}
            assert math.isclose(d['paired']['mean'], sum(vals[s] - base[s] for s in vals) / len(vals))
    for f in ('cpu-bench.png', 'cpu-bench-attention.png', 'cpu-bench-spectra.png'):
        assert (RESULTS / f).stat().st_size > 1000, f


def test_fingerprint_and_check_record(rows):
    fp = json.loads((RESULTS / 'cpu-bench-fingerprint.json').read_text())
    for k in (*MATCH_KEYS, 'commit', 'command', 'load', 'date'): assert fp.get(k) not in (None, ''), k
    rec = json.loads((RESULTS / 'cpu-bench-check.json').read_text())
    assert rec['fingerprint'] == fp
    last = float(rec['metrics'][-1]['val_top1'])
    mine = [r for r in rows if (r['row'], r['seed']) == (rec['row'], rec['seed'])]
    assert len(mine) == 1 and round(last, 4) == mine[0]['top1_last']          # the recorded cell is the CSV's
    cell = [r['top1_last'] for r in rows if r['row'] == rec['row']]
    assert math.isclose(rec['spread']['min'], min(cell), abs_tol=1e-4) and math.isclose(rec['spread']['max'], max(cell), abs_tol=1e-4)
    ck = read_checkpoint(RESULTS / 'cpu-bench-teacher.pt')                      # loads with weights_only=True
    assert ck['arch'] == [r for r in rows if r['role'] == 'teacher'][0]['arch'] and not ck['optimizer']
    assert (RESULTS / 'cpu-bench-teacher.pt').stat().st_size < 2 * 2**20          # small enough to commit


def test_make_targets():
    out = subprocess.run(['make', '-n', 'cpu-bench', 'bench-check'], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert 'from dctkd.bench import bench_cli' in out and '--jobs 2 --threads 1' in out
    assert 'from dctkd.bench import bench_check_cli' in out
    ci = (ROOT / '.ci' / 'run').read_text().strip().splitlines()
    assert ci[-1] == 'make test' and 'make bench-check' in ci                   # CI retrains the cell before the tests


def test_readme_and_guides_hold_the_committed_numbers():
    "The benchmark sections of the README's notebook and of the two guides are `bench_section` of the committed results."
    import sys
    sys.path.insert(0, str(ROOT / 'benchmarks'))
    from cpu_bench_docs import SECTIONS
    from dctkd.bench import bench_section
    for nb, heading in SECTIONS.items():
        cells = [''.join(c['source']) for c in json.loads((ROOT / nb).read_text())['cells'] if c['cell_type'] == 'markdown']
        assert bench_section(RESULTS, heading) in cells, f"{nb}: run python benchmarks/cpu_bench_docs.py after make cpu-bench"
    readme = (ROOT / 'README.md').read_text()
    assert bench_section(RESULTS, SECTIONS['nbs/index.ipynb']).splitlines()[-3] in readme    # the verdicts line reached README.md
