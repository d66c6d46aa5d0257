"""The census of bad inputs: every console script, given each mistake a user can make, stops with a message that names
the culprit: a non-zero exit, no traceback, and for a usage error (exit 2) nothing created. A fault only training meets
(an unreadable image in a batch) exits 1 and leaves its run folder, as a run stopped by its data does. One case per line; a new mistake found
is a new line. Run in this process (the scripts' entry points take argv) for speed."""
import contextlib
import io
import os
import shutil
import sys
import traceback
from pathlib import Path

import pytest
import torch

from dctkd.bench import bench_check_cli, bench_cli
from dctkd.cli import evaluate_cli, train_cli
from dctkd.data.download import download_cli
from dctkd.data.toy import make_toy_scenes
from dctkd.doctor import doctor_cli
from dctkd.figures import extract_cli
from dctkd.sweep import sweep_cli
from dctkd.tables import report_cli
from dctkd.train import fit

CLIS = dict(train=train_cli, evaluate=evaluate_cli, sweep=sweep_cli, report=report_cli, extract=extract_cli,
            download=download_cli, bench=bench_cli, bench_check=bench_check_cli, doctor=doctor_cli)
TINY = 'image_size=32 resize=36 batch_size=8 epochs=1 max_batches=1 workers=0 progress=false root={toy} out={W}/runs'.split()


class _Evil:
    def __reduce__(self): return (print, ('unpickled: code ran',))


@pytest.fixture(scope='module')
def W(tmp_path_factory):
    "A folder with the fixtures every case may name: toy data sets, a teacher and a student run, broken files and plans."
    W = tmp_path_factory.mktemp('census')
    toy = make_toy_scenes(W / 'toy', 'mit67', n_classes=3, n_per_class=8, size=36, progress=False)
    make_toy_scenes(W / 'toy4', 'mit67', n_classes=4, n_per_class=4, size=36, progress=False)
    kw = dict(a.replace('{toy}', str(toy)).replace('{W}', str(W)).split('=') for a in TINY)
    with contextlib.redirect_stdout(io.StringIO()):
        fit(**kw, name='teacher'); fit(**{**kw, 'epochs': '2'}, name='student')
    (W / 'random.pt').write_bytes(os.urandom(4096)); (W / 'text.pt').write_text('hello'); (W / 'empty.pt').write_bytes(b'')
    torch.save({'x': _Evil()}, W / 'unsafe.pt')
    (W / 'notrun').mkdir()
    nockpt = W / 'nockpt'; shutil.copytree(W / 'runs/toy-scenes/student', nockpt); shutil.rmtree(nockpt / 'checkpoints')
    empty = W / 'emptylist'; shutil.copytree(toy, empty); (empty / 'TrainImages.txt').write_text('')
    bad = W / 'allbad'; shutil.copytree(toy, bad)
    for p in (bad / 'Images').rglob('*.jpg'): p.write_bytes(b'not a jpeg')
    notest = W / 'notest'; shutil.copytree(toy, notest); (notest / 'TestImages.txt').unlink()
    run = f'{{root: {toy}, image_size: 32, resize: 36, epochs: 1, max_batches: 1, workers: 0}}'
    for name, text in {
        'notyaml': 'runs: [\n  {name: a', 'empty': '', 'listtop': '- a\n- b\n', 'rnl': 'name: x\nruns: {a: 1}\n', 'nr': 'name: x\n',
        'dt': f'name: x\ndefaults: {{root: {toy}, max_batchs: 2}}\nruns: [{{name: a}}]\n',
        'et': f'name: x\ndefaults: {run}\nruns: [{{name: a, epochz: 2}}]\n', 'sb': f'name: x\nseeds: abc\ndefaults: {run}\nruns: [{{name: a}}]\n',
        'sn': f'name: x\nseeds: [-1]\ndefaults: {run}\nruns: [{{name: a}}]\n', 'dup': f'name: x\ndefaults: {run}\nruns: [{{name: a}}, {{name: a}}]\n',
        'tr': f'name: x\ndefaults: {run}\nruns: [{{name: a, method: kd, teacher: nobody}}]\n',
        'mb': f'name: x\ndefaults: {run}\nruns: [{{name: a, method: dtc}}]\n', 'spb': f'name: x\nsplit: foo\ndefaults: {run}\nruns: [{{name: a}}]\n',
        'ns': f'name: ../x\ndefaults: {run}\nruns: [{{name: a}}]\n', 'rs': f'name: x\ndefaults: {run}\nruns: [{{name: ../a}}]\n',
        'hb': f'name: x\ndefaults: {run}\nruns: [{{name: t}}, {{name: a, method: dct, teacher: t, hparams: 3}}]\n',
        'hk': f'name: x\ndefaults: {run}\nruns: [{{name: t}}, {{name: a, method: kd, teacher: t, hparams: {{bogus: 1}}}}]\n',
        'enm': f'name: x\ndefaults: {run}\nruns: [a, b]\n', 'vb': f'name: x\ndefaults: {run}\nruns: [{{name: a, epochs: two}}]\n',
        'ut': 'name: x\nrunz: []\n', 'ok': f'name: x\ndefaults: {run}\nruns: [{{name: a}}]\n',
    }.items(): (W / f'{name}.yaml').write_text(text)
    (W / 'sweepfolder').mkdir(); (W / 'sweepfolder' / 'sweep.json').write_text('{not json')
    return W


