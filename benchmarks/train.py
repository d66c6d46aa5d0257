"""Benchmark: images/s of one training step for a student alone, +KD, +AT and +DCT, interleaved in one run.

Pairs R50 -> R18 and R50 -> MobileNetV2 at a CPU-sized input; each round runs one step of every method (in a
rotated order), and the DCT step's overhead over the KD step is taken per round (goal <= 1%), reported as
median [min–max] over the rounds with the machine's load.
Usage: `python benchmarks/train.py [--size 64] [--batch 32] [--rounds 9] [--device cuda] [--quick] [--out DIR]`.
"""
import torch

from dctkd.distillers import build
from dctkd.models import FrozenTeacher, build_model

from common import Report, arguments, fmt, interleave, parse, ratios

QUICK = dict(size=32, batch=2, rounds=2, students='resnet18')


def main():
    ap = arguments(__doc__, QUICK)
    ap.add_argument('--size', type=int, default=64)
    ap.add_argument('--batch', type=int, default=32)
    ap.add_argument('--rounds', type=int, default=9, help='interleaved rounds; medians and ranges are over these')
    ap.add_argument('--students', default='resnet18 mobilenet_v2')
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    a = parse(ap)
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == 'cuda' else (lambda: None)
    with Report('train', 'Training steps, interleaved (`benchmarks/train.py`)', a) as rep:
        rep.line(f'\nImages/s of one SGD step, batch {a.batch} at {a.size} px, ResNet-50 teacher ({dev}), '
                 f'median [min–max] of {a.rounds} interleaved rounds; the DCT step against the KD step per round')
        torch.manual_seed(0)
        x = torch.randn(a.batch, 3, a.size, a.size, device=dev)
        y = torch.randint(0, 67, (a.batch,), device=dev)
        teacher = FrozenTeacher(build_model('resnet50', 67).to(dev))
        rows = []
        for s_arch in a.students.split():
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
                steps[method] = step
            t = interleave(steps, a.rounds, sync=sync)
            over = [100 * (r - 1) for r in ratios(t['dct'], t['kd'])]
            at = [100 * (r - 1) for r in ratios(t['at'], t['kd'])]
            for m, v in t.items(): rep.record(f'{s_arch}_{m}_img_per_s', [a.batch / s for s in v], 'img/s')
            rep.record(f'{s_arch}_dct_over_kd', over, '%'); rep.record(f'{s_arch}_at_over_kd', at, '%')
            rows.append([s_arch] + [fmt([a.batch / s for s in t[m]], digits=1) for m in steps]
                        + [fmt(over, ' %', digits=1), fmt(at, ' %', digits=1)])
        rep.table(['student', 'alone (img/s)', '+ KD', '+ AT', '+ DCT', 'DCT step vs KD step', 'AT step vs KD step'], rows)
        rep.line('\nThe teacher\'s forward pass is the difference to the student alone; the DCT term\'s own cost is the '
                 'DCT-vs-KD column (its range shows the run-to-run noise).')


if __name__ == '__main__':
    main()
