"""The install: a light core, extras from settings.ini, tools that name their missing extra, and a sync check that
saved outputs in experiment notebooks cannot break."""
import json
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path
from unittest.mock import patch

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def setup_kwargs(folder):
    "The keyword arguments setup.py in `folder` passes to setuptools.setup (nothing is built or installed)."
    with patch('setuptools.setup') as setup, patch.object(sys, 'argv', ['setup.py', '--name']):
        runpy.run_path(str(folder / 'setup.py'))
    return setup.call_args.kwargs


def test_every_extra_line_is_an_extra_and_the_core_is_light(tmp_path):
    shutil.copy(ROOT / 'setup.py', tmp_path)
    ini = (ROOT / 'settings.ini').read_text()
    (tmp_path / 'settings.ini').write_text(ini + 'extra_probe = submitit  tensorboard>=2\n')
    kw = setup_kwargs(tmp_path)
    extras, core = kw['extras_require'], kw['install_requires']
    assert extras['probe'] == ['submitit', 'tensorboard>=2']                      # a new line is a new extra
    lines = [l.split('=', 1) for l in ini.splitlines() if l.startswith('extra_')]
    for k, v in lines: assert extras[k.strip()[len('extra_'):]] == v.split()
    assert {'dev', 'docs', 'lab', 'all'} <= set(extras)
    assert set(extras['all']) == {r for name, reqs in extras.items() if name != 'all' for r in reqs}
    names = {r.split('>')[0].split('=')[0].split('<')[0] for r in core}
    assert {'torch', 'torchvision', 'matplotlib', 'ipywidgets', 'papermill', 'ipykernel'} <= names
    assert not names & {'jupyterlab', 'nbdev', 'execnb', 'nbconvert', 'pytest', 'scipy'}   # those are extras
    assert 'jupyterlab' in extras['lab'] and 'nbdev==2.4.14' in extras['docs']


HIDE_NBDEV = "import sys; sys.modules['nbdev'] = None; sys.argv = ['{cmd}']; from dctkd.tools.{mod} import {fn}; {fn}()"


@pytest.mark.parametrize('cmd,mod,fn', [('dctkd_readme', 'readme', 'readme_cli'), ('dctkd_site', 'site', 'site_cli')])
def test_tools_without_nbdev_name_the_extra(tmp_path, cmd, mod, fn):
    r = subprocess.run([sys.executable, '-c', HIDE_NBDEV.format(cmd=cmd, mod=mod, fn=fn)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    assert 'Traceback' not in r.stderr and 'ModuleNotFoundError' not in r.stderr, r.stderr
    assert f"{cmd} needs nbdev" in r.stderr and "pip install 'dctkd[docs]'" in r.stderr, r.stderr


def lab_save(nb_path):
    "Give an experiment notebook what running it in JupyterLab and saving leaves: counts, outputs, metadata."
    nb = json.loads(nb_path.read_text())
    for i, c in enumerate(c for c in nb['cells'] if c['cell_type'] == 'code'):
        c['execution_count'] = i + 1
        c['metadata']['execution'] = {'iopub.status.busy': '2026-12-01T10:00:00.000000Z'}
        c['outputs'] = [{'output_type': 'execute_result', 'execution_count': i + 1, 'metadata': {},
                         'data': {'text/plain': [f'{i}'], 'image/png': 'iVBORw0KGgo='}}]
    nb['metadata']['language_info'] = {'name': 'python', 'version': '3.11.2'}
    nb['metadata']['widgets'] = {'application/vnd.jupyter.widget-state+json': {'state': {}, 'version_major': 2}}
    nb_path.write_text(json.dumps(nb, indent=2))


@pytest.mark.skipif(not (ROOT / '.git').exists() or shutil.which('git') is None, reason='needs a git checkout')
def test_saved_experiment_outputs_keep_the_sync_check_green(tmp_path):
    files = subprocess.run(['git', 'ls-files', '-co', '--exclude-standard'], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    repo = tmp_path / 'repo'
    for f in files:                                   # the working tree as it is, committed in a scratch repository
        if (ROOT / f).is_file():
            (repo / f).parent.mkdir(parents=True, exist_ok=True); shutil.copy2(ROOT / f, repo / f)
    git = lambda *a: subprocess.run(['git', '-c', 'user.name=t', '-c', 'user.email=t@t', *a], cwd=repo,
                                    check=True, capture_output=True)
    git('init', '-q'); git('add', '-A'); git('commit', '-qm', 'snapshot')
    venv = BIN.parent
    sync = lambda: subprocess.run(['make', '-s', 'sync', f'VENV={venv}', '-o', f'{venv}/.dctkd-installed'], cwd=repo,
                                  capture_output=True, text=True, timeout=300, env={**os.environ, 'PATH': f'{BIN}:{os.environ["PATH"]}'})
    explore = repo / 'nbs' / 'experiments' / 'explore.ipynb'
    lab_save(explore)
    r = sync()
    assert r.returncode == 0 and 'in sync' in r.stdout, r.stdout + r.stderr
    assert any(c.get('outputs') for c in json.loads(explore.read_text())['cells'])   # the person's outputs are kept
    lib = repo / 'nbs' / '00_dct.ipynb'                                               # a library notebook still counts
    lab_save(lib)
    r = sync()
    assert r.returncode != 0 and 'out of sync' in r.stdout and '00_dct.ipynb' in r.stdout, r.stdout + r.stderr
