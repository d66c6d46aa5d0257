"""Sweeps past one process: `--jobs 2` local workers (students after their teacher, results bitwise equal to the sequential
executor's), submitit's local executor (a failure recorded, then resubmitted while finished runs are skipped), and a driver
killed with SIGKILL mid-sweep then re-run (nothing lost, nothing trained twice). Tiny settings: 32 px, one batch per epoch."""
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dctkd.data.toy import make_toy_scenes
from dctkd.runs import is_complete
from dctkd.sweep import _alive, run_sweep

TINY = dict(image_size=32, epochs=1, max_batches=1, batch_size=8, workers=0, lr_step=1)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp('toy') / 'toy-scenes'
    make_toy_scenes(root, layout='mit67', n_classes=3, n_per_class=8, size=36, seed=0, progress=False)
    return root


def _plan(path, root, runs, **over):
    tiny = ', '.join(f'{k}: {v}' for k, v in {**TINY, **over}.items())
    path.write_text(f"seeds: [0]\ndefaults: {{dataset: toy, root: {root}, {tiny}}}\nruns:\n" + ''.join(f"  - {r}\n" for r in runs))
    return path


STUDENTS = ['{name: t, arch: resnet18}', '{name: s-dct, arch: resnet18, method: dct, teacher: t, hparams: {stages: [0, 1, 2]}}',
            '{name: s-kd, arch: resnet18, method: kd, teacher: t}']
when = lambda rec, k, w: datetime.datetime.fromisoformat(rec['jobs'][k][w])


def _student_of(folder):
    return torch.load(Path(folder) / 'checkpoints' / 'latest.pt', weights_only=True, map_location='cpu')['student']


def test_jobs2_students_wait_for_teacher_and_equal_sequential_bitwise(toy, tmp_path):
    plan = _plan(tmp_path / 'plan.yaml', toy, STUDENTS)
    n = torch.get_num_threads()
    try: seq = run_sweep(str(plan), tmp_path / 'seq', executor='inprocess', threads=1, log=lambda *a: None)
    finally: torch.set_num_threads(n)
    par = run_sweep(str(plan), tmp_path / 'par', executor='inprocess', jobs=2, threads=1, poll_s=0.1, log=lambda *a: None)
    assert {k: v['status'] for k, v in par['jobs'].items()} == dict.fromkeys(['t/seed0', 's-dct/seed0', 's-kd/seed0'], 'done')
    rec = json.loads((tmp_path / 'par' / 'sweep.json').read_text())
    assert rec == json.loads(json.dumps(par)) and rec['launcher'] == 'local'
    for s in ('s-dct/seed0', 's-kd/seed0'):                     # a student starts only after its teacher finished
        assert when(rec, s, 'started_at') >= when(rec, 't/seed0', 'finished_at')
        assert rec['jobs'][s]['job_id'] != str(os.getpid()) and f'job {s} done' in Path(rec['jobs'][s]['log']).read_text()
    for k in seq['jobs']:                                       # the same networks, bit for bit
        a, b = _student_of(seq['jobs'][k]['run']), _student_of(par['jobs'][k]['run'])
        assert a.keys() == b.keys() and all(torch.equal(a[p], b[p]) for p in a), k
        ma, mb = (Path(r['jobs'][k]['run'], 'metrics.csv').read_text().splitlines() for r in (seq, par))
        col = ma[0].split(',').index('val_top1')
        assert [l.split(',')[col] for l in ma] == [l.split(',')[col] for l in mb]


