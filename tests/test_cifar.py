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
    "Per pair: the student, the frozen teacher, a batch of 2 at 32 px, targets the teacher gets right, the teacher's outputs."
    out = {}
    for t_arch, s_arch in PAIRS:
        torch.manual_seed(1)
        teacher, x = FrozenTeacher(nets[t_arch]), torch.randn(2, 3, 32, 32)
        t_out = teacher(x)
        out[t_arch, s_arch] = nets[s_arch], teacher, x, t_out[0].argmax(1), t_out   # y: DCT's prediction guide lets them through
    return out


@pytest.mark.parametrize('name', names())
@pytest.mark.parametrize('pair', PAIRS, ids='→'.join)
def test_every_method_runs_a_step_on_the_cifar_pair(pair, name, batches):
    student, teacher, x, y, t_out = batches[pair]
    idx = torch.tensor([0, 9])
    labels = torch.arange(16) * 6 + 9; labels[idx] = y     # CRD's training labels over 100 classes (the last, 99, included)
    hp = {'crd': dict(num_train=16, nce_k=8, labels=labels), 'semckd': dict(batch_size=2, factor=1)}
    d = build(name, student, teacher, 32, **hp.get(name.split('+')[0], {})).train()
    student.zero_grad(set_to_none=True)
    terms = d(student(x), t_out, y, idx)
    assert all(torch.isfinite(v).all() for v in terms.values()), terms
    own = method(name).cls.name
    if own != 'none':                                  # the method's own term alone reaches the student
        terms[own].backward(retain_graph=True)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters()), name
    sum(terms.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in d.parameters()), name
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
