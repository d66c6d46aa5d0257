"""Benchmark: dctkd's matrix DCT vs scipy and vs an FFT-based DCT, and the DCT loss vs a ResNet-18 training step.

Everything is measured side by side in one run and reported as ratios (these machines are noisy; no absolute
target is asserted anywhere). Usage: `python benchmarks/dct.py [--batch 128] [--repeats 5] [--device cuda]`.
"""
import argparse
import math
import statistics
import time

import numpy as np
import scipy.fft
import torch

import dctkd.compat  # noqa: F401  (before torchvision)
import torchvision
from dctkd.dct import dct2
from dctkd.losses import dct_loss


def sync(device):
    if device.type == 'cuda': torch.cuda.synchronize()


def bench(fn, device, repeats, warmup=2):
    "Median wall time of `fn()` in seconds."
    for _ in range(warmup): fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter(); fn(); sync(device); times.append(time.perf_counter() - t)
    return statistics.median(times)


def dct_via_fft(x):
    "Orthonormal 2-D DCT-II through the FFT (Makhoul 1980), one dim at a time: the usual FFT-based alternative."
    for dim in (-1, -2):
        x = x.movedim(dim, -1)
        n = x.shape[-1]
        v = torch.cat([x[..., ::2], x[..., 1::2].flip(-1)], -1)
        V = torch.fft.fft(v)
        k = torch.arange(n, device=x.device, dtype=x.dtype)
        X = (V * torch.exp(-1j * math.pi * k / (2 * n))).real * math.sqrt(2 / n)
        X[..., 0] /= math.sqrt(2)
        x = X.movedim(-1, dim)
    return x


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--batch', type=int, default=128)
    ap.add_argument('--repeats', type=int, default=5)
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--step-batch', type=int, default=None, help='batch of the ResNet-18 step (default: --batch)')
    a = ap.parse_args()
    dev = torch.device(a.device)
    print(f'torch {torch.__version__}, device {dev}, threads {torch.get_num_threads()}, batch {a.batch}')

    print(f'\n1. 2-D DCT of a batch of maps (float32), median of {a.repeats * 4} runs')
    print(f'{"size":>6} {"dct2 (ms)":>10} {"scipy (ms)":>11} {"fft-DCT (ms)":>13} {"scipy/dct2":>11} {"fft/dct2":>9}')
    for s in (7, 14, 28, 56):
        x = torch.rand(a.batch, s, s, device=dev)
        xn = x.cpu().numpy()
        ref = scipy.fft.dctn(xn.astype(np.float64), type=2, norm='ortho', axes=(-2, -1))
        assert np.abs(dct2(x).cpu().numpy() - ref).max() < 1e-4 and np.abs(dct_via_fft(x).cpu().numpy() - ref).max() < 1e-4
        t_ours = bench(lambda: dct2(x), dev, a.repeats * 4)
        t_scipy = bench(lambda: scipy.fft.dctn(xn, type=2, norm='ortho', axes=(-2, -1)), torch.device('cpu'), a.repeats * 4)
        t_fft = bench(lambda: dct_via_fft(x), dev, a.repeats * 4)
        print(f'{s:>4}²  {t_ours*1e3:>10.3f} {t_scipy*1e3:>11.3f} {t_fft*1e3:>13.3f} {t_scipy/t_ours:>10.1f}× {t_fft/t_ours:>8.1f}×')

    B = a.step_batch or a.batch
    print(f'\n2. dct_loss (4 stages, forward+backward) vs one ResNet-18 training step, batch {B} at 224 px')
    torch.manual_seed(0)
    s_ch, t_ch, sizes = (64, 128, 256, 512), (256, 512, 1024, 2048), (56, 28, 14, 7)   # R18 student, R50 teacher
    fs = [torch.randn(B, c, s, s, device=dev).relu().requires_grad_() for c, s in zip(s_ch, sizes)]
    ft = [torch.randn(B, c, s, s, device=dev).relu() for c, s in zip(t_ch, sizes)]
    logits, y = torch.randn(B, 67, device=dev), torch.randint(0, 67, (B,), device=dev)

    def loss_step(transform='dct'):
        for f in fs: f.grad = None
        dct_loss(fs, ft, transform=transform, teacher_logits=logits, targets=y).backward()

    net = torchvision.models.resnet18(num_classes=67).to(dev)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    img = torch.randn(B, 3, 224, 224, device=dev)

    def train_step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(img), y).backward()
        opt.step()

    reps = max(1, a.repeats if dev.type == 'cuda' else min(a.repeats, 3))
    t_step = bench(train_step, dev, reps, warmup=1)
    print(f'ResNet-18 training step (forward, backward, SGD): {t_step*1e3:.1f} ms')
    for tr in ('dct', 'fft-real', 'fft-abs'):
        t = bench(lambda: loss_step(tr), dev, a.repeats * 2)
        print(f'  dct_loss(transform={tr!r}) fwd+bwd: {t*1e3:7.1f} ms = {100*t/t_step:.2f}% of the step (goal < 1%)')


if __name__ == '__main__':
    main()
