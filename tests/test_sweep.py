"""Sweeps and reports: the train / evaluate / report notebooks through papermill, a resumable sweep with a failing run,
aggregation on known numbers, and parameter checks. Tiny settings (32 px, 1 epoch, 1 batch) so it runs in about a minute."""
import json
import math
from pathlib import Path

import pytest

from dctkd import distillers
from dctkd.data.toy import make_toy_scenes
from dctkd.runs import is_complete
from dctkd.sweep import PlanError, aggregate, load_plan, mean_std, report_csv, report_markdown, run_sweep, sweep_cli, write_report

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


def test_sweep_records_failures_and_resumes(toy, tmp_path, kernel_env, monkeypatch):
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
    assert sweep_cli([str(plan), '--out', str(out), '--dry-run']) == 0


def _fake(root, name, arch, method, teacher, best, last, seed):
    f = Path(root) / name; f.mkdir(parents=True)
    (f / 'config.json').write_text(json.dumps({'arch': arch, 'method': method, 'teacher': str(teacher) if teacher else '',
                                               'dataset': 'mit67', 'val_split': 'val', 'seed': seed}))
    (f / 'summary.json').write_text(json.dumps({'epochs': 70, 'best': {'val_top1': best}, 'last': {'val_top1': last}}))
    return f


def test_aggregate_mean_and_sample_std(tmp_path):
    t = {s: _fake(tmp_path, f't50-{s}', 'resnet50', 'none', None, 77 + s, 76 + s, s) for s in range(3)}
    for s, (b, l) in enumerate([(60, 58), (62, 59), (67, 63)]):
        _fake(tmp_path, f'dct-{s}', 'resnet18', 'dct', t[s], b, l, s)
        _fake(tmp_path, f'mbv2-{s}', 'mobilenet_v2', 'kd', t[s], 50, 40 + 2 * s, s)
        _fake(tmp_path, f'r18-{s}', 'resnet18', 'none', None, 49, 48, s)
    agg = aggregate(tmp_path, expected={'dct': {'T R50 → S R18': 56.32}})
    assert agg['columns'] == ['T R50 → S R18', 'T R50 → S MobileNetV2']
    assert agg['rows'] == ['teacher', 'none', 'dct', 'kd']
    m, sd, n = agg['cells'][('dct', 'T R50 → S R18')]['best']
    assert n == 3 and m == pytest.approx(63.0) and sd == pytest.approx(math.sqrt(13.0))   # sample std, ddof=1: (9+1+16)/2
    m, sd, n = agg['cells'][('dct', 'T R50 → S R18')]['last']
    assert m == pytest.approx(60.0) and sd == pytest.approx(math.sqrt(7.0))                 # (4+1+9)/2
    assert agg['cells'][('teacher', 'T R50 → S MobileNetV2')]['best'][:2] == pytest.approx((78.0, 1.0))
    assert agg['cells'][('none', 'T R50 → S MobileNetV2')]['best'][2] == 0                # no MobileNetV2 baseline
    md = report_markdown(agg)
    assert '| DCT (Ours) | 63.00 ± 3.61 (paper 56.32) | — |' in md and '**last epoch**' in md and 'ddof=1' in md
    assert 'beyond the paper' not in md
    _fake(tmp_path, 'rev-0', 'resnet18', 'reviewkd', t[0], 61, 60, 0)        # not one of the paper's methods: a table apart
    md = report_markdown(aggregate(tmp_path), which=('last',))
    paper, beyond = md.split('**beyond the paper, last epoch**')
    assert '| DCT (Ours) |' in paper and '| ReviewKD |' not in paper and '| ReviewKD | 60.00 | — |' in beyond
    assert 'dct,"DCT (Ours)","T R50 → S R18",63.0000,3.6056,3,60.0000,2.6458,3,56.32' in report_csv(agg)
    assert mean_std([5.0])[2] == 1 and math.isnan(mean_std([5.0])[1])
    paths = write_report(agg, tmp_path / 'rep')
    assert all(p.exists() for p in paths.values())


def _plan_error(tmp_path, text):
    p = tmp_path / 'p.yaml'; p.write_text(text)
    with pytest.raises(PlanError) as e: load_plan(p)
    return str(e.value)


def test_plan_validation(tmp_path):
    head = "seeds: [0]\ndefaults: {dataset: toy}\nruns:\n  - {name: t, arch: resnet34}\n"
    assert "runs[1] ('s'): unknown method 'dtc'" in _plan_error(tmp_path, head + "  - {name: s, method: dtc, teacher: t}\n")
    assert "teacher 'nope' is not the name of a run listed above" in _plan_error(tmp_path, head + "  - {name: s, method: dct, teacher: nope}\n")
    assert "method 'dct' needs a teacher" in _plan_error(tmp_path, head + "  - {name: s, method: dct}\n")
    assert "unknown key(s) ['lr_rate']" in _plan_error(tmp_path, head + "  - {name: s, lr_rate: 0.1}\n")
    assert "epochs" in _plan_error(tmp_path, head + "  - {name: s, epochs: ten}\n")
    assert "duplicate name 't'" in _plan_error(tmp_path, head + "  - {name: t}\n")
    assert "seeds" in _plan_error(tmp_path, "seeds: zero\n" + head[11:])


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
