"""Precision paths on CPU (issue 25): bf16 autocast through the DCT loss and through EVERY registered distiller (the
registry is iterated, so a method added later is covered without editing this file), finite and within tolerance of
fp32; the fp16 + GradScaler path of the trainer's `train_step` exercised as far as a CPU allows. Tolerances: a bf16
forward carries ≈ 0.4 % per rounding (8-bit mantissa), so a term may move a few percent; an error in a cast or a
scale moves it by far more."""
import inspect

import pytest
import torch

from dctkd import distillers
from dctkd.losses import dct_loss
from dctkd.models import FrozenTeacher, build_model
from dctkd.train import Trainee, train_step

B, NC, SIZE = 4, 5, 32          # the CPU benchmark's pair: ResNet-20 -> ResNet-8, maps 32², 16², 8² (none 1×1, where normalisations are constant)
TEACHER, STUDENT = 'resnet20', 'resnet8'
REL, ABS = 0.05, 2e-3           # bf16 vs fp32: |a - b| <= REL·|b| + ABS
POOL = dict(nce_k=8, batch_size=B, factor=2)    # hyper-parameters some methods need to fit a 4-image batch (CRD, SemCKD)


@pytest.fixture(scope='module')
def pair():
    torch.manual_seed(0)
    teacher = FrozenTeacher(build_model(TEACHER, NC))
    x = torch.randn(B, 3, SIZE, SIZE)
    y = teacher(x)[0].argmax(1)                 # labels the teacher gets right: prediction guides keep every sample
    return teacher, x, y


def _build(name, student, teacher):
    "The distiller `name` for the pair, given only the pool's hyper-parameters it takes (and labels when it needs them)."
    info = distillers.method(name)
    takes = {n for c in info.cls.__mro__ if issubclass(c, distillers.Distiller)
             for n, p in inspect.signature(c.__init__).parameters.items() if p.kind is p.KEYWORD_ONLY}
    hp = {k: v for k, v in POOL.items() if k in takes}
    if info.needs_labels: hp['labels'] = torch.arange(16) % NC
    return distillers.build(name, student, teacher if info.needs_teacher else None, SIZE, num_train=16, **hp)


def _terms(name, teacher, x, y, amp, epoch=0):
    "The distiller's terms in epoch `epoch` of 100, and the gradients of their sum, from the same initial weights, under `amp` (None: fp32)."
    torch.manual_seed(1)
    student = build_model(STUDENT, NC)
    tr = Trainee(student, _build(name, student, teacher)).train()
    tr.distiller.start_epoch(epoch, 100)             # epoch-aware methods: an initialisation phase first (FT, AB, ...), the main one last
    with torch.autocast('cpu', dtype=amp or torch.bfloat16, enabled=amp is not None):
        t_out = teacher(x) if distillers.method(name).needs_teacher else None
        terms, _ = tr(x, y, torch.arange(B), t_out)
    sum(terms.values()).backward()
    grads = [p.grad for p in tr.parameters() if p.grad is not None]    # the student's, or (in an initialisation phase) the method's
    return {k: float(v.detach()) for k, v in terms.items()}, grads


@pytest.mark.parametrize('epoch', [0, 99], ids=['first-epoch', 'last-epoch'])
@pytest.mark.parametrize('name', distillers.names())
def test_bf16_autocast_every_distiller(pair, name, epoch):
    "Every registered method under CPU bf16 autocast, first and last epoch: finite terms within tolerance of fp32, finite gradients."
    teacher, x, y = pair
    ref, _ = _terms(name, teacher, x, y, None, epoch)
    got, grads = _terms(name, teacher, x, y, torch.bfloat16, epoch)
    assert set(got) == set(ref)
    for k in ref:
        assert abs(got[k] - ref[k]) <= REL * abs(ref[k]) + ABS, (name, k, got[k], ref[k])
    assert grads and all(torch.isfinite(g).all() for g in grads), name


@pytest.mark.parametrize('transform', ['dct', 'fft-real', 'fft-abs'])
def test_bf16_dct_loss(transform):
    "The DCT loss on bf16 features (what autocast convolutions return) against the same features in fp32."
    g = torch.Generator().manual_seed(0)
    fs = [torch.randn(B, c, s, s, generator=g) for c, s in ((8, 16), (16, 8), (32, 4))]
    ft = [torch.randn(B, c, s, s, generator=g) for c, s in ((8, 16), (16, 8), (32, 4))]
    ref = dct_loss(fs, ft, transform=transform)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        got = dct_loss([f.bfloat16() for f in fs], [f.bfloat16() for f in ft], transform=transform)
    assert torch.isfinite(got) and abs(float(got) - float(ref)) <= REL * abs(float(ref)) + ABS, (transform, float(got), float(ref))
    assert float(ref) > 0


def _one_step(amp, scaler_on, name='dct+kd', lr=0.01, init_scale=2.**16):
    "One `train_step` of a fresh student from fixed weights; its terms, new parameters and the scaler."
    torch.manual_seed(2)
    teacher = FrozenTeacher(build_model('resnet18', NC))
    x, student = torch.randn(B, 3, SIZE, SIZE), build_model('resnet18', NC)
    y = teacher(x)[0].argmax(1)
    tr = Trainee(student, _build(name, student, teacher))
    opt = torch.optim.SGD([p for p in tr.parameters() if p.requires_grad], lr=lr, momentum=0.9)
    scaler = torch.amp.GradScaler('cpu', enabled=scaler_on, init_scale=init_scale)
    terms, _ = train_step(tr, teacher, (x, y, torch.arange(B)), opt, scaler, amp)
    return terms, [p.detach().clone() for p in student.parameters()], scaler


def test_grad_scaler_path_is_exact_in_fp32():
    "The scaler's code path (scale, unscale, step, update) with an fp32 step: the update equals the unscaled step bit for bit (a power-of-2 scale)."
    t0, p0, _ = _one_step(None, False)
    t1, p1, s1 = _one_step(None, True, init_scale=2.**10)
    assert {k: float(v) for k, v in t0.items()} == {k: float(v) for k, v in t1.items()}
    assert all(torch.equal(a, b) for a, b in zip(p0, p1))
    assert s1.get_scale() == 2.**10 and s1.is_enabled()   # no overflow: the scale stays until growth_interval steps


def test_fp16_autocast_with_grad_scaler_on_cpu():
    "fp16 autocast + GradScaler('cpu') through `train_step`: finite terms near fp32's, and a step that either updates the weights or is skipped with a lower scale."
    t32, p32, _ = _one_step(None, False)
    t16, p16, s = _one_step(torch.float16, True, init_scale=2.**24)     # a scale that overflows fp16 gradients: the step must be skipped
    for k in t32: assert abs(float(t16[k]) - float(t32[k])) <= REL * abs(float(t32[k])) + ABS, (k, float(t16[k]), float(t32[k]))
    _, p_init, _ = _one_step(None, False, lr=0.0)
    skipped = all(torch.equal(a, b) for a, b in zip(p16, p_init))
    assert skipped and s.get_scale() == 2.**23                          # inf found: no update, scale halved
    _, p16b, s2 = _one_step(torch.float16, True, init_scale=2.**8)       # a safe scale: the step happens, close to fp32's
    assert s2.get_scale() == 2.**8
    moved = [float((a - b).norm() / ((c - b).norm() + 1e-12)) for a, b, c in zip(p16b, p_init, p32) if (c - b).norm() > 0]
    assert moved and all(0.8 < m < 1.2 for m in moved[:5]), moved[:5]   # the first layers moved as far as fp32's step moved them
