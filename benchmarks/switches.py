"""Benchmark: channels_last, bf16 autocast and torch.compile against fp32 for one DCT + KD training step on CPU, per network, interleaved.

The CPU benchmark's step (batch 16 at 32 px, one thread by default): the trainer's own `train_step` (teacher forward,
student forward and backward, SGD) for torchvision's ResNet-18 pair and the original's CIFAR ResNets (resnet56 →
resnet20, resnet110 → resnet32, resnet32x4 → resnet8x4; the CIFAR nets are skipped where `build_model` does not know
them). Each round times every variant once, in a rotated order; the table gives images/s and each switch's speed
against fp32 in the same round, median [min–max]. A ratio above 1 is faster than fp32.
Usage: `python benchmarks/switches.py [--pairs resnet18:resnet18 resnet56:resnet20] [--rounds 7] [--compile] [--quick] [--out DIR]`.
"""
import torch

from dctkd import distillers
from dctkd.config import make_config, method_hparams
from dctkd.models import FrozenTeacher, build_model
from dctkd.train import Trainee, train_step

from common import Report, arguments, fmt, interleave, parse, ratios

QUICK = dict(rounds=2, pairs=['resnet20:resnet8'])
PAIRS = ['resnet20:resnet8', 'resnet56:resnet20', 'resnet110:resnet32', 'resnet32x4:resnet8x4', 'resnet18:resnet18']   # the CPU benchmark's pair first


def stepper(teacher_arch, student_arch, batch, size, amp=None, cl=False, compile=False, gnorm=False, classes=8):
    "A function doing one `train_step` of DCT + KD (the dctkd recipe) with the switches given."
    torch.manual_seed(0)
    teacher = FrozenTeacher(build_model(teacher_arch, classes))
    student = build_model(student_arch, classes)
    x = torch.randn(batch, 3, size, size)
    y = teacher(x)[0].argmax(1)
    d = distillers.build('dct+kd', student, teacher, size, num_train=batch, **method_hparams(make_config(method='dct+kd', teacher='t')))
    tr = Trainee(student, d).train()
    if cl: tr.to(memory_format=torch.channels_last); teacher.to(memory_format=torch.channels_last)
    if compile: tr.student = torch.compile(tr.student)
    opt = torch.optim.SGD([p for p in tr.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    scaler = torch.amp.GradScaler('cpu', enabled=False)
    idx = torch.arange(batch)
    params = list(student.parameters()) if gnorm else None
    return lambda: train_step(tr, teacher, (x, y, idx), opt, scaler, amp, cl, params)


def main():
    ap = arguments(__doc__, QUICK)
    ap.add_argument('--pairs', nargs='+', default=PAIRS, help='teacher:student pairs')
    ap.add_argument('--batch', type=int, default=16)
    ap.add_argument('--size', type=int, default=32)
    ap.add_argument('--rounds', type=int, default=7, help='interleaved rounds; medians and ranges are over these')
    ap.add_argument('--compile', action='store_true', help='also torch.compile (minutes of compilation per network on CPU)')
    ap.set_defaults(threads=1)
    a = parse(ap)
    variants = {'fp32': {}, 'channels_last': dict(cl=True), 'bf16': dict(amp=torch.bfloat16),
                'bf16 + channels_last': dict(amp=torch.bfloat16, cl=True)}
    if a.compile: variants['compile'] = dict(compile=True)
    variants['log_gnorm=1'] = dict(gnorm=True)      # not a speed switch: the cost of measuring every term's gradient norm on every step
    with Report('switches', 'CPU training switches against fp32 (`benchmarks/switches.py`)', a) as rep:
        rep.line(f'\nOne DCT + KD training step (`dctkd.train.train_step`: teacher forward, student forward and backward, SGD), batch '
                 f'{a.batch} at {a.size} px, {torch.get_num_threads()} thread; images/s of fp32 and each switch\'s speed against fp32 '
                 f'in the same round (above 1: faster), median [min–max] of {a.rounds} interleaved rounds. The last column is not a switch '
                 f'but the price of `log_gnorm=1` (each loss term\'s gradient norm measured on every step: one extra backward per term).')
        rows = []
        for pair in a.pairs:
            t_arch, s_arch = pair.split(':')
            try: steps = {v: stepper(t_arch, s_arch, a.batch, a.size, **kw) for v, kw in variants.items()}
            except (ValueError, KeyError) as e:
                rep.line(f'- {pair}: skipped ({str(e).splitlines()[0][:120]})'); continue
            t = interleave(steps, a.rounds, warmup=2 if a.compile else 1)
            for v in variants: rep.record(f'{pair}_{v}_img_per_s', [a.batch / s for s in t[v]], 'img/s')
            rows.append([f'{t_arch} → {s_arch}', fmt([a.batch / s for s in t['fp32']], digits=1)]
                        + [fmt(ratios(t['fp32'], t[v]), '×') for v in variants if v != 'fp32'])
            print(f'  {pair}: ' + ', '.join(f'{v} {fmt(ratios(t["fp32"], t[v]), "×")}' for v in variants if v != 'fp32'), flush=True)
        rep.table(['teacher → student', 'fp32 (img/s)'] + [f'{v} vs fp32' for v in variants if v != 'fp32'], rows)


if __name__ == '__main__':
    main()
