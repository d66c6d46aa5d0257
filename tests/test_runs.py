"""Run folders under faults: kill -9 at any instant then resume (bitwise equal), crafted checkpoints through every
loading entry point, paths from plans, sweep and run locks, configuration through papermill and in-process, and
the import graph."""
import ast
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dctkd.cli import evaluate_cli, train_cli
from dctkd.config import PRESETS, make_config
from dctkd.data.toy import make_toy_scenes
from dctkd.evaluate import evaluate
from dctkd.models import build_model
from dctkd.runs import folder_lock, is_complete, read_checkpoint, save_model
from dctkd.sweep import PlanError, load_plan, run_sweep, sweep_cli
from dctkd.train import fit
from dctkd.viz import extract_cli, load_model

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(dataset='toy', image_size=32, resize=36, batch_size=8, lr=0.05, lr_step=10, max_batches=2, workers=0, progress=False)


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp('toy')
    make_toy_scenes(root, layout='mit67', n_classes=3, n_per_class=8, size=36, seed=0, progress=False)
    return root


@pytest.fixture(scope='module')
def teacher(toy, tmp_path_factory):
    return fit(**TINY, root=str(toy), out=str(tmp_path_factory.mktemp('t')), epochs=1, name='teacher')


# ---- kill -9 at any instant, then resume -----------------------------------------------------------------------

DRIVER = r'''
import json, os, signal, sys
import dctkd.runs as R
from dctkd.train import fit
cfg, when = json.loads(sys.argv[1]), sys.argv[2]
if when.startswith('write:'):          # SIGKILL in the middle of the n-th write of <file>: its temporary is on disk
    name, n = when[6:].split(':'); real, count = R.atomic_write, [0]
    def atomic_write(path, write):
        if os.path.basename(path) == name:
            count[0] += 1
            if count[0] == int(n): return real(path, lambda t: (write(t), os.kill(os.getpid(), signal.SIGKILL)))
        return real(path, write)
    R.atomic_write = atomic_write
print('started', flush=True)
fit(**cfg)
'''


def _kill_run(cfg, when, delay=None):
    "Start a training process; kill -9 it at the instrumented point `when`, or after `delay` seconds of training."
    p = subprocess.Popen([sys.executable, '-c', DRIVER, json.dumps(cfg), when], stdout=subprocess.PIPE, text=True)
    if delay is not None:
        assert p.stdout.readline().strip() == 'started'
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
    p.wait(timeout=300)
    return p.returncode


def _state(run):
    ck = read_checkpoint(run, which='latest')
    rows = [{k: v for k, v in r.items() if k not in ('time_s', 'img_s')} for r in ck['history']]   # all but the clock
    return ck['student'], ck['distiller'], ck['optimizer']['state'], rows


def test_kill_at_any_instant_then_resume_is_bitwise_equal(toy, teacher, tmp_path):
    cfg = dict(TINY, root=str(toy), arch='mobilenet_v2', method='dct+kd', teacher=str(teacher), epochs=2, hparams={'stages': [0, 1, 2]})  # stage 3: 1×1 at 32 px
    ref = fit(**cfg, out=str(tmp_path / 'ref'), name='r')
    want = _state(ref)
    top1 = [r['val_top1'] for r in want[3]]
    n_best = sum(top1[e] > max(top1[:e], default=-1) for e in range(2))   # how many times best.pt is written
    rng = random.Random(0)
    cases = [('write:latest.pt:1', None),                  # before the first epoch was committed: restarts at epoch 1
             (f'write:best.pt:{n_best}', None),            # during the final best.pt write
             ('none', rng.uniform(0.5, 2.5)), ('none', rng.uniform(1.5, 3.5))]   # anywhere
    for i, (when, delay) in enumerate(cases):
        out = tmp_path / f'k{i}'
        rc = _kill_run(dict(cfg, out=str(out), name='r'), when, delay)
        run = out / 'toy-scenes' / 'r'
        if rc == 0: assert delay is not None; continue   # finished before the kill: nothing to resume
        assert rc == -signal.SIGKILL, (when, rc)
        if not run.exists(): continue                     # killed before the run folder existed: nothing to resume
        assert (run / 'config.json').exists()             # a run folder always holds its config
        fit(resume=str(run))
        assert is_complete(run)
        got = _state(run)
        for a, b in zip(want[:2], got[:2]): assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), when
        assert got[3] == want[3], when
        best = read_checkpoint(run, which='best')
        assert best['epoch'] + 1 == json.loads((run / 'summary.json').read_text())['best']['epoch'], when
        assert not [p for p in run.rglob('*') if 'tmp' in p.name], when


# ---- crafted checkpoints -----------------------------------------------------------------------------------------

class _Evil:
    "What a crafted checkpoint does: its unpickling calls Path.touch(marker)."
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (Path.touch, (self.marker,))


