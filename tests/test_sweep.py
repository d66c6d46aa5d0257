"""Sweeps and reports: the train / evaluate / report notebooks through papermill, a resumable sweep with a failing run,
a papermill run killed with SIGTERM, and parameter checks (plan checks and aggregation on known numbers: nbs/17a, 17c). Tiny settings (32 px, 1 epoch, 1 batch) so it runs in about a minute."""
import json
from pathlib import Path

import pytest

from dctkd import distillers
from dctkd.data.toy import make_toy_scenes
from dctkd.runs import executing_notebook, is_complete
from dctkd.sweep import load_plan, run_sweep, sweep_cli

ROOT = Path(__file__).resolve().parents[1]
EXP = ROOT / 'nbs' / 'experiments'
TINY = dict(image_size=32, epochs=1, max_batches=1, batch_size=8, workers=0, lr_step=1)


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp('toy') / 'toy-scenes'
    make_toy_scenes(root, layout='mit67', n_classes=3, n_per_class=8, size=36, seed=0, progress=False)
    return root


@pytest.fixture
def kernel_env(monkeypatch):
    monkeypatch.delenv('MPLBACKEND', raising=False)        # the kernel must use Jupyter's inline backend


def _pm(nb, dest, **params):
    import papermill as pm
    return pm.execute_notebook(str(EXP / nb), str(dest), kernel_name='python3', cwd=str(EXP), progress_bar=False, parameters=params)


def _errors(nb_path):
    cells = json.loads(Path(nb_path).read_text())['cells']
    return [o for c in cells for o in c.get('outputs', []) if o.get('output_type') == 'error']


def test_train_evaluate_report_notebooks(toy, tmp_path, kernel_env):
    common = dict(dataset='toy', root=str(toy), out=str(tmp_path / 'runs'), **TINY)
    _pm('train.ipynb', tmp_path / 't.ipynb', config=dict(arch='resnet18', name='teacher', **common))
    teacher = tmp_path / 'runs' / 'toy-scenes' / 'teacher'
    _pm('train.ipynb', tmp_path / 's.ipynb', config=dict(arch='resnet18', method='dct+kd', teacher=str(teacher), name='dct-kd', hparams={'stages': [0, 1, 2]}, **common))
    student = tmp_path / 'runs' / 'toy-scenes' / 'dct-kd'
    for f in (teacher, student):
        assert {'config.json', 'metrics.csv', 'summary.json'} <= {p.name for p in f.iterdir()}
        assert (f / 'checkpoints' / 'best.pt').exists() and (f / 'checkpoints' / 'latest.pt').exists()
    cfg = json.loads((student / 'config.json').read_text())
    assert (cfg['method'], cfg['image_size'], cfg['epochs'], cfg['teacher']) == ('dct+kd', 32, 1, str(teacher))
    header = (student / 'metrics.csv').read_text().splitlines()[0].split(',')
    assert {'epoch', 'val_top1', 'val_mca_all'} <= set(header) and any(h.startswith('train_') for h in header)
    assert not _errors(tmp_path / 's.ipynb')

    _pm('evaluate.ipynb', tmp_path / 'e.ipynb', run=str(student), teacher=str(teacher), out=str(tmp_path / 'eval'))
    ev = json.loads((tmp_path / 'eval' / 'evaluation.json').read_text())
    assert set(ev) == {'best', 'last'} and all(0 <= ev[w]['top1'] <= 100 for w in ev)

    _pm('report.ipynb', tmp_path / 'r.ipynb', runs_root=str(tmp_path / 'runs'), out=str(tmp_path / 'report'))
    md = (tmp_path / 'report' / 'report.md').read_text()
    assert 'T R18 → S R18' in md and '| Teacher |' in md and '| DCT (Ours) + KD |' in md and 'Protocol:' in md
    csv = (tmp_path / 'report' / 'report.csv').read_text().splitlines()
    assert csv[0].startswith('method,row,column,best_mean') and len(csv) == 3
    assert (tmp_path / 'report' / 'report.png').stat().st_size > 0
    cells = json.loads((tmp_path / 'r.ipynb').read_text())['cells']
    assert sum('image/png' in o.get('data', {}) for c in cells for o in c.get('outputs', [])) >= 1


