"""What a change of kernels does to the CPU benchmark's accuracies: two `cpu-bench.csv` files (before and after, e.g.
contiguous vs channels_last), paired by row and seed (same seed: same initial student, same batches), per row the mean
difference of the last-epoch top-1 after − before with its 95 % t interval, and the same for each row's Δ vs baseline.
A row whose interval contains 0 shows no detectable shift. `--before` and `--after` take a file or `GIT_REV:PATH`.
Usage: `python benchmarks/accuracy_shift.py --before 4852c94:benchmarks/results/cpu-bench.csv
        --after benchmarks/results/cpu-bench.csv [--title ...] [--out benchmarks/results]`.
"""
import argparse
import json
import subprocess
import tempfile
from pathlib import Path

from dctkd.bench import paired_delta, read_bench_csv


def read(spec: str) -> list:
    "A benchmark CSV from a file, or from git (`REV:PATH`) when no such file exists."
    if Path(spec).is_file(): return read_bench_csv(spec)
    rev, _, path = spec.partition(':')
    text = subprocess.run(['git', 'show', f'{rev}:{path}'], capture_output=True, text=True, check=True).stdout
    with tempfile.TemporaryDirectory() as d:                 # read_bench_csv reads (and checks) a file
        (Path(d) / 'cpu-bench.csv').write_text(text)
        return read_bench_csv(Path(d) / 'cpu-bench.csv')


def by_row(rows) -> dict:
    out = {}
    for r in rows:
        if r['role'] == 'student': out.setdefault(r['row'], {'title': r['title'], 'acc': {}})['acc'][r['seed']] = r['top1_last']
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--before', required=True); ap.add_argument('--after', required=True)
    ap.add_argument('--title', default='contiguous → channels_last')
    ap.add_argument('--out', default=None, help='write accuracy_shift.md and .json here')
    a = ap.parse_args()
    before, after = by_row(read(a.before)), by_row(read(a.after))
    rows = [k for k in after if k in before]
    res, lines = {}, []
    for k in rows:
        shift = paired_delta(after[k]['acc'], before[k]['acc'])
        res[k] = {'title': after[k]['title'], 'shift': shift}
        if k != 'baseline':
            db = paired_delta(before[k]['acc'], before['baseline']['acc']); da = paired_delta(after[k]['acc'], after['baseline']['acc'])
            res[k].update(delta_before=db['mean'], delta_after=da['mean'])
    n_in = sum(r['shift']['lo'] <= 0 <= r['shift']['hi'] for r in res.values())
    md = [f"## Accuracy shift, {a.title} (`benchmarks/accuracy_shift.py`)", '',
          f"Before: `{a.before}`; after: `{a.after}`. Per row, the last-epoch top-1 after − before, paired by seed "
          f"(seeds {sorted(set.intersection(*[set(r['shift']['seeds']) for r in res.values()]))}), mean [95 % t interval]; "
          f"and each row's Δ vs baseline before and after. **{n_in} of {len(res)} rows show no detectable shift** "
          "(interval contains 0).", '',
          '| row | after − before [95 % CI] | Δ vs baseline before | after |', '|---|---:|---:|---:|']
    for k, r in res.items():
        s = r['shift']
        md.append(f"| {r['title']} | {s['mean']:+.2f} [{s['lo']:+.2f}, {s['hi']:+.2f}] | "
                  + (f"{r['delta_before']:+.2f} | {r['delta_after']:+.2f} |" if 'delta_before' in r else '| |'))
    text = '\n'.join(md) + '\n'
    print(text)
    if a.out:
        Path(a.out, 'accuracy_shift.md').write_text(text)
        Path(a.out, 'accuracy_shift.json').write_text(json.dumps({'before': a.before, 'after': a.after, 'rows': res}, indent=1))


if __name__ == '__main__':
    main()
