"""The experiment notebooks' papermill parameters: typed and parsed without warnings, listed completely by
`papermill --help-notebook`, and a misspelled parameter an error before anything runs; `evaluate.ipynb` without
a run fails, and with one stores numbers in its JSON."""
import ast
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXP = ROOT / 'nbs' / 'experiments'
NOTEBOOKS = ['train.ipynb', 'evaluate.ipynb', 'quickstart.ipynb', 'explore.ipynb', 'report.ipynb']
pm = pytest.importorskip('papermill')


def _parameters_cell(nb) -> tuple:
    "(index, source) of the cell tagged `parameters`."
    cells = json.loads((EXP / nb).read_text())['cells']
    (i,) = [i for i, c in enumerate(cells) if 'parameters' in c.get('metadata', {}).get('tags', [])]
    return i, ''.join(cells[i]['source'])


def _declared(src) -> dict:
    "name -> annotation text of the parameters cell, read by Python's own parser (the oracle for papermill's regexes)."
    return {n.target.id: ast.unparse(n.annotation) for n in ast.parse(src).body if isinstance(n, ast.AnnAssign)}


def test_every_experiment_notebook_is_covered():
    assert sorted(p.name for p in EXP.glob('*.ipynb')) == sorted(NOTEBOOKS)


@pytest.mark.parametrize('nb', NOTEBOOKS)
def test_parameters_are_typed_and_parse_without_warnings(nb, caplog):
    _, src = _parameters_cell(nb)
    declared = _declared(src)
    tree = ast.parse(src).body
    assert declared and len(declared) == len(tree), f"{nb}: every statement of the parameters cell is `name: type = value`"
    with caplog.at_level(logging.WARNING, logger='papermill'):
        params = pm.inspect_notebook(str(EXP / nb))
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING], nb      # no "Unable to parse line"
    assert list(params) == list(declared)                                                       # every parameter, in order
    for name, p in params.items():
        assert p['inferred_type_name'] == declared[name], (nb, name, p)                         # not "None" / "Unknown type"
        assert p['help'], (nb, name)                                                            # each one says what it is


def test_help_notebook_lists_every_parameter_with_its_type():
    "What a user types: `papermill --help-notebook`, here for the notebook with the most parameters."
    r = subprocess.run([sys.executable, '-m', 'papermill', '--help-notebook', str(EXP / 'quickstart.ipynb')],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    assert 'Unable to parse' not in out and 'Unknown type' not in out
    for name, typ in _declared(_parameters_cell('quickstart.ipynb')[1]).items():
        assert f"{name}: {typ} (default" in out, (name, out)


@pytest.mark.parametrize('nb', NOTEBOOKS)
def test_a_misspelled_parameter_stops_the_notebook_before_anything_runs(nb, tmp_path, monkeypatch):
    monkeypatch.delenv('MPLBACKEND', raising=False)
    out = tmp_path / nb
    with pytest.raises(pm.PapermillExecutionError) as e:
        pm.execute_notebook(str(EXP / nb), str(out), parameters={'epoch': 3}, kernel_name='python3', cwd=str(tmp_path),
                            progress_bar=False)
    assert "unknown parameter(s) ['epoch']: this notebook takes" in str(e.value)
    cells = json.loads(out.read_text())['cells']
    failed = [i for i, c in enumerate(cells) if any(o.get('output_type') == 'error' for o in c.get('outputs', []))]
    ran = [i for i, c in enumerate(cells) if c['cell_type'] == 'code' and c.get('execution_count')]
    assert len(failed) == 1 and ran[-1] == failed[0]                                            # nothing after the check ran
    assert 'check_params(globals())' in ''.join(cells[failed[0]]['source'])
    assert [p.name for p in tmp_path.iterdir()] == [nb]                                            # no data, no runs


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    from dctkd.config import make_config
    from dctkd.data.toy import make_toy_scenes
    from dctkd.train import fit
    tmp = tmp_path_factory.mktemp('eval')
    make_toy_scenes(tmp / 'toy', layout='mit67', n_classes=3, n_per_class=8, size=36, seed=0, progress=False)
    return fit(make_config(dataset='toy', root=str(tmp / 'toy'), out=str(tmp / 'runs'), image_size=32, epochs=1, max_batches=1,
                           batch_size=8, workers=0, progress=False))


def test_evaluate_notebook_without_a_run_fails_and_with_one_stores_numbers(tiny_run, tmp_path, monkeypatch):
    monkeypatch.delenv('MPLBACKEND', raising=False)
    run = lambda **p: pm.execute_notebook(str(EXP / 'evaluate.ipynb'), str(tmp_path / 'e.ipynb'), parameters=p,
                                          kernel_name='python3', cwd=str(tmp_path), progress_bar=False)
    with pytest.raises(pm.PapermillExecutionError, match='no run to evaluate: give one, e.g. papermill'):
        run()
    run(run=str(tiny_run), which='last', out=str(tmp_path / 'out'))
    ev = json.loads((tmp_path / 'out' / 'evaluation.json').read_text())['last']
    assert isinstance(ev['top1'], float) and isinstance(ev['n'], int) and isinstance(ev['per_class'][0], float)
    assert all(isinstance(v, int) for row in ev['confusion'] for v in row)
    assert sum(map(sum, ev['confusion'])) == ev['n'] and ev['epoch'] == 1
    assert 'tensor(' not in (tmp_path / 'out' / 'evaluation.json').read_text()
    (saved,) = Path(tiny_run).glob('eval-val-last-*.json')                                        # the run folder's copy too
    assert json.loads(saved.read_text())['confusion'] == ev['confusion']