def test_submitit_local_records_a_failure_and_resubmits_only_it(toy, tmp_path):
    pytest.importorskip('submitit')
    late = tmp_path / 'late-toy'                     # t-bad's dataset (toy scenes in MIT67's layout) appears only before the second sweep
    plan = _plan(tmp_path / 'plan.yaml', toy, STUDENTS[:1] + [f'{{name: t-bad, arch: resnet18, dataset: mit67, root: {late}}}',
                                                               f'{{name: s-bad, arch: resnet18, dataset: mit67, root: {late}, method: dct, teacher: t-bad, hparams: {{stages: [0, 1, 2]}}}}'])
    out = tmp_path / 'sweep'
    st = run_sweep(str(plan), out, executor='submitit', cluster='local', jobs=2, poll_s=0.2, log=lambda *a: None)
    assert {k: v['status'] for k, v in st['jobs'].items()} == {'t/seed0': 'done', 't-bad/seed0': 'failed', 's-bad/seed0': 'skipped'}
    rec = json.loads((out / 'sweep.json').read_text())
    bad = rec['jobs']['t-bad/seed0']
    assert 'Traceback' in bad['error'] and str(late) in bad['error'] and bad['job_id'] and Path(bad['log']).exists()
    assert 'teacher t-bad/seed0' in rec['jobs']['s-bad/seed0']['error']
    done = Path(st['jobs']['t/seed0']['run'], 'summary.json').stat().st_mtime_ns
    shutil.copytree(toy, late)
    log = []
    st2 = run_sweep(str(plan), out, executor='submitit', cluster='local', jobs=2, poll_s=0.2, log=log.append)
    assert all(v['status'] == 'done' for v in st2['jobs'].values())
    assert 't/seed0: done, skipped' in log and Path(st2['jobs']['t/seed0']['run'], 'summary.json').stat().st_mtime_ns == done
    rec = json.loads((out / 'sweep.json').read_text())
    assert rec['jobs']['t-bad/seed0']['job_id'] != bad['job_id'] and is_complete(rec['jobs']['s-bad/seed0']['run'])
    assert when(rec, 's-bad/seed0', 'started_at') >= when(rec, 't-bad/seed0', 'finished_at')     # a student after its teacher


def test_killed_driver_rerun_loses_and_duplicates_nothing(toy, tmp_path):
    plan = _plan(tmp_path / 'plan.yaml', toy, STUDENTS[:2], epochs=4, lr_step=2)
    out = tmp_path / 'sweep'
    cmd = [sys.executable, '-m', 'dctkd.sweep', str(plan), '--out', str(out), '--executor', 'inprocess', '--jobs', '2', '--threads', '1']
    env = {**os.environ, 'MPLBACKEND': 'Agg'}
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    students = [out / 'runs' / 'toy-scenes' / 's-dct-s0']
    t0 = time.time()
    while time.time() - t0 < 240:                                # kill it in the middle of a student: an epoch saved, not finished
        if any((f / 'checkpoints' / 'latest.pt').exists() and not (f / 'summary.json').exists() for f in students): break
        assert driver.poll() is None, 'the driver ended before it could be killed mid-student'
        time.sleep(0.02)
    driver.send_signal(signal.SIGKILL); driver.wait()
    rec = json.loads((out / 'sweep.json').read_text())
    workers = [v['job_id'] for v in rec['jobs'].values() if v['status'] == 'running']
    teacher = Path(rec['jobs']['t/seed0']['run'])
    assert rec['jobs']['t/seed0']['status'] == 'done' and workers
    t_mtime = (teacher / 'summary.json').stat().st_mtime_ns
    for _ in range(100):                                         # the workers die with their driver
        if not any(_alive(p) for p in workers): break
        time.sleep(0.1)
    else: pytest.fail(f'workers {workers} outlived their driver')
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    rec = json.loads((out / 'sweep.json').read_text())
    assert all(v['status'] == 'done' for v in rec['jobs'].values())
    assert (teacher / 'summary.json').stat().st_mtime_ns == t_mtime and 't/seed0: done, skipped' in r.stdout
    folders = sorted(p.name for p in (out / 'runs' / 'toy-scenes').iterdir())
    assert folders == ['s-dct-s0', 't-s0'], folders                                  # no second copy, no staging folder left
    for v in rec['jobs'].values():
        lines = Path(v['run'], 'metrics.csv').read_text().splitlines()
        epochs = [int(float(l.split(',')[lines[0].split(',').index('epoch')])) for l in lines[1:]]
        assert epochs == [1, 2, 3, 4], (v['run'], epochs)                            # every epoch once


def test_a_ddp_job_is_one_option_away(toy, tmp_path, capfd):
    "gpus_per_job=2 trains each run under torchrun: two ranks (gloo on CPU) of one run, one run folder, complete."
    plan = _plan(tmp_path / 'plan.yaml', toy, STUDENTS[:1], max_batches=2)
    st = run_sweep(str(plan), tmp_path / 'sweep', executor='inprocess', gpus_per_job=2, log=lambda *a: None)
    assert st['jobs']['t/seed0']['status'] == 'done' and is_complete(st['jobs']['t/seed0']['run'])
    out = capfd.readouterr()
    ranks = {l.split('(pid ')[1].split(',')[0] for l in (out.out + out.err).splitlines() if 'job t/seed0 ->' in l}
    assert len(ranks) == 2 and str(os.getpid()) not in ranks, out.out[-2000:]
    assert sorted(p.name for p in (tmp_path / 'sweep' / 'runs' / 'toy-scenes').iterdir()) == ['t-s0']