S = '{W}/runs/toy-scenes/student'
T = '{W}/runs/toy-scenes/teacher'
SW = ['--executor', 'inprocess', '--out', '{W}/sweeps']
CASES = [   # (script, arguments, what the message must name)
    # dctkd_train: keys and values
    ('train', ['epochz=2'], 'epochz'), ('train', ['epochs=two'], 'epochs'), ('train', ['epochs=-1'], 'epochs'), ('train', ['epochs=0'], 'epochs'),
    ('train', ['lr=abc'], 'lr'), ('train', ['lr=-0.1'], 'lr'), ('train', ['batch_size=0'], 'batch_size'), ('train', ['batch_size=1.5'], 'batch_size'),
    ('train', ['image_size=0'], 'image_size'), ('train', ['--preset', 'papr'], 'papr'), ('train', ['method=dtc'], 'dtc'),
    ('train', ['method=dct'], 'needs teacher'), ('train', ['norm=foo'], 'foo'), ('train', ['amp=fp8'], 'amp'),
    ('train', ['channels_last=maybe'], 'channels_last'), ('train', ['hparams=notjson'], 'hparams'), ('train', ['recipe=foo'], 'recipe'),
    ('train', ['train_per_class=-1'], 'train_per_class'), ('train', ['val_every=0'], 'val_every'), ('train', ['val_every=abc'], 'val_every'),
    ('train', ['log_gnorm=-1'], 'log_gnorm'), ('train', ['seed=-1'], 'seed'), ('train', ['workers=-2'], 'workers'), ('train', ['momentum=2'], 'momentum'),
    ('train', ['weight_decay=-1'], 'weight_decay'), ('train', ['lr_milestones=abc'], 'lr_milestones'), ('train', ['lr_gamma=0'], 'lr_gamma'),
    ('train', ['lr_step=-1'], 'lr_step'), ('train', ['max_batches=-1'], 'max_batches'), ('train', ['T=0'], 'T=0'), ('train', ['resize=-5'], 'resize'),
    ('train', ['val_split=foo'], 'val_split'), ('train', ['tensorboard=maybe'], 'tensorboard'), ('train', ['sync_bn=foo'], 'sync_bn'),
    ('train', ['compile=maybe'], 'compile'), ('train', ['cache=maybe'], 'cache'), ('train', ['progress=maybe'], 'progress'),
    ('train', ['epochs'], "override 'epochs'"), ('train', ['=3'], "override '=3'"), ('train', ['--bogus'], '--bogus'),
    ('train', ['name=../x'], 'name'), ('train', ['name=a/b'], 'name'), ('train', ['pretrained=foo'], 'pretrained'),
    # dctkd_train: teacher, architecture, taps, device
    ('train', ['method=dct', 'teacher={W}/missing'], 'missing'), ('train', ['method=dct', 'teacher={W}/random.pt'], 'random.pt is corrupt'),
    ('train', ['method=dct', 'teacher={W}/text.pt'], 'text.pt is corrupt'), ('train', ['method=dct', 'teacher={W}/empty.pt'], 'empty.pt is corrupt'),
    ('train', ['method=dct', 'teacher={W}/unsafe.pt'], 'refused to load'), ('train', ['method=dct', 'teacher={W}/notrun'], 'notrun'),
    ('train', ['teacher=' + T], 'uses no teacher'), ('train', ['root={W}/toy4', 'method=kd', 'teacher=' + T], '3 classes'),
    ('train', ['arch=resnet1'], 'resnet1'), ('train', ['arch=densenet121', 'method=dct', 'teacher=' + T], 'taps'),
    ('train', ['taps=["nope"]'], 'nope'), ('train', ['taps=notalist'], 'notalist'), ('train', ['arch=resnet20', 'image_size=64', 'resize=0'], '32'),
    ('train', ['method=dct', 'teacher=' + T], '1×1'), ('train', ['image_size=2', 'resize=0', 'method=dct', 'teacher=' + T], 'image_size=2'),
    ('train', ['image_size=64', 'resize=0', 'method=dct', 'teacher=' + T, 'hparams={"bogus": 1}'], 'bogus'),
    ('train', ['image_size=64', 'resize=0', 'method=crd', 'teacher=' + T, 'hparams={"nce_k": 0}'], 'nce_k=0'),
    ('train', ['image_size=64', 'resize=0', 'method=at', 'teacher=' + T, 'hparams={"variant": "x"}'], 'variant'),
    ('train', ['teacher_cache=true', 'method=kd', 'teacher=' + T], 'teacher_cache'),
    ('train', ['device=cuda'], 'cuda'), ('train', ['device=cuda:7'], 'cuda:7'), ('train', ['device=tpu'], 'tpu'),
    # dctkd_train: data, folders, resume
    ('train', ['dataset=imagenet'], 'imagenet'), ('train', ['dataset=mit67', 'root={W}/nothere'], 'nothere'),
    ('train', ['--preset', 'cpu-toy', 'root=data/toy-scen'], 'toy-scen'), ('train', ['dataset=toy', 'root={W}/nothere'], 'nothere'),
    ('train', ['root={W}/random.pt'], 'random.pt'), ('train', ['out={W}/random.pt'], 'random.pt'), ('train', ['out=/dev/null/x'], '/dev/null'),
    ('train', ['root={W}/emptylist'], 'TrainImages.txt lists no images'), ('train', ['root={W}/allbad', 'skip_bad=true'], 'skip_bad'),
    ('train', ['root={W}/allbad'], 'cannot read image'), ('train', ['root={W}/notest'], 'notest'),
    ('train', ['resume={W}/nothere'], 'nothere'), ('train', ['resume={W}/notrun'], 'notrun'),
    ('train', ['resume=' + S, 'epochs=1'], 'already finished 2 epochs'), ('train', ['resume=' + S, 'arch=resnet34'], 'cannot change arch'),
    # dctkd_evaluate
    ('evaluate', ['{W}/nothere'], 'nothere'), ('evaluate', ['{W}/notrun'], 'notrun'), ('evaluate', ['{W}/random.pt'], 'random.pt is corrupt'),
    ('evaluate', ['{W}/empty.pt'], 'empty.pt is corrupt'), ('evaluate', ['{W}/unsafe.pt'], 'refused to load'), ('evaluate', ['{W}/nockpt'], 'nockpt'),
    ('evaluate', [S, '--split', 'foo'], 'foo'), ('evaluate', [S, '--which', 'foo'], 'foo'), ('evaluate', [S, '--teacher', '{W}/nothere'], 'nothere'),
    ('evaluate', [S, '--teacher', '{W}/random.pt'], 'random.pt is corrupt'), ('evaluate', [S, '--root', '{W}/nothere'], 'nothere'),
    ('evaluate', [S, '--root', '{W}/toy4'], '4'), ('evaluate', [], 'run'),
    # dctkd_sweep: plans
    ('sweep', ['{W}/nope.yaml', *SW], 'nope.yaml'), ('sweep', ['{W}/notyaml.yaml', *SW], 'notyaml.yaml'), ('sweep', ['{W}/empty.yaml', *SW], 'empty.yaml'),
    ('sweep', ['{W}/listtop.yaml', *SW], 'mapping'), ('sweep', ['{W}/rnl.yaml', *SW], "'runs'"), ('sweep', ['{W}/nr.yaml', *SW], "'runs'"),
    ('sweep', ['{W}/dt.yaml', *SW], 'max_batchs'), ('sweep', ['{W}/et.yaml', *SW], 'epochz'), ('sweep', ['{W}/sb.yaml', *SW], 'seeds'),
    ('sweep', ['{W}/sn.yaml', *SW], '[-1]'), ('sweep', ['{W}/dup.yaml', *SW], "duplicate name 'a'"), ('sweep', ['{W}/tr.yaml', *SW], 'nobody'),
    ('sweep', ['{W}/mb.yaml', *SW], 'dtc'), ('sweep', ['{W}/spb.yaml', *SW], 'foo'), ('sweep', ['{W}/ns.yaml', *SW], '../x'),
    ('sweep', ['{W}/rs.yaml', *SW], '../a'), ('sweep', ['{W}/hb.yaml', *SW], 'hparams'), ('sweep', ['{W}/hk.yaml', *SW], 'bogus'),
    ('sweep', ['{W}/enm.yaml', *SW], 'mapping'), ('sweep', ['{W}/vb.yaml', *SW], 'epochs'), ('sweep', ['{W}/ut.yaml', *SW], 'runz'),
    ('sweep', ['noplanname'], 'noplanname'), ('sweep', [], 'give a plan'),
    # dctkd_sweep: options
    ('sweep', ['{W}/ok.yaml', *SW, '--jobs', '0'], 'jobs'), ('sweep', ['{W}/ok.yaml', *SW, '--gpus-per-job', '0'], 'gpus per job'),
    ('sweep', ['{W}/ok.yaml', *SW, '--threads', '-1'], '--threads'), ('sweep', ['{W}/ok.yaml', *SW, '--estimate', 'abc'], '--estimate'),
    ('sweep', ['{W}/ok.yaml', *SW, '--estimate', '1', '--epoch-seconds', 'x'], '--epoch-seconds'),
    ('sweep', ['{W}/ok.yaml', *SW, '--notebook', 'mine.ipynb'], '--notebook'),
    ('sweep', ['{W}/ok.yaml', '--notebook', '{W}/nothere.ipynb', '--out', '{W}/sweeps'], 'nothere.ipynb'),
    ('sweep', ['{W}/ok.yaml', '--executor', 'inprocess', '--out', '{W}/random.pt'], 'random.pt'),
    ('sweep', ['{W}/ok.yaml', '--executor', 'submitit', '--time', 'abc', '--out', '{W}/sweeps'], "'abc'"),
    ('sweep', ['{W}/ok.yaml', '--executor', 'bogus'], 'bogus'),
    # dctkd_report
    ('report', ['{W}/nothere'], 'nothere'), ('report', ['{W}/notrun'], 'notrun'), ('report', ['{W}/sweepfolder'], 'sweepfolder'),
    ('report', ['{W}/runs', '--plan', '{W}/nope.yaml'], 'nope.yaml'), ('report', ['{W}/runs', '--out', '{W}/random.pt'], 'random.pt'),
    # dctkd_extract
    ('extract', ['{W}/nothere'], 'nothere'), ('extract', ['{W}/notrun'], 'notrun'), ('extract', ['{W}/random.pt'], 'random.pt is corrupt'),
    ('extract', [S, '--split', 'foo'], 'foo'), ('extract', [S, '--n', '0'], 'n=0'), ('extract', [S, '--n', '-3'], 'n=-3'),
    ('extract', [S, '--indices', '9999'], '9999'), ('extract', [S, '--device', 'cuda'], 'cuda'), ('extract', [S, '--device', 'tpu'], 'tpu'),
    ('extract', [S, '--root', '{W}/nothere'], 'nothere'), ('extract', [S, '--batch-size', '0'], '--batch-size'),
    ('extract', [S, '--out', '{W}/random.pt'], 'random.pt'),
    # dctkd_download
    ('download', ['imagenet', '{W}/dl'], 'imagenet'), ('download', ['toy', '{W}/random.pt'], 'random.pt'),
    ('download', ['toy', '{W}/dl', '--size', '0'], 'size'), ('download', ['mit67', '{W}/dl', '--mirror', 'notaurl'], 'notaurl'),
    ('download', ['mit67', '{W}/dl', '--sha256', 'xyz'], 'xyz'), ('download', ['mit67', '{W}/dl', '--bogus'], '--bogus'),
    # the CPU benchmark's commands (refused before the pinned interpreter starts)
    ('bench', ['--plan', '{W}/nope.yaml', '--out', '{W}/b', '--results', '{W}/br'], 'nope.yaml'),
    ('bench', ['--kd-note', '{W}/nonote.md', '--out', '{W}/b', '--results', '{W}/br'], 'nonote.md'),
    ('bench', ['--jobs', '0', '--out', '{W}/b', '--results', '{W}/br'], '--jobs 0'), ('bench', ['--threads', '0', '--out', '{W}/b'], '--threads 0'),
    ('bench', ['--seeds', 'a,b', '--out', '{W}/b'], "--seeds 'a,b'"), ('bench', ['--seeds', '-1', '--out', '{W}/b'], "--seeds '-1'"),
    ('bench', ['--report-only', '--out', '{W}/nothere', '--results', '{W}/br'], 'nothere'),
    ('bench_check', ['--results', '{W}/nothere'], 'nothere'), ('bench_check', ['--results', '{W}/notrun'], 'cpu-bench-check.json'),
    # dctkd_doctor (refused before any check runs)
    ('doctor', ['--device', 'cuda:9' if torch.cuda.is_available() else 'cuda'], 'cuda'), ('doctor', ['--device', 'tpu'], 'tpu'),
    ('doctor', ['--budget', '-1'], '--budget'), ('doctor', ['--size', '0'], '--size'), ('doctor', ['--steps', '0'], '--steps'),
    ('doctor', ['--batch', '0'], '--batch'), ('doctor', ['--skip', 'foo'], 'foo'), ('doctor', ['--out', '{W}/random.pt/doctor.md'], 'random.pt'),
]


