"""Benchmark: images/s of the PIL pipeline vs the memory-mapped cache, training transforms, side by side in one run.

Generates ~2000 toy scenes of ADE20K's typical size (683×512 JPEGs) in the ADE20K layout, then times epochs of the
two loaders, alternated (same workers, batch, crop and seed; both yield normalised float32 batches), and reports the
median wall-clock rate of each and their ratio. Wall-clock rates on a shared machine move with its load, so the CPU
time the loader used (its process and its workers) is reported as well: images per CPU-second hardly depend on load.
The cache's one-time build is timed separately. Rates are median [min–max] over the rounds, with the machine's load.
Usage: `python benchmarks/data.py [--n 2000] [--workers 2] [--crop 224] [--rounds 3] [--quick] [--out DIR]`.
"""
import math
import resource
import statistics
import time
from pathlib import Path

import torch

from dctkd.data.cache import CachedDataset, make_loader
from dctkd.data.datasets import get_dataset
from dctkd.data.images import default_workers
from dctkd.data.toy import make_toy_scenes

from common import Report, arguments, fmt, parse, ratios

QUICK = dict(n=48, size='96x72', crop=32, batch=16, workers=0, rounds=2)


def cpu_seconds():
    "User + system CPU time of this process and its reaped children (the loader workers, once an epoch ends)."
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


def epoch(ds, a, seed):
    "One pass over a fresh loader of `ds`: (images, wall seconds, CPU seconds). Workers start and stop inside."
    c0 = cpu_seconds()
    dl = make_loader(ds, a.batch, num_workers=a.workers, seed=seed, device='cpu', persistent_workers=False)
    n, t = 0, time.perf_counter()
    for x, y, i in dl:
        assert x.dtype == torch.float32 and x.shape[-1] == a.crop
        n += len(x)
    wall = time.perf_counter() - t
    del dl
    return n, wall, cpu_seconds() - c0


def main():
    ap = arguments(__doc__, QUICK)
    ap.add_argument('--n', type=int, default=2000, help='number of images')
    ap.add_argument('--size', default='683x512', help='image size, WIDTHxHEIGHT')
    ap.add_argument('--crop', type=int, default=224, help='training crop (the short side is resized to 256/224 of it)')
    ap.add_argument('--batch', type=int, default=64)
    ap.add_argument('--workers', type=int, default=2)
    ap.add_argument('--rounds', type=int, default=3, help='epochs of each pipeline, alternated; medians are reported')
    a = parse(ap)
    w, h = (int(v) for v in a.size.lower().split('x'))
    with Report('data', 'Data pipeline: PIL against the decode cache (`benchmarks/data.py`)', a) as rep:
        root = rep.scratch                      # the toy data and its cache, removed at the end
        print(f'default_workers() = {default_workers()}')
        t = time.perf_counter()
        make_toy_scenes(root / 'ade', 'ade20k', n_classes=8, n_per_class=math.ceil(a.n / 8), size=(w, h), seed=0, progress=False,
                        val_fraction=0)
        print(f'generated the toy ADE20K in {time.perf_counter() - t:.1f} s')
        pil = get_dataset('ade20k', root / 'ade', 'train', size=a.crop)
        t = time.perf_counter()
        cached = CachedDataset(pil, cache_dir=root / 'cache', num_workers=a.workers, rebuild=True, progress=False)
        build = time.perf_counter() - t
        rep.line(f'\n{len(pil)} JPEGs {w}×{h} in ADE20K\'s layout, training transforms (resize {round(a.crop * 256 / 224)}, '
                 f'random crop {a.crop}, flip, normalise), batch {a.batch}, {a.workers} workers; epochs of the two '
                 f'pipelines alternated, median [min–max] of {a.rounds} rounds. Images per CPU-second (this process and its '
                 f'workers) hardly depend on the load.')
        names = {'pil': 'PIL decode + resize + crop every epoch', 'cached': "dctkd's cached pipeline (`cache=`)"}
        rate, eff = {k: [] for k in names}, {k: [] for k in names}
        for r in range(a.rounds):            # alternate, so a busy spell on a shared machine hits both pipelines
            for key, ds in (('pil', pil), ('cached', cached))[::1 if r % 2 == 0 else -1]:
                n, wall, cpu = epoch(ds, a, seed=r)
                rate[key].append(n / wall); eff[key].append(n / cpu)
                print(f'round {r + 1}: {names[key]:<41} {n / wall:7.0f} images/s   {n / cpu:7.0f} images per CPU-second')
        for k in names: rep.record(f'{k}_img_per_s', rate[k], 'img/s'); rep.record(f'{k}_img_per_cpu_s', eff[k], 'img/cpu-s')
        rep.record('cached_over_pil', ratios(rate['cached'], rate['pil']), '×')
        rep.record('cache_build_s', [build])
        rep.table(['pipeline', 'images/s', 'images per CPU-second'],
                  [[names[k], fmt(rate[k], digits=0), fmt(eff[k], digits=0)] for k in names])
        med = {k: statistics.median(v) for k, v in rate.items()}
        rep.line(f"Cached / PIL: **{fmt(ratios(rate['cached'], rate['pil']), '×', digits=1)}** (goal ≥ 5×); per CPU-second: "
                 f"{fmt(ratios(eff['cached'], eff['pil']), '×', digits=1)}. The one-time cache build took {build:.1f} s "
                 f"({len(pil) / build:.0f} images/s) and pays for itself after "
                 f"{build / max(1e-9, len(pil) / med['pil'] - len(pil) / med['cached']):.1f} epochs.")


if __name__ == '__main__':
    main()
