"""Benchmark: where a CPU-benchmark student run's time goes (step, teacher, data, validation, checkpoints, logging, setup, other), for training settings interleaved run by run.

A student of the CPU benchmark as its plan says (nbs/experiments/plans/cpu-bench.yaml, read here: the DCT + KD row, a
ResNet-8 from a ResNet-20 teacher on the toy bench scenes at 32 px, 10 labelled images per class, batch 16, 30 epochs,
cpu-toy's workers=0) trained by `fit`, its parts timed by wrapping the trainer's own functions. The teacher is a short
stand-in (its speed is what matters, not its accuracy). Variants: `before` the settings before issue 25 (validation every
epoch, TensorBoard when installed, contiguous tensors, each term's gradient norm every 5th batch as the plan logs it), `plan`
the plan's own settings (no TensorBoard; channels_last, the CPU default for the CIFAR nets), and others on top of the plan
(`plan-contiguous`: without channels_last, its gain alone; `plan-tb`: with TensorBoard, its cost alone). Each round trains one run of every variant, in a rotated order; the table gives
median [min–max] seconds over the rounds and each variant's CPU and wall time against the first variant's, per round.
Usage: `python benchmarks/split.py [--epochs 30] [--rounds 3] [--variants before plan-contiguous plan] [--quick] [--out DIR]`.
"""
import contextlib
import time
from pathlib import Path

import torch

import dctkd.train as T
from dctkd.config import make_config
from dctkd.data.toy import TOY_BENCH, make_toy_scenes
from dctkd.models import FrozenTeacher
from dctkd.plan import load_plan, plan_path

from common import Report, arguments, fmt, parse, ratios

QUICK = dict(epochs=2, rounds=1, per_class=40)
# name -> config keys on top of the plan's student (`before`: what the plan's settings replaced)
VARIANTS = {'before': {'val_every': 1, 'tensorboard': 'auto', 'channels_last': 'off'}, 'plan': {}, 'plan-tb': {'tensorboard': 'auto'},
            'plan-contiguous': {'channels_last': 'off'},
            'nognorm': {'log_gnorm': 0}, 'val1': {'val_every': 1}}
ROW = 'dct-kd'                     # the plan's row timed here
PARTS = ['step', 'teacher', 'data', 'validation', 'checkpoint', 'logging', 'summary', 'setup']


class Timer:
    """CPU seconds of this process per part (`time.process_time`: on a machine shared with other jobs much steadier than
    wall time, and with one thread and no loader workers it is the run's own work); `wrap(part, fn)` times every call
    of `fn` (nested parts are subtracted from the outer one)."""
    def __init__(self): self.t, self.stack = {p: 0. for p in PARTS}, []

    def wrap(self, part, fn):
        def timed(*a, **k):
            t0 = time.process_time(); self.stack.append(0.)
            try: return fn(*a, **k)
            finally:
                dt, inner = time.process_time() - t0, self.stack.pop()
                self.t[part] += dt - inner
                if self.stack: self.stack[-1] += dt
        return timed


class TimedIter:
    "A training loader whose batches' waiting time counts as 'data'."
    def __init__(self, loader, timer): self.loader, self.timer = loader, timer
    def __len__(self): return len(self.loader)
    def __iter__(self):
        it = iter(self.loader)
        while True:
            try: yield self.timer.wrap('data', lambda: next(it))()
            except StopIteration: return


@contextlib.contextmanager
def instrumented(timer):
    "Patch the trainer's functions (and the teacher's forward) to time them; restore them after."
    saved = {n: getattr(T, n) for n in ('train_step', '_validate', 'save_epoch', '_log_epoch', 'write_summary', 'open_split',
                                         'load_teacher', 'build_model', '_loader', '_tensorboard', 'new_run_dir')}
    fwd = FrozenTeacher.forward
    T.train_step = timer.wrap('step', saved['train_step'])
    T._validate = timer.wrap('validation', saved['_validate'])
    T.save_epoch = timer.wrap('checkpoint', saved['save_epoch'])
    T._log_epoch = timer.wrap('logging', saved['_log_epoch'])
    T.write_summary = timer.wrap('summary', saved['write_summary'])
    for n in ('open_split', 'load_teacher', 'build_model', 'new_run_dir'): setattr(T, n, timer.wrap('setup', saved[n]))
    T._loader = lambda ds, cfg, d, train, epoch: (TimedIter(saved['_loader'](ds, cfg, d, train, epoch), timer) if train
                                                  else saved['_loader'](ds, cfg, d, train, epoch))
    def tb(mode, run=None):
        w = saved['_tensorboard'](mode, run)
        if w is not None:
            for m in ('add_scalar', 'flush'): setattr(w, m, timer.wrap('logging', getattr(w, m)))
        return w
    T._tensorboard = tb
    FrozenTeacher.forward = timer.wrap('teacher', fwd)
    try: yield
    finally:
        for n, f in saved.items(): setattr(T, n, f)
        FrozenTeacher.forward = fwd