def test_crafted_checkpoint_is_refused_by_every_entry_point(toy, teacher, tmp_path, capsys):
    marker = tmp_path / 'PWNED'
    good = read_checkpoint(teacher)
    evil_file = tmp_path / 'evil.pt'
    torch.save({**good, 'extra': _Evil(marker)}, evil_file)
    evil_run = tmp_path / 'runs' / 'toy-scenes' / 'evil'
    (evil_run / 'checkpoints').mkdir(parents=True)
    (evil_run / 'config.json').write_text((Path(teacher) / 'config.json').read_text())
    for name in ('best.pt', 'latest.pt'): torch.save({**good, 'extra': _Evil(marker)}, evil_run / 'checkpoints' / name)
    entry_points = {
        'fit teacher=': lambda: fit(**TINY, root=str(toy), out=str(tmp_path / 'o'), epochs=1, method='kd', teacher=str(evil_file)),
        'fit resume=': lambda: fit(resume=str(evil_run), epochs=2),
        'evaluate(file)': lambda: evaluate(evil_file, progress=False),
        'evaluate(run)': lambda: evaluate(evil_run, progress=False),
        'evaluate(teacher=)': lambda: evaluate(teacher, teacher=str(evil_file), progress=False),
        'load_model': lambda: load_model(evil_file),
    }
    for what, call in entry_points.items():
        with pytest.raises(ValueError, match='refused to load'): call()
        assert not marker.exists(), what
    for argv, cli in [([str(evil_file)], evaluate_cli), ([str(evil_run)], evaluate_cli),
                      ([str(teacher), '--teacher', str(evil_file)], evaluate_cli), ([str(evil_run)], extract_cli),
                      ([f'teacher={evil_file}', 'method=kd', *[f'{k}={v}' for k, v in TINY.items()], f'root={toy}',
                        f'out={tmp_path / "o2"}'], train_cli)]:
        with pytest.raises((SystemExit, ValueError)):
            cli(argv)
        assert not marker.exists(), (cli.__name__, argv)
    assert 'refused to load' in capsys.readouterr().err
    read_checkpoint(evil_file, trust=True)                  # the explicit trust flag does unpickle
    assert marker.exists()


# ---- paths from plans, locks, and where configuration comes from -----------------------------------------------

@pytest.mark.parametrize('field, value', [('dataset', '/tmp'), ('dataset', '../..'), ('name', '../../outside'),
                                          ('name', '/abs/olute'), ('name', 'a/b')])
def test_plan_paths_cannot_leave_the_sweep_folder(tmp_path, field, value):
    victim = tmp_path / 'outside'; victim.mkdir(); (victim / 'keep').write_text('data')
    run = {'name': 'r', 'arch': 'resnet18', field: value}
    with pytest.raises(PlanError, match=f'{field}'):
        run_sweep(load_plan({'seeds': [0], 'defaults': {k: v for k, v in TINY.items() if k != 'progress'}, 'runs': [run]}),
                  tmp_path / 'out', executor='inprocess')
    assert (victim / 'keep').read_text() == 'data' and not (tmp_path / 'out').exists()


def test_two_sweeps_on_one_folder_never_train_twice(toy, tmp_path, capsys):
    plan = tmp_path / 'p.yaml'
    plan.write_text(json.dumps({'seeds': [0], 'defaults': {**{k: v for k, v in TINY.items() if k != 'progress'}, 'root': str(toy), 'epochs': 1},
                                'runs': [{'name': 't'}]}))
    out = tmp_path / 'sweep'; out.mkdir()
    lock = folder_lock(out, 'sweep folder')                  # another sweep holds the folder
    try:
        with pytest.raises(SystemExit):
            sweep_cli([str(plan), '--out', str(out), '--executor', 'inprocess'])
        assert 'in use by another process' in capsys.readouterr().err and not (out / 'runs').exists()
    finally: lock.release()
    run = out / 'runs' / 'toy-scenes' / 't-s0'
    assert sweep_cli([str(plan), '--out', str(out), '--executor', 'inprocess']) == 0 and is_complete(run)
    lock = folder_lock(run)                                  # a run being trained elsewhere cannot be resumed here
    try:
        with pytest.raises(RuntimeError, match='in use by another process'): fit(resume=str(run), epochs=2)
    finally: lock.release()


@pytest.fixture
def kernel_env(monkeypatch):
    monkeypatch.delenv('MPLBACKEND', raising=False)


