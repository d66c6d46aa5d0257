"""The original's CIFAR nets with every registered method: each builds with its default stages on the CIFAR pairs at
32 px, says what it uses, and runs one forward/backward whose own term reaches the student (and its trainable parts),
never the teacher. The torchvision nets keep the stage indices they had before the defaults became rules."""
import warnings

import pytest
import torch

from dctkd.distillers import build, check_pair, method, names
from dctkd.models import CIFAR_ARCHS, FrozenTeacher, build_model, tap_shapes

PAIRS = [('resnet56', 'resnet20'), ('resnet32x4', 'resnet8x4')]


@pytest.fixture(autouse=True, scope='module')
def _aten_convolutions():
    "ATen's own CPU convolutions: oneDNN compiles a kernel per new shape, and these tests use many (as test_distillers)."
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        with torch.backends.mkldnn.flags(enabled=False): yield


@pytest.fixture(scope='module')
def nets():
    torch.manual_seed(0)
    return {a: build_model(a, 100) for pair in PAIRS for a in pair}


@pytest.mark.parametrize('pair', PAIRS, ids='→'.join)
def test_every_method_accepts_the_cifar_pair(pair, nets):
    t_arch, s_arch = pair
    report = check_pair(nets[s_arch], nets[t_arch], 32)
    assert set(report.methods) == {n for n in names() if not n.endswith('+kd')}
    assert not [m for m, v in report.methods.items() if v.startswith('cannot') or v.startswith('unknown')], report


@pytest.fixture(scope='module')
def batches(nets):
    "Per pair: the student, the frozen teacher, a batch of 3 at 32 px (RKD's distances need three samples to vary), targets the teacher gets right, the teacher's outputs."
    out = {}
    for t_arch, s_arch in PAIRS:
        torch.manual_seed(1)
        teacher, x = FrozenTeacher(nets[t_arch]), torch.randn(3, 3, 32, 32)
        t_out = teacher(x)
        out[t_arch, s_arch] = nets[s_arch], teacher, x, t_out[0].argmax(1), t_out   # y: DCT's prediction guide lets them through
    return out


@pytest.mark.parametrize('name', names())   # OFD, FT and AB included: their pre-activation probes run at the nets' 32 px
@pytest.mark.parametrize('pair', PAIRS, ids='→'.join)
def test_every_method_runs_a_step_on_the_cifar_pair(pair, name, batches):
    student, teacher, x, y, t_out = batches[pair]
    idx = torch.tensor([0, 9, 13])
    labels = torch.arange(16) * 6 + 9; labels[idx] = y     # CRD's training labels over 100 classes (the last, 99, included)
    hp = {'crd': dict(num_train=16, nce_k=8, labels=labels), 'semckd': dict(batch_size=3, factor=1)}
    d = build(name, student, teacher, 32, **hp.get(name.split('+')[0], {})).train()
    own, reached = method(name).cls.name, []
    for epoch in (0, 999):                             # the first and the last epoch of 1000: both phases of FSP, FT and AB
        d.start_epoch(epoch, 1000); d.train()
        student.zero_grad(set_to_none=True)
        terms = d(student(x), t_out, y, idx)
        assert all(torch.isfinite(v).all() for v in terms.values()), terms
        if own != 'none' and terms[own].requires_grad: # the method's own term alone reaches the student (in one phase at least;
            terms[own].backward(retain_graph=True)     # FSP's and AB's official main phase: a constant 0)
            reached.append(any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters()))
        sum(terms.values()).backward()
        assert all(p.grad is None for p in teacher.parameters())
    assert own == 'none' or any(reached), name
    assert all(p.grad is not None for p in d.parameters()), name   # every trainable part learns in one phase (FT's paraphraser first)
    student.zero_grad(set_to_none=True)


def test_default_stages_on_both_families():
    s, t = [s[1:] for s in tap_shapes('resnet20', 32)], [s[1:] for s in tap_shapes('resnet56', 32)]
    S, T = [s[1:] for s in tap_shapes('resnet18', 64)], [s[1:] for s in tap_shapes('resnet34', 64)]
    kw = dict(student_head=torch.nn.Linear(64, 100), teacher_head=torch.nn.Linear(64, 100))
    cifar = {'dct': build('dct', s, t).stages, 'at': build('at', s, t).stages, 'vid': build('vid', s, t).stages,
             'semckd': build('semckd', s, t).s_stages, 'fitnet': build('fitnet', s, t).s_stage, 'catkd': build('catkd', s, t, **kw).stage}
    assert cifar == {'dct': (0, 1, 2), 'at': (0, 1, 2), 'vid': (0, 1, 2), 'semckd': (0, 1, 2), 'fitnet': 1, 'catkd': 2}
    kw = dict(student_head=torch.nn.Linear(512, 10), teacher_head=torch.nn.Linear(512, 10))
    tv = {'dct': build('dct', S, T).stages, 'at': build('at', S, T).stages, 'vid': build('vid', S, T).stages,
          'semckd': build('semckd', S, T).s_stages, 'fitnet': build('fitnet', S, T).s_stage, 'catkd': build('catkd', S, T, **kw).stage}
    assert tv == {'dct': (0, 1, 2, 3), 'at': (0, 1, 2, 3), 'vid': (1, 2, 3), 'semckd': (1, 2, 3), 'fitnet': 2, 'catkd': 3}
    with pytest.raises(ValueError, match=r'dct: stages \[0, 1, 2, 3\] must be spatial taps'):
        build('dct', s, t, stages=(0, 1, 2, 3))       # the old four-stage default names the pooled vector here


