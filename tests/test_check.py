"""The outer layer end to end, through the installed commands: every mistake is a usage error before anything trains
(no traceback, nothing created), run folders travel between working directories, files follow the umask."""
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

from dctkd.cli import evaluate_cli, train_cli
from dctkd.data.toy import make_toy_scenes
from dctkd.runs import read_checkpoint
from dctkd.train import fit

BIN = Path(sys.executable).parent
TINY = ['image_size=32', 'resize=36', 'batch_size=8', 'epochs=1', 'max_batches=1', 'workers=0', 'progress=false']


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    return make_toy_scenes(tmp_path_factory.mktemp('toy') / 'toy', 'mit67', n_classes=3, n_per_class=8, size=36, progress=False)


@pytest.fixture(scope='module')
def teacher(toy, tmp_path_factory):
    return fit(**{k: v for k, v in (a.split('=') for a in TINY)}, root=str(toy), out=str(tmp_path_factory.mktemp('t')), name='teacher')


def _cli(cmd, *args, cwd):
    "Run an installed console script in `cwd`: (returncode, stdout, stderr)."
    r = subprocess.run([str(BIN / cmd), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300,
                       env={**os.environ, 'OMP_NUM_THREADS': '1'})
    return r.returncode, r.stdout, r.stderr


def _train_cli_here(argv, cwd, monkeypatch):
    "`dctkd_train`'s entry point called in this process from `cwd`: (exit code, stderr); any traceback is caught in stderr."
    monkeypatch.chdir(cwd)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try: code = train_cli(argv)
        except SystemExit as e: code = e.code
        except Exception: traceback.print_exc(); code = 'traceback'
    return code, err.getvalue()


def _tree(folder):
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob('*'))


@pytest.mark.parametrize('case', ['mistyped toy root', 'missing teacher', 'dct with a 1x1 stage', 'empty training list', 'corrupt teacher'])
def test_dry_run_refuses_each_mistake_naming_it_and_creates_nothing(case, toy, teacher, tmp_path, monkeypatch):
    empty = tmp_path / 'empty-list'
    if case == 'empty training list':
        shutil.copytree(toy, empty); (empty / 'TrainImages.txt').write_text('')
    if case == 'corrupt teacher': (tmp_path / 'noise.pt').write_bytes(os.urandom(5000))
    args, culprit = {
        'mistyped toy root': (['--preset', 'cpu-toy', 'root=data/toy-scene'], "root='data/toy-scene'"),
        'missing teacher': ([f'root={toy}', 'method=dct', 'teacher=runs/no-teacher', 'image_size=64'], "teacher='runs/no-teacher'"),
        'dct with a 1x1 stage': ([f'root={toy}', 'method=dct', f'teacher={teacher}', 'image_size=32'], 'stage 3 (layer4) is 1×1'),
        'empty training list': ([f'root={empty}'], f"{empty / 'TrainImages.txt'} lists no images"),
        'corrupt teacher': ([f'root={toy}', 'method=kd', 'teacher=noise.pt'], 'noise.pt is corrupt'),
    }[case]
    before = _tree(tmp_path)
    for dry in (['--dry-run'], []):                                          # the dry run, and a real start: the same refusal
        if case == 'mistyped toy root': code, out, err = _cli('dctkd_train', *args, *dry, 'out=runs', cwd=tmp_path)   # the installed command
        else: code, err = _train_cli_here([*args, *dry, 'out=runs'], tmp_path, monkeypatch)                          # its entry point, faster
        assert code == 2 and culprit in err and 'Traceback' not in err, (case, code, err[-2000:])
        assert _tree(tmp_path) == before, case                                # nothing trained, generated or created


def test_training_list_emptied_by_skip_bad_is_an_error(toy, tmp_path):
    bad = tmp_path / 'bad'; shutil.copytree(toy, bad)
    for f in (bad / 'Images').rglob('*.jpg'): f.write_bytes(b'not a jpeg')
    code, out, err = _cli('dctkd_train', f'root={bad}', 'skip_bad=true', *TINY, 'out=runs', cwd=tmp_path)
    assert code != 0 and 'skip_bad skipped every one' in err and 'Traceback' not in err, err[-2000:]
    assert not (tmp_path / 'runs').exists() or not any((tmp_path / 'runs').rglob('summary.json'))


def test_a_run_made_with_relative_paths_travels(toy, tmp_path, monkeypatch):
    proj = tmp_path / 'proj'; (proj / 'data').mkdir(parents=True); shutil.copytree(toy, proj / 'data' / 'toy')
    monkeypatch.chdir(proj)                                                  # trained from the project, with relative paths
    kw = dict((a.split('=') for a in TINY), root='data/toy', out='runs')
    t = fit(**kw, name='teacher')
    s = fit(**kw, name='student', method='kd', teacher=str(t))
    assert not t.is_absolute() and json.loads((proj / s / 'config.json').read_text())['teacher'] == '../teacher'
    elsewhere = tmp_path / 'elsewhere'; elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)                                             # evaluated from another folder
    assert evaluate_cli([str(proj / s), '--which', 'best']) == 0
    assert read_checkpoint(proj / s)['config']['root'] == str(proj / 'data' / 'toy')
    moved = tmp_path / 'moved'; os.rename(proj, moved)                       # the whole project moved: still whole
    assert evaluate_cli([str(moved / s), '--which', 'last', '--teacher', str(moved / t)]) == 0
    again = fit(resume=str(moved / s), epochs=2)                             # resumed, its teacher found through the run folder
    assert again == moved / s and read_checkpoint(again, which='latest')['epoch'] == 1
    fit(**{**kw, 'root': str(moved / 'data' / 'toy'), 'out': str(elsewhere)}, method='kd', teacher=str(moved / t))   # used as a teacher


def test_files_follow_the_umask_and_a_corrupt_best_does_not_block_resume(toy, tmp_path):
    old = os.umask(0o022)
    try: run = fit(**dict(a.split('=') for a in TINY), root=str(toy), out=str(tmp_path), name='r')
    finally: os.umask(old)
    files = [p for p in run.rglob('*') if p.is_file() and p.name != '.lock']
    assert files and all(p.stat().st_mode & 0o044 == 0o044 for p in files), [(p.name, oct(p.stat().st_mode)) for p in files]
    assert all(p.stat().st_mode & 0o055 == 0o055 for p in [run, *[p for p in run.rglob('*') if p.is_dir()]])
    best = run / 'checkpoints' / 'best.pt'
    best.unlink(); best.write_bytes(os.urandom(3000))                       # random bytes: corrupt (a new file: latest.pt, its link, intact)
    code, out, err = _cli('dctkd_evaluate', run / 'checkpoints' / 'best.pt', cwd=tmp_path)
    assert code == 2 and 'is corrupt' in err and 'trust=True' not in err and 'Traceback' not in err, err
    assert fit(resume=str(run), epochs=2) == run
    assert read_checkpoint(run, which='best')['epoch'] == 1                  # rewritten at the next best epoch