def main():
    ap = arguments(__doc__, QUICK)
    ap.add_argument('--epochs', type=int, default=None, help="the student's epochs (default: the plan's)")
    ap.add_argument('--rounds', type=int, default=3, help='interleaved rounds; medians and ranges are over these')
    ap.add_argument('--per-class', type=int, default=TOY_BENCH['n_per_class'], help=f"toy scenes per class (the benchmark's: {TOY_BENCH['n_per_class']}, half held out)")
    ap.add_argument('--variants', nargs='+', default=['before', 'plan-contiguous', 'plan'], choices=list(VARIANTS))
    ap.set_defaults(threads=1)
    a = parse(ap)
    plan = load_plan(plan_path('cpu-bench'))
    row = next(r for r in plan['runs'] if r['name'] == ROW)
    teacher_row = next(r for r in plan['runs'] if r['name'] == row['teacher'])
    with Report('split', 'Where a CPU-benchmark student run spends its time (`benchmarks/split.py`)', a) as rep:
        root = rep.scratch / 'toy-bench'
        make_toy_scenes(root, layout='mit67', progress=False, **{**TOY_BENCH, 'n_per_class': a.per_class})
        place = dict(root=str(root), out=str(rep.scratch / 'runs'), progress=False)
        with contextlib.redirect_stdout(None):
            teacher = T.fit(make_config(teacher_row['preset'], **{**teacher_row['config'], **place, 'epochs': 1, 'max_batches': 2}, name='teacher'))
        student = {**row['config'], **place, 'teacher': str(teacher), **({'epochs': a.epochs} if a.epochs else {})}
        student.pop('val_split', None)
        n_val = round(TOY_BENCH['n_classes'] * a.per_class * TOY_BENCH['val_fraction'])
        rep.line(f"\nOne student run of the CPU benchmark (plan cpu-bench, row {ROW}: {student['arch']} {student['method'].upper()} from a "
                 f"{teacher_row['config']['arch']} teacher, {TOY_BENCH['n_classes'] * student['train_per_class']} training and {n_val} validation images at {student['image_size']} px, "
                 f"batch {student['batch_size']}, {student['epochs']} epochs, validation every {student['val_every']} (plan), gradient norms every "
                 f"{student['log_gnorm']}th batch, {torch.get_num_threads()} thread), its parts timed in CPU seconds of the process (steadier than wall time on a shared machine); median [min–max] over {a.rounds} "
                 f'interleaved rounds, with each part\'s share of the run. `step` is the optimiser step without the teacher\'s forward (`teacher`); `data` the training '
                 f'batches\' loading and augmentation; `validation` includes its own data; `setup` opening the data and building the '
                 'networks; `other` the rest of the wall time.')
        times, walls = {v: [] for v in a.variants}, {v: [] for v in a.variants}
        parts = {v: {p: [] for p in PARTS + ['other']} for v in a.variants}
        for r in range(a.rounds):
            order = a.variants[r % len(a.variants):] + a.variants[:r % len(a.variants)]
            for v in order:
                timer = Timer()
                t0, w0 = time.process_time(), time.perf_counter()
                with instrumented(timer), contextlib.redirect_stdout(None):
                    T.fit(make_config(row['preset'], **{**student, **VARIANTS[v]}, name=f'{v}-{r}'))
                wall, walls[v] = time.process_time() - t0, walls[v] + [time.perf_counter() - w0]
                times[v].append(wall)
                for p in PARTS: parts[v][p].append(timer.t[p])
                parts[v]['other'].append(wall - sum(timer.t.values()))
                print(f'  round {r + 1} {v}: {wall:.1f} CPU s, {walls[v][-1]:.1f} s wall; ' + ' '.join(f'{p} {timer.t[p]:.1f}' for p in PARTS), flush=True)
        rows = []
        for v in a.variants:
            rep.record(f'{v}_cpu_s', times[v]); rep.record(f'{v}_wall_s', walls[v])
            for p in PARTS + ['other']: rep.record(f'{v}_{p}_s', parts[v][p])
            share = {p: 100 * sum(parts[v][p]) / sum(times[v]) for p in PARTS + ['other']}
            rows.append([v, ', '.join(f'{k}={x}' for k, x in VARIANTS[v].items()) or 'defaults', fmt(times[v], digits=1), fmt(walls[v], digits=1)]
                        + [f"{fmt(parts[v][p], digits=1)} ({share[p]:.0f} %)" for p in PARTS + ['other']]
                        + [fmt(ratios(times[v], times[a.variants[0]]), '×', digits=2), fmt(ratios(walls[v], walls[a.variants[0]]), '×', digits=2)])
        rep.table(['variant', 'keys', 'CPU (s)', 'wall (s)'] + PARTS + ['other', f'CPU vs {a.variants[0]}', f'wall vs {a.variants[0]}'], rows)


if __name__ == '__main__':
    main()
