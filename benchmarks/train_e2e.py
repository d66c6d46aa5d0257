"""Benchmark: end-to-end epochs of `fit` with the fast paths (AMP bf16 + channels_last + the decode cache) against
fp32 + PIL decode every epoch, interleaved, on ADE20K-sized synthetic JPEGs (683×512, ADE20K's layout).

Each round trains the same student on the same images with the same seed once with each setup (in a rotated order);
each epoch is timed by `fit` itself (`time_s` in metrics.csv: training + validation). The first epoch of each run is a
warm-up and is left out; the ratio plain / fast is taken per round and reported as median [min–max] over the rounds,
with the machine's load. The decode cache lives in a scratch folder (built in the first round, reused after, removed
at the end). Goal on a GPU: fast / plain ≥ 5× per epoch; on a CPU, bf16 autocast is no speed-up and the ratio is
mostly the cache's.
Usage: `python benchmarks/train_e2e.py [--n 2000] [--epochs 3] [--size 224] [--batch 128] [--rounds 3] [--quick] [--out DIR]`.
"""
import csv
import statistics
import time
from pathlib import Path

import torch

from dctkd.data.toy import make_toy_scenes
from dctkd.config import make_config
from dctkd.train import fit

from common import Report, arguments, fmt, parse, ratios

QUICK = dict(n=40, epochs=2, size=32, batch=8, rounds=2, workers=0, image='80x60')


def epoch_times(run: Path) -> list:
    with open(run / 'metrics.csv') as f: return [float(r['time_s']) for r in csv.DictReader(f)]


def main():
    ap = arguments(__doc__, QUICK)
    ap.add_argument('--n', type=int, default=2000, help='images (80 %% train, 20 %% validation)')
    ap.add_argument('--image', default='683x512', help='JPEG size, WIDTHxHEIGHT')
    ap.add_argument('--epochs', type=int, default=3, help='epochs per run; the first is a warm-up')
    ap.add_argument('--size', type=int, default=224, help='crop side')
    ap.add_argument('--batch', type=int, default=128)
    ap.add_argument('--rounds', type=int, default=3, help='interleaved rounds (one run of each setup per round)')
    ap.add_argument('--arch', default='resnet18')
    ap.add_argument('--workers', type=int, default=-1, help='DataLoader processes (-1: automatic)')
    a = parse(ap)
    if a.epochs < 2: ap.error('--epochs must be at least 2 (the first epoch is a warm-up)')
    dev = 'cuda' if torch.cuda.is_available() else 'cpu'
    w, h = (int(v) for v in a.image.lower().split('x'))
    with Report('train_e2e', 'End to end: `fit` with the fast paths against the plain one (`benchmarks/train_e2e.py`)', a) as rep:
        tmp = rep.scratch
        data = make_toy_scenes(tmp / 'ade', layout='ade20k', n_classes=8, n_per_class=max(1, a.n // 8), size=(w, h),
                               progress=False)
        common = dict(dataset='ade20k', root=str(data), out=str(tmp / 'runs'), arch=a.arch, image_size=a.size,
                      batch_size=a.batch, epochs=a.epochs, lr=0.01, lr_step=a.epochs, workers=a.workers, progress=False)
        setups = {'plain': dict(amp='off', channels_last='off', cache=False),
                  'fast': dict(amp='bf16', channels_last='on', cache=True)}
        rep.line(f'\n{a.arch} on {a.n} JPEGs {w}×{h} in ADE20K\'s layout -> {a.size} px, batch {a.batch}, {a.epochs} epochs '
                 f'per run (the first left out), {dev}; the two setups interleaved, median [min–max] of {a.rounds} rounds')
        per_epoch, setup_s = {k: [] for k in setups}, {k: [] for k in setups}
        names = list(setups)
        for r in range(a.rounds):
            for name in names[r % 2:] + names[:r % 2]:
                kw = setups[name]
                t = time.time()
                run = fit(make_config(**common, **kw, name=f'{name}-{r}'))
                times = epoch_times(run)
                per_epoch[name].append(statistics.median(times[1:]))
                setup_s[name].append(time.time() - t - sum(times))
                print(f'round {r + 1}: {name:>5}: epochs {", ".join(f"{x:.1f}" for x in times)} s; set-up outside epochs '
                      f'{setup_s[name][-1]:.1f} s' + (' (includes the cache build)' if kw['cache'] and r == 0 else ''))
        for k in setups: rep.record(f'{k}_epoch_s', per_epoch[k]); rep.record(f'{k}_setup_s', setup_s[k])
        speed = ratios(per_epoch['plain'], per_epoch['fast'])
        rep.record('fast_over_plain', speed, '×')
        rep.table(['setup', 'seconds per epoch', 'images/s'],
                  [[f"{k} ({', '.join(f'{o}={v}' for o, v in kw.items())})", fmt(per_epoch[k], digits=2),
                    fmt([a.n / s for s in per_epoch[k]], digits=0)] for k, kw in setups.items()])
        rep.line(f'fast / plain per epoch: **{fmt(speed, "×", digits=2)}** (goal on a GPU: ≥ 5×)')


if __name__ == '__main__':
    main()