def test_sweep_records_failures_and_resumes(toy, tmp_path, kernel_env, monkeypatch, capsys):
    plan = tmp_path / 'plan.yaml'
    tiny = ', '.join(f'{k}: {v}' for k, v in TINY.items())
    plan.write_text(f"""
seeds: [0]
defaults: {{dataset: toy, root: {toy}, {tiny}}}
runs:
  - {{name: t, arch: resnet18}}
  - {{name: t-bad, arch: resnet18, pretrained: {tmp_path / 'no-such-weights.pt'}}}   # fails when training starts
  - {{name: s-bad, arch: resnet18, method: dct, teacher: t-bad, hparams: {{stages: [0, 1, 2]}}}}          # skipped: its teacher failed
  - {{name: s, arch: resnet18, method: dct, teacher: t, hparams: {{stages: [0, 1, 2]}}}}
""")
    out = tmp_path / 'sweep'
    st = run_sweep(str(plan), out, executor='papermill')
    status = {k: v['status'] for k, v in st['jobs'].items()}
    assert status == {'t/seed0': 'done', 't-bad/seed0': 'failed', 's-bad/seed0': 'skipped', 's/seed0': 'done'}
    assert json.loads((out / 'sweep.json').read_text())['jobs']['t-bad/seed0']['error']
    assert 'teacher t-bad/seed0' in st['jobs']['s-bad/seed0']['error']
    s = out / 'runs' / 'toy-scenes' / 's-s0'
    assert is_complete(s) and (s / 'train.ipynb').exists()
    mtime = (s / 'summary.json').stat().st_mtime
    log = []
    import dctkd.sweep
    def no_notebook(): raise AssertionError('the in-process executor looked for a notebook')
    monkeypatch.setattr(dctkd.sweep, 'train_notebook', no_notebook); monkeypatch.setattr(dctkd.sweep, 'experiments_dir', no_notebook)
    st2 = run_sweep(str(plan), out, executor='inprocess', log=log.append)       # resumes: complete runs are not retrained
    assert 't/seed0: done, skipped' in log and 's/seed0: done, skipped' in log
    assert (s / 'summary.json').stat().st_mtime == mtime
    assert st2['jobs']['t-bad/seed0']['status'] == 'failed'
    with pytest.raises(SystemExit) as e:                     # a dry run puts every job not done through dctkd.check
        sweep_cli([str(plan), '--out', str(out), '--dry-run'])
    assert e.value.code == 2 and 't-bad/seed0: config pretrained=' in capsys.readouterr().err


def test_shipped_plans_are_valid():
    plans = {p.stem: load_plan(p) for p in sorted((EXP / 'plans').glob('*.yaml'))}
    assert {'ade20k', 'sun397', 'mit67', 'toy-cpu'} <= set(plans)
    for ds in ('ade20k', 'sun397', 'mit67'):
        runs = plans[ds]['runs']
        methods = {r['config']['method'] for r in runs}
        assert {'none', 'kd', 'dct', 'dct+kd', 'at', 'at+kd', 'pkt', 'vid', 'crd', 'crd+kd'} <= methods
        paper = [r for r in runs if distillers.method(r['config']['method']).in_paper]
        assert all('expected' in r for r in paper)                       # the paper's numbers, for its rows
        beyond = [r for r in runs if r not in paper]                      # methods beyond the paper: no published numbers
        assert {'fitnet', 'fitnet+kd', 'catkd', 'catkd+kd', 'dkd', 'dist', 'lskd'} <= {r['config']['method'] for r in beyond}
        assert not any('expected' in r for r in beyond)
    toy = plans['toy-cpu']
    assert len(toy['seeds']) == 2 and {r['config']['method'] for r in toy['runs']} == {'none', 'dct', 'dct+kd'}


@pytest.mark.parametrize('params, msg', [
    (dict(method="dtc"), "method='dtc'"),
    (dict(lr='fast'), "config lr='fast': expected float"),   # wrong type (missing teacher: test_plan_validation)
])
def test_train_notebook_rejects_bad_parameters(toy, tmp_path, kernel_env, params, msg):
    import papermill as pm
    with pytest.raises(pm.PapermillExecutionError) as e:
        _pm('train.ipynb', tmp_path / 'bad.ipynb', config=dict(dataset='toy', root=str(toy), out=str(tmp_path / 'runs'), **TINY, **params))
    assert msg in str(e.value)
    assert not (tmp_path / 'runs').exists()                # nothing was trained


def test_train_notebook_rejects_an_undeclared_parameter(tmp_path, kernel_env):
    import papermill as pm
    with pytest.raises(pm.PapermillExecutionError) as e:
        _pm('train.ipynb', tmp_path / 'bad.ipynb', epoch=3, config=dict(dataset='toy', out=str(tmp_path / 'runs')))
    assert "unknown parameter(s) ['epoch']" in str(e.value) and not (tmp_path / 'runs').exists()


def test_a_papermill_run_killed_with_sigterm_leaves_no_hidden_notebook(tmp_path, kernel_env):
    "What a worker gets when its driver dies: the executed notebook is moved in or removed, never left as .NAME.train.ipynb."
    import signal, subprocess, sys, time
    nb = tmp_path / 'slow.ipynb'
    cell = lambda src, tags=(): {'cell_type': 'code', 'metadata': {'tags': list(tags)}, 'source': src, 'outputs': [], 'execution_count': None}
    nb.write_text(json.dumps({'cells': [cell('preset = config = None', ['parameters']), cell('import time; time.sleep(300)')],
                              'metadata': {'kernelspec': {'name': 'python3', 'display_name': 'python3', 'language': 'python'}},
                              'nbformat': 4, 'nbformat_minor': 5}))
    folder = tmp_path / 'runs' / 'r-s0'
    code = f"from dctkd.executors import _train_papermill; _train_papermill('', {{}}, {str(folder)!r}, {str(nb)!r})"
    p = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    hidden = executing_notebook(folder)
    t0 = time.time()
    while not hidden.exists() and time.time() - t0 < 120 and p.poll() is None: time.sleep(0.1)
    assert hidden.exists(), 'papermill never wrote the executed notebook'
    time.sleep(1)                                            # the kernel runs the sleeping cell
    p.send_signal(signal.SIGTERM); p.wait(timeout=120)
    assert p.returncode != 0 and list((tmp_path / 'runs').iterdir()) == []
