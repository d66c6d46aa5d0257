"""Paired seeds (issue 22): one seed gives the student of every method the same initial weights and the same batches
(order, crops and flips), so the benchmark's per-seed differences to the baseline are paired. Distillers that build
modules (VID's regressors, CRD's embeddings and memory) or draw random numbers while training (CRD's negatives) must
not shift either. The oracle is the baseline run itself: its initial state_dict and every batch it trained on."""
import contextlib

import pytest
import torch

import dctkd.train as train
from dctkd.data.toy import make_toy_scenes


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp('paired')
    make_toy_scenes(root / 'data', n_classes=3, n_per_class=10, size=20, progress=False)
    base = dict(preset='cpu-toy', root=str(root / 'data'), image_size=16, batch_size=4, lr=0.005, epochs=2, max_batches=3,
                progress=False, tensorboard='off', out=str(root / 'runs'))
    teacher = train.fit(**base, name='teacher', seed=5)
    return root, base, teacher


def _record(monkeypatch, base, teacher, method, seed=3, hparams=None):
    "Train `method` with `seed`; return the student's initial state_dict and every (images, indices) batch it saw."
    seen, init = [], {}
    orig_build, orig_fwd = train.build_model, train.Trainee.forward
    def build(*a, **k):
        m = orig_build(*a, **k)
        init.update({k: v.detach().clone() for k, v in m.model.state_dict().items()})
        return m
    def fwd(self, x, targets, index, teacher_out):
        seen.append((x.detach().clone(), index.detach().clone()))
        return orig_fwd(self, x, targets, index, teacher_out)
    monkeypatch.setattr(train, 'build_model', build)
    monkeypatch.setattr(train.Trainee, 'forward', fwd)
    cfg = dict(base, name=f"{method.replace('+', '-')}-s{seed}", seed=seed)
    if method != 'none': cfg.update(method=method, teacher=str(teacher), **({'hparams': hparams} if hparams else {}))
    train.fit(**cfg)
    monkeypatch.undo()
    return init, seen


def _same(a, b):
    ia, sa = a; ib, sb = b
    assert ia.keys() == ib.keys()
    for k in ia: assert torch.equal(ia[k], ib[k]), f"initial weight {k} differs"
    assert len(sa) == len(sb) == 6                                   # 2 epochs × 3 batches
    for (xa, ja), (xb, jb) in zip(sa, sb):
        assert torch.equal(ja, jb), "the batches hold other images"
        assert torch.equal(xa, xb), "the same images were cropped or flipped differently"


@pytest.mark.parametrize('method,hparams', [('kd', None), ('vid', None), ('crd', None),
                                            ('dct+kd', {'stages': [0, 1]})])   # at 16 px ResNet-18's last two maps are 1×1
def test_one_seed_one_student_start_and_one_data_order(toy, monkeypatch, method, hparams):
    root, base, teacher = toy
    ref = _record(monkeypatch, base, teacher, 'none')
    _same(ref, _record(monkeypatch, base, teacher, method, hparams=hparams))


def test_the_check_has_teeth(toy, monkeypatch):
    "Without the method's own random stream, CRD's negatives move the global RNG and the crops of later batches change."
    root, base, teacher = toy
    ref = _record(monkeypatch, base, teacher, 'none', seed=4)
    monkeypatch.setattr(torch.random, 'fork_rng', lambda *a, **k: contextlib.nullcontext())
    with pytest.raises(AssertionError, match='cropped or flipped differently'):
        _same(ref, _record(monkeypatch, base, teacher, 'crd', seed=4))
    # a different seed must give a different start (else the comparison above proves nothing)
    other = _record(monkeypatch, base, teacher, 'none', seed=5)
    with pytest.raises(AssertionError, match='initial weight'): _same(ref, other)
