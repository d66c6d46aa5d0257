"""Benchmark: images/s of one training step for a student alone, +KD, +AT and +DCT, side by side in one run.

Pairs R50 -> R18 and R50 -> MobileNetV2 at a CPU-sized input; prints the DCT step's overhead over the KD step
(goal <= 1%). Usage: `python benchmarks/train.py [--size 64] [--batch 32] [--repeats 5] [--device cuda]`.
"""
import argparse
import statistics
import time

import torch

from dctkd.distillers import build
from dctkd.models import FrozenTeacher, build_model


def sync(dev):
    if dev.type == 'cuda': torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--size', type=int, default=64)
    ap.add_argument('--batch', type=int, default=32)
    ap.add_argument('--repeats', type=int, default=5)
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    a = ap.parse_args()
    dev = torch.device(a.device)
    print(f'torch {torch.__version__}, {dev}, threads {torch.get_num_threads()}, batch {a.batch} at {a.size} px, '
          f'median of {a.repeats} steps')
    torch.manual_seed(0)
    x = torch.randn(a.batch, 3, a.size, a.size, device=dev)
    y = torch.randint(0, 67, (a.batch,), device=dev)
    teacher = FrozenTeacher(build_model('resnet50', 67).to(dev))
    for s_arch in ('resnet18', 'mobilenet_v2'):
        student = build_model(s_arch, 67).to(dev)
        steps = {}
        for method in ('none', 'kd', 'at', 'dct'):
            d = build(method, student, teacher if method != 'none' else None, a.size).to(dev)
            params = [p for p in list(student.parameters()) + list(d.parameters()) if p.requires_grad]
            opt = torch.optim.SGD(params, lr=1e-4, momentum=0.9)

            def step(d=d, opt=opt, method=method):
                t_out = teacher(x) if method != 'none' else None
                loss = sum(d(student(x), t_out, y).values())
                opt.zero_grad(set_to_none=True); loss.backward(); opt.step()

            step(); sync(dev)
            steps[method] = step
        times = {m: [] for m in steps}
        for _ in range(a.repeats):             # interleaved, so load changes hit every method alike
            for m, step in steps.items():
                t = time.perf_counter(); step(); sync(dev); times[m].append(time.perf_counter() - t)
        times = {m: statistics.median(v) for m, v in times.items()}
        row = '  '.join(f'{m}: {a.batch / t:7.1f} img/s' for m, t in times.items())
        print(f'R50 -> {s_arch:<13} {row}')
        print(f'  DCT step vs KD step: {100 * (times["dct"] / times["kd"] - 1):+.2f}% (goal <= 1%); '
              f'AT vs KD: {100 * (times["at"] / times["kd"] - 1):+.2f}%')


if __name__ == '__main__':
    main()