def _run(cli, argv, cwd):
    "Call a console script's entry point in `cwd`: (exit code, whether a traceback escaped, stdout + stderr)."
    out, here = io.StringIO(), os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try: code = CLIS[cli](argv)
            except SystemExit as e:
                code = e.code
                if isinstance(code, str): print(code); code = 1             # sys.exit('message'): exit 1 with the message
            except Exception:
                traceback.print_exc(); return 'traceback', True, out.getvalue()
    finally: os.chdir(here)
    return code, False, out.getvalue()


def _tree(folder):
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob('*'))


@pytest.mark.parametrize('cli,argv,culprit', CASES, ids=[f"{i:03d}-{c[0]}" for i, c in enumerate(CASES)])
def test_a_bad_input_is_a_clear_error(W, cli, argv, culprit, tmp_path):
    fill = lambda a: a.replace('{W}', str(W)).replace('{toy}', str(W / 'toy'))
    args = [fill(a) for a in (TINY if cli == 'train' and not any(a.startswith('resume=') for a in argv) else []) + argv]
    before = _tree(W)
    code, tb, text = _run(cli, args, tmp_path)
    assert not tb, text[-3000:]
    assert code not in (0, None), f'exit {code}: {text[-2000:]}'
    assert fill(culprit).lower() in text.lower(), text[-2000:]
    assert _tree(tmp_path) == [], _tree(tmp_path)                       # nothing created where it ran
    if code == 2 and cli != 'sweep':                                    # a usage error: refused before anything was created
        assert _tree(W) == before, sorted(set(_tree(W)) ^ set(before))[:10]
