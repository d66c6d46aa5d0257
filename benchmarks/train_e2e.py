"""Benchmark: end-to-end epochs of `fit` with the fast paths (AMP bf16 + channels_last + the decode cache) against
fp32 + PIL decode every epoch, side by side in one run, on ADE20K-sized synthetic JPEGs (683×512, ADE20K's layout).

Both runs train the same student on the same images with the same seed; each epoch is timed by `fit` itself
(`time_s` in metrics.csv: training + validation). The first epoch of each run is a warm-up and is left out; the
cache's one-time build is timed separately. Goal on a GPU: fast / plain ≥ 5× per epoch. On a CPU the ratio means
little: bf16 autocast there is slower than fp32 (0.78× measured at 64 px on 2 cores).
Usage: `python benchmarks/train_e2e.py [--n 2000] [--epochs 3] [--size 224] [--batch 128] [--arch resnet18]`.
"""
import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path

import torch

from dctkd.data.toy import make_toy_scenes
from dctkd.config import make_config
from dctkd.train import fit


def epoch_times(run: Path) -> list:
    with open(run / 'metrics.csv') as f: return [float(r['time_s']) for r in csv.DictReader(f)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--n', type=int, default=2000, help='images (80 %% train, 20 %% validation)')
    ap.add_argument('--epochs', type=int, default=3, help='epochs per run; the first is a warm-up')
    ap.add_argument('--size', type=int, default=224, help='crop side')
    ap.add_argument('--batch', type=int, default=128)
    ap.add_argument('--arch', default='resnet18')
    ap.add_argument('--workers', type=int, default=-1, help='DataLoader processes (-1: automatic)')
    a = ap.parse_args()
    if a.epochs < 2: ap.error('--epochs must be at least 2 (the first epoch is a warm-up)')
    dev = 'cuda' if torch.cuda.is_available() else 'cpu'
    print(f'torch {torch.__version__}, {dev}, {a.arch}, {a.n} images at 683×512 -> {a.size} px, batch {a.batch}, '
          f'{a.epochs} epochs per run (first left out)')
    with tempfile.TemporaryDirectory() as tmp:
        data = make_toy_scenes(Path(tmp) / 'ade', layout='ade20k', n_classes=8, n_per_class=a.n // 8, size=(683, 512))
        common = dict(dataset='ade20k', root=str(data), out=str(Path(tmp) / 'runs'), arch=a.arch, image_size=a.size,
                      batch_size=a.batch, epochs=a.epochs, lr=0.01, lr_step=a.epochs, workers=a.workers, progress=False)
        setups = {'plain': dict(amp='off', channels_last='off', cache=False),
                  'fast': dict(amp='bf16', channels_last='on', cache=True)}
        per_epoch = {}
        for name, kw in setups.items():
            t = time.time()
            run = fit(make_config(**common, **kw, name=name))
            times = epoch_times(run)
            per_epoch[name] = statistics.median(times[1:])
            extra = time.time() - t - sum(times)
            print(f'{name:>5} ({", ".join(f"{k}={v}" for k, v in kw.items())}): epochs {", ".join(f"{x:.1f}" for x in times)} s; '
                  f'{a.n / per_epoch[name]:.0f} images/s per epoch after warm-up; set-up outside epochs {extra:.1f} s'
                  + (' (includes the cache build)' if kw['cache'] else ''))
        print(f'fast / plain per epoch: {per_epoch["plain"] / per_epoch["fast"]:.2f}× (goal on a GPU: ≥ 5×)')


if __name__ == '__main__':
    main()
