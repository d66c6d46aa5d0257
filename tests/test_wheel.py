"""The installed package on its own: build the wheel, install it into a fresh virtual environment outside the repository (torch
and the other dependencies reused from this environment through a .pth file), and run a shipped plan by name with `dctkd_sweep`
there — the experiment notebooks and plans are package data, and the in-process executor needs no notebook."""
import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from dctkd.data.toy import make_toy_scenes

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_installs_and_runs_a_shipped_plan(tmp_path):
    src, whl = tmp_path / 'src', tmp_path / 'wheel'                # a clean copy: the build leaves nothing in the checkout
    junk = shutil.ignore_patterns('__pycache__', '.ipynb_checkpoints')
    shutil.copytree(ROOT / 'dctkd', src / 'dctkd', ignore=junk)
    shutil.copytree(ROOT / 'nbs' / 'experiments', src / 'nbs' / 'experiments', ignore=junk)
    for f in ('setup.py', 'settings.ini', 'README.md'): shutil.copy(ROOT / f, src / f)
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '--no-build-isolation', '-w', str(whl), str(src)],
                   check=True, capture_output=True, cwd=tmp_path)
    wheel = next(whl.glob('dctkd-*.whl'))
    venv = tmp_path / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], check=True)
    py = venv / 'bin' / 'python'
    site = Path(subprocess.run([py, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'], capture_output=True,
                               text=True, check=True).stdout.strip())
    (site / 'reuse_deps.pth').write_text(sysconfig.get_paths()['purelib'] + '\n')   # torch & co.; not the repo's dctkd (an editable finder)
    subprocess.run([sys.executable, '-m', 'pip', '--python', str(py), 'install', '-q', '--no-deps', '--no-index', str(wheel)],
                   check=True, capture_output=True)
    work = tmp_path / 'work'                                   # outside the repository: nothing to find there
    make_toy_scenes(work / 'data' / 'toy-scenes', layout='mit67', n_classes=3, n_per_class=8, size=36, seed=0, progress=False)
    r = subprocess.run([venv / 'bin' / 'dctkd_sweep', 'toy-tiny', '--executor', 'inprocess', '--out', 'sweep'],
                       capture_output=True, text=True, cwd=work, env={'PATH': '/usr/bin:/bin', 'MPLBACKEND': 'Agg', 'HOME': str(tmp_path)})
    assert r.returncode == 0, r.stdout + r.stderr
    rec = json.loads((work / 'sweep' / 'sweep.json').read_text())
    assert rec['plan'] == str(site / 'dctkd' / 'experiments' / 'plans' / 'toy-tiny.yaml')       # the wheel's package data
    assert {k: v['status'] for k, v in rec['jobs'].items()} == {'teacher/seed0': 'done', 'dct/seed0': 'done'}
    assert (work / 'sweep' / 'runs' / 'toy-scenes' / 'dct-s0' / 'summary.json').exists()
