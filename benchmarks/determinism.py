"""Benchmark: what the kernel-pinning settings cost, and which of them change the bits of CPU training.

Each setting is an environment (read by PyTorch, oneDNN and MKL only when torch loads) plus oneDNN on or off; every
run is a fresh process (`--child`) that trains the CPU benchmark's pair (ResNet-20 teacher -> ResNet-8 student, DCT + KD,
batch 16 at 32 px, synthetic data from a fixed seed) for a fixed number of SGD steps, and reports its time per step and
a hash of the final student weights. Settings are interleaved (every round runs each once, in a rotated order) and the
time ratios to the unpinned setting are taken per round: median [min–max]. Equal hashes mean bitwise-equal training.
Usage: `python benchmarks/determinism.py [--rounds 3] [--steps 30] [--quick] [--out DIR]`.
"""
import hashlib
import json
import os
import subprocess
import sys
import time

from common import Report, arguments, fmt, parse, ratios

QUICK = dict(rounds=1, steps=3, settings=2)
PIN_AVX2 = {'ATEN_CPU_CAPABILITY': 'avx2', 'DNNL_MAX_CPU_ISA': 'AVX2', 'MKL_CBWR': 'AVX2'}
# name -> (environment on top of one thread, oneDNN enabled)
SETTINGS = {
    'unpinned': ({}, True),
    'unpinned, 2 threads': ({'OMP_NUM_THREADS': '2', 'MKL_NUM_THREADS': '2'}, True),
    'AVX2 pinned (BENCH_ENV)': (PIN_AVX2, True),
    'AVX2 pinned, oneDNN off': (PIN_AVX2, False),
    'portable: ATen default, MKL COMPATIBLE, oneDNN off': ({'ATEN_CPU_CAPABILITY': 'default', 'MKL_CBWR': 'COMPATIBLE'}, False),
}


def child(steps: int, mkldnn: bool) -> dict:
    "Train `steps` SGD steps of the benchmark pair in this process; its time per step (after one warm-up step) and the weights' hash."
    import torch
    from dctkd.distillers import build
    from dctkd.models import FrozenTeacher, build_model
    torch.backends.mkldnn.enabled = mkldnn
    torch.manual_seed(0)
    teacher = FrozenTeacher(build_model('resnet20', 8))
    torch.manual_seed(1)
    student = build_model('resnet8', 8)
    d = build('dct+kd', student, teacher, 32)
    params = [p for p in [*student.parameters(), *d.parameters()] if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.025, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(2)
    xs = [torch.randn(16, 3, 32, 32, generator=g) for _ in range(steps + 1)]
    ys = [torch.randint(0, 8, (16,), generator=g) for _ in range(steps + 1)]
    times = []
    for x, y in zip(xs, ys):
        t = time.perf_counter()
        terms = d(student(x), teacher(x), y)
        loss = sum(terms.values())
        opt.zero_grad(); loss.backward(); opt.step()
        times.append(time.perf_counter() - t)
    h = hashlib.sha256(b''.join(p.detach().numpy().tobytes() for p in student.state_dict().values())).hexdigest()
    return {'step_s': sorted(times[1:])[len(times[1:]) // 2], 'hash': h, 'loss': repr(float(loss)),
            'capability': torch.backends.cpu.get_cpu_capability(), 'threads': torch.get_num_threads()}


def onednn_isa(env: dict) -> str:
    "The ISA oneDNN dispatches to under `env`, and the convolution kernel it picks (ONEDNN_VERBOSE of one 3×3 convolution)."
    code = "import torch; torch.nn.functional.conv2d(torch.randn(16,16,8,8), torch.randn(16,16,3,3))"
    out = subprocess.run([sys.executable, '-c', code], env={**os.environ, **env, 'ONEDNN_VERBOSE': '1'}, capture_output=True, text=True).stdout
    isa = [l.split('isa:', 1)[1].split(',')[0].strip() for l in out.splitlines() if ',isa:' in l]
    impl = [l.split(',')[6] for l in out.splitlines() if ',primitive,exec,cpu,convolution,' in l]
    return (isa[0] if isa else 'n/a') + (f" ({impl[0]})" if impl else '')


def main():
    if '--child' in sys.argv:
        i = sys.argv.index('--child')
        print(json.dumps(child(int(sys.argv[i + 1]), sys.argv[i + 2] == 'on'))); return
    ap = arguments(__doc__, QUICK)
    ap.add_argument('--rounds', type=int, default=3, help='interleaved rounds; medians and ranges are over these')
    ap.add_argument('--steps', type=int, default=30, help='SGD steps per run (one more as warm-up)')
    ap.add_argument('--settings', type=int, default=len(SETTINGS), help=f'the first N of the {len(SETTINGS)} settings')
    a = parse(ap)
    base = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}
    for k in (*PIN_AVX2, 'ONEDNN_VERBOSE'): base.pop(k, None)
    with Report('determinism', 'Kernel pinning: cost and bits (`benchmarks/determinism.py`)', a) as rep:
        rep.line(f'\nOne fresh process per run: {a.steps} SGD steps of ResNet-20 -> ResNet-8, DCT + KD, batch 16 at 32 px; '
                 f'{a.rounds} interleaved rounds; time per step median [min–max]; ratio to "unpinned" per round')
        names = list(SETTINGS)[:max(1, a.settings)]
        res = {n: [] for n in names}
        for r in range(a.rounds):
            for n in names[r % len(names):] + names[:r % len(names)]:
                env, mk = SETTINGS[n]
                out = subprocess.run([sys.executable, __file__, '--child', str(a.steps), 'on' if mk else 'off'],
                                     env={**base, **env}, capture_output=True, text=True, check=True).stdout
                res[n].append(json.loads(out.strip().splitlines()[-1]))
        ref = res['unpinned'][0]['hash']
        rows = []
        for n in names:
            env, mk = SETTINGS[n]
            ts = [x['step_s'] for x in res[n]]
            hs = {x['hash'] for x in res[n]}
            rows.append([n, res[n][0]['capability'], onednn_isa({**base, **env}) if mk else 'off', res[n][0]['threads'],
                         fmt(ts, ' ms', 1e3, 1), fmt(ratios(ts, [x['step_s'] for x in res['unpinned']]), '×'),
                         'yes' if len(hs) == 1 else f'NO ({len(hs)} hashes)', sorted(hs)[0][:12],
                         'same' if hs == {ref} else 'different'])
            rep.record(n, ts)
            rep.data[n].update(hashes=sorted(hs), env=env, mkldnn=mk, capability=res[n][0]['capability'], loss=res[n][0]['loss'])
        rep.table(['setting', 'ATen capability', 'oneDNN ISA', 'threads', 'time per step', 'ratio to unpinned',
                   'same bits every round', 'weights hash', 'bits vs unpinned'], rows)


if __name__ == '__main__':
    main()