def test_cifar_nets_are_32px_nets_with_a_clear_message():
    net = build_model('resnet8', 10)
    with pytest.raises(ValueError, match='take 32×32 inputs'): net(torch.randn(1, 3, 64, 64))
    assert set(CIFAR_ARCHS) >= {'resnet8', 'resnet14', 'resnet20', 'resnet32', 'resnet44', 'resnet56', 'resnet110', 'resnet8x4', 'resnet32x4'}


# ---- the CIFAR-100 recipe and plan -------------------------------------------------------------------------------
# The original's CIFAR recipe, written out from its Config/Training/config_SGD_CIFAR.yaml and Config/Dataset/config_CIFAR100.yaml.
CIFAR_RECIPE = dict(dataset='cifar100', epochs=240, batch_size=128, lr=0.05, momentum=0.9, weight_decay=5e-4, lr_gamma=0.1, T=4.0,
                    image_size=32, resize=0, norm='cifar100', recipe='faithful', pretrained='')


def test_cifar_presets_are_the_original_configs():
    from dctkd.config import milestones, make_config
    from dctkd.data.images import NORM_STATS
    for preset in ('cifar100-teacher', 'cifar100-student', 'cifar100-dct'):
        cfg = make_config(preset, root='data/cifar100', **({'teacher': 't'} if preset.endswith('dct') else {}))
        assert {k: getattr(cfg, k) for k in CIFAR_RECIPE} == CIFAR_RECIPE and milestones(cfg) == [150, 180, 210], preset
    assert NORM_STATS['cifar100'] == ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
    assert make_config('cifar100-dct', root='x', teacher='t').hparams == {'pred_guide': False}   # the original's CIFAR command


def test_cifar100_plan_runs_every_method_on_the_original_and_crd_pairs():
    from pathlib import Path
    from dctkd import distillers
    from dctkd.config import make_config, method_hparams, milestones
    from dctkd.sweep import expected_from_plan, load_plan, plan_jobs
    path = Path(__file__).resolve().parents[1] / 'nbs' / 'experiments' / 'plans' / 'cifar100.yaml'
    plan = load_plan(path)
    assert plan['seeds'] == [0, 1, 2]
    by = {r['name']: r for r in plan['runs']}
    arch = lambda r: make_config(r['preset'], **{k: v for k, v in r['config'].items() if k != 'method'}).arch
    pairs = {(arch(by[r['teacher']]), arch(r)) for r in plan['runs'] if r.get('teacher')}
    assert pairs == {('resnet56', 'resnet20'), ('resnet110', 'resnet20'), ('resnet110', 'resnet32'), ('resnet32x4', 'resnet8x4'),
                     ('wrn_40_2', 'wrn_16_2')}
    for t, s in pairs:          # every registered method that runs on the pair (from the registry, not a hand list)
        runnable = {n for n in names() if not check_pair(build_model(s, 100), build_model(t, 100), 32).methods[n.removesuffix('+kd')].startswith('cannot')}
        have = {r['config']['method'] for r in plan['runs'] if r.get('teacher') and (arch(by[r['teacher']]), arch(r)) == (t, s)}
        assert have == runnable - {'none'}, (t, s, runnable - have)
    phased = set()
    for job in plan_jobs(plan, '/tmp/sweep'):
        cfg = make_config(job['preset'], **job['config'])
        hp = method_hparams(cfg)
        init = hp.get('init_epochs', 0)           # RepDistiller's `init` epochs before the 240 (FSP, FT, AB: 30), from the registry
        if init: phased.add(cfg.method)
        assert {k: getattr(cfg, k) for k in CIFAR_RECIPE} == {**CIFAR_RECIPE, 'epochs': 240 + init}, job['key']
        assert milestones(cfg) == [150 + init, 180 + init, 210 + init], job['key']
        if cfg.method.startswith('dct'): assert hp['pred_guide'] is False, job['key']         # PRED_GUIDE=False
        if cfg.method == 'kd': assert (hp['alpha'], hp['beta']) == (0.9, 0.1)                 # RepDistiller's KD (-r 0.1 -a 0.9)
        if cfg.method.startswith('crd'): assert hp['negatives'] == 'all'                        # RepDistiller's sampler
    assert phased == {n for n in names() if distillers.method_hparams(n).get('init_epochs')} and len(phased) == 6, phased   # 270 epochs: 180, 210, 240
    exp = expected_from_plan(plan)                # CRD Table 1 as the RepDistiller README prints it: a few cells by hand
    assert exp['teacher']['T resnet32x4 → S resnet8x4'] == 79.42 and exp['none']['T resnet110 → S resnet32'] == 71.14
    assert exp['crd']['T resnet32x4 → S resnet8x4'] == 75.51 and exp['kd']['T wrn_40_2 → S wrn_16_2'] == 74.92
    assert exp['fitnet']['T resnet110 → S resnet20'] == 68.99 and exp['fsp']['T resnet56 → S resnet20'] == 69.95
    assert not {'dct', 'dct+kd', 'crd+kd', 'dkd', 'dist', 'lskd', 'reviewkd', 'semckd', 'catkd'} & set(exp)   # no published number found
