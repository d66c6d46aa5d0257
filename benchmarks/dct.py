"""Benchmark: dctkd's matrix DCT vs scipy and vs an FFT-based DCT, and the DCT loss vs a ResNet-18 training step.

Every comparison is interleaved: each round runs every variant once (in a rotated order), and the ratios are taken
per round, then reported as median [min–max] over the rounds, with the machine's load: a busy spell on a shared
machine hits all variants alike. No absolute target is asserted anywhere.
Usage: `python benchmarks/dct.py [--batch 128] [--size 224] [--rounds 7] [--device cuda] [--quick] [--out DIR]`.
"""
import math

import numpy as np
import scipy.fft
import torch

import dctkd.compat  # noqa: F401  (before torchvision)
import torchvision
from dctkd.dct import dct2
from dctkd.losses import dct_loss

from common import Report, arguments, fmt, interleave, parse, ratios

QUICK = dict(batch=4, maps='7 14', rounds=2, size=32, step_batch=2)


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
    ap = arguments(__doc__, QUICK)
    ap.add_argument('--batch', type=int, default=128, help='maps per DCT call (and the step batch, unless --step-batch)')
    ap.add_argument('--maps', default='7 14 28 56', help='map sides of part 1')
    ap.add_argument('--rounds', type=int, default=7, help='interleaved rounds; medians and ranges are over these')
    ap.add_argument('--size', type=int, default=224, help='input side of the training step; its stages are size/4 ... size/32')
    ap.add_argument('--step-batch', type=int, default=None, help='batch of the ResNet-18 step (default: --batch)')
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    a = parse(ap)
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == 'cuda' else (lambda: None)
    with Report('dct', 'The 2-D DCT and the DCT-driven loss (`benchmarks/dct.py`)', a) as rep:
        rep.line(f'\n2-D DCT of a batch of {a.batch} maps (float32, {dev}): ms per call and speed-up of `dct2`, '
                 f'median [min–max] of {a.rounds} interleaved rounds')
        rows = []
        for s in (int(v) for v in a.maps.split()):
            x = torch.rand(a.batch, s, s, device=dev)
            xn = x.cpu().numpy()
            ref = scipy.fft.dctn(xn.astype(np.float64), type=2, norm='ortho', axes=(-2, -1))
            assert np.abs(dct2(x).cpu().numpy() - ref).max() < 1e-4 and np.abs(dct_via_fft(x).cpu().numpy() - ref).max() < 1e-4
            fns = {'dct2': lambda: dct2(x), 'scipy': lambda: scipy.fft.dctn(xn, type=2, norm='ortho', axes=(-2, -1)),
                   'fft': lambda: dct_via_fft(x)}
            one = min(interleave(fns, 1, sync=sync).values())[0]
            t = interleave(fns, a.rounds, sync=sync, number=max(1, min(1000, int(0.02 / max(one, 1e-7)))))
            for k, v in t.items(): rep.record(f'{k}_{s}x{s}_s', v)
            rep.record(f'scipy_over_dct2_{s}x{s}', ratios(t['scipy'], t['dct2']), '×')
            rep.record(f'fft_over_dct2_{s}x{s}', ratios(t['fft'], t['dct2']), '×')
            rows.append([f'{s}×{s}', fmt(t['dct2'], '', 1e3, 3), fmt(t['scipy'], '', 1e3, 3), fmt(t['fft'], '', 1e3, 3),
                         fmt(ratios(t['scipy'], t['dct2']), '×', digits=1), fmt(ratios(t['fft'], t['dct2']), '×', digits=1)])
        rep.table(['map', 'dct2 (ms)', 'scipy.fft.dctn (ms)', 'FFT-based DCT (ms)', 'scipy / dct2', 'FFT DCT / dct2'], rows)

        B = a.step_batch or a.batch
        sizes = tuple(a.size // k for k in (4, 8, 16, 32))
        rep.line(f'\n`dct_loss` (4 stages, forward + backward) against one ResNet-18 training step (forward, backward, SGD), '
                 f'batch {B} at {a.size} px ({dev}), median [min–max] of {a.rounds} interleaved rounds')
        torch.manual_seed(0)
        s_ch, t_ch = (64, 128, 256, 512), (256, 512, 1024, 2048)   # a ResNet-18 student, a ResNet-50 teacher
        fs = [torch.randn(B, c, s, s, device=dev).relu().requires_grad_() for c, s in zip(s_ch, sizes)]
        ft = [torch.randn(B, c, s, s, device=dev).relu() for c, s in zip(t_ch, sizes)]
        logits, y = torch.randn(B, 67, device=dev), torch.randint(0, 67, (B,), device=dev)
        net = torchvision.models.resnet18(num_classes=67).to(dev)
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        img = torch.randn(B, 3, a.size, a.size, device=dev)

        def train_step():
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(net(img), y).backward()
            opt.step()

        def loss_step(transform):
            for f in fs: f.grad = None
            dct_loss(fs, ft, transform=transform, teacher_logits=logits, targets=y).backward()

        transforms = ('dct', 'fft-real', 'fft-abs')
        t = interleave({'step': train_step, **{tr: (lambda tr=tr: loss_step(tr)) for tr in transforms}}, a.rounds, sync=sync)
        rep.record('train_step_s', t['step'])
        rows = [['ResNet-18 training step', fmt(t['step'], '', 1e3, 1), '']]
        for tr in transforms:
            share = [100 * v for v in ratios(t[tr], t['step'])]
            rep.record(f'loss_{tr}_s', t[tr]); rep.record(f'loss_{tr}_share_of_step', share, '%')
            rows.append([f"`dct_loss(transform='{tr}')`", fmt(t[tr], '', 1e3, 1), fmt(share, ' %', digits=2)])
        rep.table(['', 'ms', 'share of the step (goal < 1 %)'], rows)


if __name__ == '__main__':
    main()