def test_preset_keys_reach_the_run_through_papermill_and_in_process(toy, tmp_path, kernel_env, capsys):
    preset = PRESETS['cpu-toy-teacher']
    assert preset['arch'] != make_config().arch and preset['lr'] != make_config().lr
    weights = save_model(build_model(preset['arch'], 3), tmp_path / 'r34.pt')        # `pretrained` from the plan, beside the preset
    plan = {'seeds': [0], 'runs': [{'name': 't', 'preset': 'cpu-toy-teacher', 'root': str(toy), 'epochs': 1, 'max_batches': 1,
                                     'image_size': 32, 'batch_size': 8, 'pretrained': str(weights)}]}
    for executor in ('papermill', 'inprocess'):
        st = run_sweep(load_plan(plan), tmp_path / executor, executor=executor, log=lambda *a: None)
        assert st['jobs']['t/seed0']['status'] == 'done', st
        run = tmp_path / executor / 'runs' / 'toy-scenes' / 't-s0'
        cfg = json.loads((run / 'config.json').read_text())
        assert (cfg['arch'], cfg['lr'], cfg['lr_step'], cfg['epochs'], cfg['pretrained']) == \
            (preset['arch'], preset['lr'], preset['lr_step'], 1, str(weights)), executor
        assert read_checkpoint(run)['arch'] == preset['arch']
    capsys.readouterr()                                                                       # the runs' epoch lines
    assert train_cli(['--preset', 'cpu-toy-teacher', 'epochs=1', '--dry-run']) == 0              # and from the shell
    shown = json.loads(capsys.readouterr().out)
    assert (shown['arch'], shown['lr'], shown['epochs']) == (preset['arch'], preset['lr'], 1)


def test_resume_applies_resumable_keys_and_refuses_others(toy, tmp_path, capsys):
    run = fit(**TINY, root=str(toy), out=str(tmp_path), epochs=1, name='r')
    assert train_cli([f'resume={run}', 'epochs=2']) == 0
    assert [r['epoch'] for r in read_checkpoint(run, which='latest')['history']] == [1, 2]
    assert json.loads((run / 'config.json').read_text())['epochs'] == 2
    with pytest.raises(SystemExit): train_cli([f'resume={run}', 'epochs=3', 'arch=resnet34', 'lr=0.2'])
    err = capsys.readouterr().err
    assert "cannot change arch (the run has 'resnet18', asked 'resnet34'), lr (the run has 0.05, asked 0.2)" in err
    assert len(read_checkpoint(run, which='latest')['history']) == 2     # nothing was trained


# ---- the import graph ---------------------------------------------------------------------------------------------

def test_the_package_import_graph_has_no_cycle():
    pkg = ROOT / 'dctkd'
    mods = {'.'.join(p.relative_to(ROOT).with_suffix('').parts).removesuffix('.__init__'): p for p in pkg.rglob('*.py')}
    graph = {}
    for m, p in mods.items():
        base = m.split('.') if p.name == '__init__.py' else m.split('.')[:-1]
        deps, tree = set(), ast.parse(p.read_text())
        # function-local imports count too (a PEP 562 `__getattr__` forwarding to a higher room is a cycle), and so does
        # importlib.import_module('dctkd.x') with a literal name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == 'import_module'
                    and node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value in mods):
                deps.add(node.args[0].value)
            elif isinstance(node, ast.ImportFrom):
                target = '.'.join(base[:len(base) - node.level + 1] + ([node.module] if node.module else [])) if node.level else node.module
                deps |= {t for t in (target, *(f'{target}.{a.name}' for a in node.names)) if t in mods}
            elif isinstance(node, ast.Import): deps |= {a.name for a in node.names if a.name in mods}
        graph[m] = deps - {m}
    state, stack = {}, []
    def visit(m):
        state[m] = 1; stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1: pytest.fail('import cycle: ' + ' -> '.join(stack[stack.index(d):] + [d]))
            if d not in state: visit(d)
        state[m] = 2; stack.pop()
    for m in sorted(graph):
        if m not in state: visit(m)
    assert graph['dctkd.train'] and 'dctkd.train' not in graph['dctkd.evaluate']


def test_only_runs_spells_a_run_folders_file_names():
    "`dctkd.runs` is the one room that knows a run folder: no other module holds one of its names as a string of its own."
    import dctkd
    from dctkd import runs
    names = {runs.CONFIG, runs.RESUMES, runs.METRICS, runs.SUMMARY, runs.SUMMARY_MD, runs.CURVES, runs.LOCK, runs.TENSORBOARD,
             runs.EXECUTED, 'checkpoints', runs.LATEST.name, runs.BEST.name, str(runs.LATEST), str(runs.BEST)}
    allowed = {('check.py', 'checkpoints'): "torch.hub's own checkpoints folder", ('check.py', 'tensorboard'): 'the module name',
               ('config.py', 'tensorboard'): 'the config key', ('plan.py', 'train.ipynb'): 'the shipped experiment notebook'}
    pkg = Path(dctkd.__file__).parent
    found = []
    for f in sorted(pkg.rglob('*.py')):
        if f.name in ('runs.py', '_modidx.py'): continue
        tree = ast.parse(f.read_text())
        parts = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}   # pieces of f-strings (other files' names)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and id(node) not in parts and node.value in names and (f.name, node.value) not in allowed:
                found.append(f"{f.relative_to(pkg)}:{node.lineno} {node.value!r}")
    assert not found, found
    assert len(names) >= 12
