"""The nine methods of the CRD (RepDistiller) and mdistiller benchmarks: SP, RKD, NST, CC, FSP, FT, AB, OFD, KD-SVD.

Each loss and its gradient against an independent float64 re-statement of its official code's formula (written out here
the way RepDistiller's `distiller_zoo/` or mdistiller's `distillers/` compute it) on random inputs of several shapes;
SP, RKD and NST against hand computations of their equations; every distiller against its loss; every method trained
by `fit` on the toy scenes and lowering its loss on a fixed batch; FSP's initialisation phase resumed exactly."""
import csv
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F

from dctkd import distillers
from dctkd import train as T
from dctkd.config import make_config
from dctkd.data.toy import make_toy_scenes
from dctkd.distillers import build, check_pair, method, names
from dctkd.losses import ab_loss, cc_loss, fsp_loss, ft_loss, kdsvd_loss, nst_loss, ofd_loss, ofd_margin, rkd_loss, sp_loss
from dctkd.models import FrozenTeacher, build_model, tap_norms
from dctkd.runs import read_checkpoint
from dctkd.train import fit

NINE = ['sp', 'rkd', 'nst', 'cc', 'fsp', 'ft', 'ab', 'ofd', 'kdsvd']
D = torch.float64


def _rand(shape, seed, grad=False):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=D).requires_grad_(grad)


def _grad(loss, x):
    (g,) = torch.autograd.grad(loss, x)
    return g


def _check(ours, ref, inputs, rtol=1e-10, atol=1e-12):
    "Our loss and its gradients w.r.t. `inputs` equal the reference's."
    lo, lr = ours(), ref()
    assert torch.allclose(lo, lr, rtol=rtol, atol=atol), (float(lo), float(lr))
    go, gr = torch.autograd.grad(lo, inputs), torch.autograd.grad(lr, inputs)
    for a, b in zip(go, gr): assert torch.allclose(a, b, rtol=1e-8, atol=1e-12), float((a - b).abs().max())
    return float(lo.detach())


# ---- the official formulas, written out again (float64) --------------------------------------------------------------
def ref_sp(f_s, f_t):   # RepDistiller distiller_zoo/SP.py
    bsz = f_s.shape[0]
    G_s, G_t = f_s.view(bsz, -1) @ f_s.view(bsz, -1).t(), f_t.view(bsz, -1) @ f_t.view(bsz, -1).t()
    G_s = G_s / torch.clamp(torch.sqrt((G_s ** 2).sum(1, keepdim=True)), min=1e-12)
    G_t = G_t / torch.clamp(torch.sqrt((G_t ** 2).sum(1, keepdim=True)), min=1e-12)
    diff = G_t - G_s
    return (diff * diff).view(-1, 1).sum(0)[0] / (bsz * bsz)


def _pdist_ref(e, eps=1e-12):
    e_square = e.pow(2).sum(dim=1)
    res = (e_square.unsqueeze(1) + e_square.unsqueeze(0) - 2 * e @ e.t()).clamp(min=eps).sqrt().clone()
    res[range(len(e)), range(len(e))] = 0
    return res


def ref_rkd(f_s, f_t, w_d=25, w_a=50):   # RepDistiller distiller_zoo/RKD.py (mdistiller's is the same)
    student, teacher = f_s.view(f_s.shape[0], -1), f_t.view(f_t.shape[0], -1)
    with torch.no_grad():
        t_d = _pdist_ref(teacher); t_d = t_d / t_d[t_d > 0].mean()
    d = _pdist_ref(student); d = d / d[d > 0].mean()
    loss_d = F.smooth_l1_loss(d, t_d)
    with torch.no_grad():
        td = teacher.unsqueeze(0) - teacher.unsqueeze(1)
        norm_td = F.normalize(td, p=2, dim=2)
        t_angle = torch.bmm(norm_td, norm_td.transpose(1, 2)).view(-1)
    sd = student.unsqueeze(0) - student.unsqueeze(1)
    norm_sd = F.normalize(sd, p=2, dim=2)
    s_angle = torch.bmm(norm_sd, norm_sd.transpose(1, 2)).view(-1)
    return w_d * loss_d + w_a * F.smooth_l1_loss(s_angle, t_angle)


def ref_nst(f_s, f_t):   # RepDistiller distiller_zoo/NST.py, full_loss=True
    s_H, t_H = f_s.shape[2], f_t.shape[2]
    if s_H > t_H: f_s = F.adaptive_avg_pool2d(f_s, (t_H, t_H))
    elif s_H < t_H: f_t = F.adaptive_avg_pool2d(f_t, (s_H, s_H))
    f_s = F.normalize(f_s.view(f_s.shape[0], f_s.shape[1], -1), dim=2)
    f_t = F.normalize(f_t.view(f_t.shape[0], f_t.shape[1], -1), dim=2)
    poly = lambda a, b: (a.unsqueeze(1) * b.unsqueeze(2)).sum(-1).pow(2)
    return poly(f_t, f_t).mean().detach() + poly(f_s, f_s).mean() - 2 * poly(f_s, f_t).mean()


def ref_cc(f_s, f_t):   # RepDistiller distiller_zoo/CC.py
    delta = torch.abs(f_s - f_t)
    return torch.mean((delta[:-1] * delta[1:]).sum(1))


def ref_fsp(g_s, g_t):   # RepDistiller distiller_zoo/FSP.py: sum of the loss group
    def compute_fsp(g):
        out = []
        for i in range(len(g) - 1):
            bot, top = g[i], g[i + 1]
            b_H, t_H = bot.shape[2], top.shape[2]
            if b_H > t_H: bot = F.adaptive_avg_pool2d(bot, (t_H, t_H))
            elif b_H < t_H: top = F.adaptive_avg_pool2d(top, (b_H, b_H))
            bot, top = bot.unsqueeze(1), top.unsqueeze(2)
            bot = bot.view(bot.shape[0], bot.shape[1], bot.shape[2], -1)
            top = top.view(top.shape[0], top.shape[1], top.shape[2], -1)
            out.append((bot * top).mean(-1))
        return out
    return sum((s - t).pow(2).mean() for s, t in zip(compute_fsp(g_s), compute_fsp(g_t)))


def ref_ft(f_s, f_t, p1=2, p2=1):   # RepDistiller distiller_zoo/FT.py
    s_H, t_H = f_s.shape[2], f_t.shape[2]
    if s_H > t_H: f_s = F.adaptive_avg_pool2d(f_s, (t_H, t_H))
    elif s_H < t_H: f_t = F.adaptive_avg_pool2d(f_t, (s_H, s_H))
    factor = lambda f: F.normalize(f.pow(p1).mean(1).view(f.size(0), -1))
    return (factor(f_s) - factor(f_t)).abs().mean() if p2 == 1 else (factor(f_s) - factor(f_t)).pow(p2).mean()


def ref_ab(g_s, g_t, margin=1.0):   # RepDistiller distiller_zoo/AB.py: sum of the loss group
    n, bsz = len(g_s), g_s[0].shape[0]
    w = [2 ** (i - n + 1) for i in range(n)]
    crit = lambda s, t: torch.abs((s + margin) ** 2 * ((s > -margin) & (t <= 0)).float()
                                  + (s - margin) ** 2 * ((s <= margin) & (t > 0)).float()).sum()
    return sum(wi * crit(s, t) / bsz / 1000 * 3 for wi, s, t in zip(w, g_s, g_t))


def ref_ofd_margin(std, mean):   # mdistiller distillers/OFD.py, channel by channel with scipy
    out = []
    for s, m in zip(std.tolist(), mean.tolist()):
        s = abs(s)
        if scipy.stats.norm.cdf(-m / s) > 0.001:
            out.append(-s * math.exp(-(m / s) ** 2 / 2) / math.sqrt(2 * math.pi) / scipy.stats.norm.cdf(-m / s) + m)
        else: out.append(-3 * s)
    return torch.tensor(out, dtype=D)


def ref_ofd(g_s, g_t, margins):   # mdistiller distillers/OFD.py: feat_loss and ofd_loss (after the connectors)
    total, n = 0, len(g_s)
    for i in range(n):
        source, target = g_s[i], F.adaptive_avg_pool2d(g_t[i], g_s[i].shape[-2:]).detach()
        margin = margins[i].unsqueeze(1).unsqueeze(2).unsqueeze(0).to(source)
        loss = ((source - margin) ** 2 * ((source > margin) & (target <= margin)).float()
                + (source - target) ** 2 * ((source > target) & (target > margin) & (target <= 0)).float()
                + (source - target) ** 2 * (target > 0).float())
        total = total + torch.abs(loss).mean(dim=0).sum() / 2 ** (n - i - 1)
    return total


def _removenan(x): return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def ref_kdsvd(g_s, g_t, k=1, layout='repdistiller'):   # RepDistiller distiller_zoo/KDSVD.py; mdistiller's reshape as `layout`
    def svd(feat, n):
        size = feat.shape
        if layout == 'repdistiller': x = feat.view(-1, size[1], size[2] * size[3]).transpose(-2, -1)
        else: x = feat.view(size[0], size[1] * size[2], size[3])
        u, s, v = torch.svd(x)
        s, v = _removenan(s), _removenan(v)
        return F.normalize(s[:, :n], dim=1), F.normalize(v[:, :, :n], dim=1)
    def align(a, b):
        cosine = torch.matmul(a.transpose(-2, -1), b)
        max_abs_cosine, _ = torch.max(torch.abs(cosine), 1, keepdim=True)
        mask = torch.where(torch.eq(max_abs_cosine, torch.abs(cosine)), torch.sign(cosine), torch.zeros_like(cosine))
        return torch.matmul(a, mask)
    v_sb = v_tb = None
    losses = []
    for i, (f_s, f_t) in enumerate(zip(g_s, g_t)):
        s_t, v_t = svd(f_t, k)
        _, v_s = svd(f_s, k + 3)
        v_s = align(v_s, v_t)
        s_t = s_t.unsqueeze(1)
        v_t, v_s = v_t * s_t, v_s * s_t
        if i > 0:
            s_rbf = torch.exp(-(v_s.unsqueeze(2) - v_sb.unsqueeze(1)).pow(2) / 8)
            t_rbf = torch.exp(-(v_t.unsqueeze(2) - v_tb.unsqueeze(1)).pow(2) / 8)
            l2loss = (s_rbf - t_rbf.detach()).pow(2)
            losses.append(torch.where(torch.isfinite(l2loss), l2loss, torch.zeros_like(l2loss)).sum())
        v_tb, v_sb = v_t, v_s
    return sum(l / g_s[0].shape[0] for l in losses)


# ---- losses and gradients against the official formulas ---------------------------------------------------------------
VEC_SHAPES = [((6, 16), (6, 32)), ((4, 8, 3, 3), (4, 12)), ((9, 5), (9, 5))]
MAP_SHAPES = [((4, 8, 8, 8), (4, 16, 8, 8)), ((5, 4, 8, 8), (5, 6, 4, 4)), ((3, 6, 2, 2), (3, 3, 4, 4))]
STAGES = [  # student, teacher stage shapes (without the batch), equal channels for FSP and KD-SVD
    ([(4, 8, 8), (8, 4, 4), (16, 2, 2)], [(4, 8, 8), (8, 4, 4), (16, 2, 2)]),
    ([(4, 8, 8), (8, 4, 4), (8, 4, 4)], [(4, 16, 16), (8, 8, 8), (8, 4, 4)]),
    ([(6, 5, 5), (10, 3, 3)], [(6, 5, 5), (10, 3, 3)]),
]


@pytest.mark.parametrize('shapes', VEC_SHAPES + MAP_SHAPES[:1])
def test_sp_equals_the_official_formula(shapes):
    fs, ft = _rand(shapes[0], 0, grad=True), _rand(shapes[1], 1)
    assert _check(lambda: sp_loss(fs, ft), lambda: ref_sp(fs, ft), [fs]) > 0


@pytest.mark.parametrize('shapes', VEC_SHAPES)
def test_rkd_equals_the_official_formula(shapes):
    fs, ft = _rand(shapes[0], 2, grad=True), _rand(shapes[1], 3)
    assert _check(lambda: rkd_loss(fs, ft), lambda: ref_rkd(fs, ft), [fs]) > 0
    _check(lambda: rkd_loss(fs, ft, w_d=1., w_a=0.), lambda: ref_rkd(fs, ft, 1, 0), [fs])


@pytest.mark.parametrize('shapes', MAP_SHAPES)
def test_nst_equals_the_official_formula(shapes):
    fs, ft = _rand(shapes[0], 4, grad=True), _rand(shapes[1], 5)
    assert _check(lambda: nst_loss(fs, ft), lambda: ref_nst(fs, ft), [fs]) > 0


@pytest.mark.parametrize('shape', [(6, 128), (2, 7), (17, 3)])
def test_cc_equals_the_official_formula(shape):
    es, et = _rand(shape, 6, grad=True), _rand(shape, 7)
    assert _check(lambda: cc_loss(es, et), lambda: ref_cc(es, et), [es]) > 0


@pytest.mark.parametrize('stages', [STAGES[0], STAGES[2], ([(3, 8, 8), (5, 4, 4)], [(3, 4, 4), (5, 8, 8)])])
def test_fsp_equals_the_official_formula(stages):
    fs = [_rand((3, *s), 8 + i, grad=True) for i, s in enumerate(stages[0])]
    ft = [_rand((3, *t), 20 + i) for i, t in enumerate(stages[1])]
    assert _check(lambda: fsp_loss(fs, ft), lambda: ref_fsp(fs, ft), fs) > 0


@pytest.mark.parametrize('shapes', MAP_SHAPES)
@pytest.mark.parametrize('p2', [1, 2])
def test_ft_equals_the_official_formula(shapes, p2):
    fs, ft = _rand(shapes[0], 9, grad=True), _rand(shapes[1], 10)
    assert _check(lambda: ft_loss(fs, ft, p2=p2), lambda: ref_ft(fs, ft, p2=p2), [fs]) > 0


@pytest.mark.parametrize('stages', [STAGES[0][1], STAGES[1][1], [(3, 2, 2)]])
@pytest.mark.parametrize('margin', [1.0, 0.5])
def test_ab_equals_the_official_formula(stages, margin):
    fs = [_rand((4, *s), 30 + i, grad=True) for i, s in enumerate(stages)]
    ft = [_rand((4, *s), 40 + i) for i, s in enumerate(stages)]
    assert _check(lambda: ab_loss(fs, ft, margin), lambda: ref_ab(fs, ft, margin), fs) > 0


def test_ofd_margin_equals_the_official_loop():
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(64, generator=g, dtype=D), torch.randn(64, generator=g, dtype=D) * 2
    w[:4], b[:4] = torch.tensor([1., -0.5, 1., 2.]), torch.tensor([5., 8., -3., 0.])   # P(x < 0) ≤ 0.001 for the first two: -3σ
    m = ofd_margin(w, b)
    assert torch.allclose(m, ref_ofd_margin(w, b), rtol=1e-12, atol=1e-12)
    assert torch.equal(m[:2], -3 * w[:2].abs()) and (m < 0).all()


@pytest.mark.parametrize('stages', [STAGES[0], STAGES[1], ([(6, 4, 4)], [(6, 8, 8)])])
def test_ofd_equals_the_official_formula(stages):
    fs = [_rand((4, t[0], *s[1:]), 50 + i, grad=True) for i, (s, t) in enumerate(zip(*stages))]   # after the connectors
    ft = [_rand((4, *t), 60 + i) for i, t in enumerate(stages[1])]
    margins = [ofd_margin(_rand((t[0],), 70 + i), _rand((t[0],), 80 + i)) for i, t in enumerate(stages[1])]
    assert _check(lambda: ofd_loss(fs, ft, margins), lambda: ref_ofd(fs, ft, margins), fs) > 0


@pytest.mark.parametrize('stages', [STAGES[0], STAGES[2], ([(5, 4, 4), (6, 3, 3), (7, 2, 2)], [(5, 6, 6), (6, 3, 3), (7, 5, 5)])])
@pytest.mark.parametrize('layout', ['repdistiller', 'mdistiller'])
def test_kdsvd_equals_the_official_formula(stages, layout):
    if layout == 'mdistiller': stages = (stages[0], stages[0])          # its singular vectors run over W: equal widths
    fs = [_rand((3, *s), 90 + i, grad=True) for i, s in enumerate(stages[0])]
    ft = [_rand((3, *t), 100 + i) for i, t in enumerate(stages[1])]
    assert _check(lambda: kdsvd_loss(fs, ft, layout=layout), lambda: ref_kdsvd(fs, ft, layout=layout), fs, rtol=1e-9) > 0
    _check(lambda: kdsvd_loss(fs, ft, k=2, layout=layout), lambda: ref_kdsvd(fs, ft, k=2, layout=layout), fs, rtol=1e-9)


def test_kdsvd_layouts_differ():
    "The named variant: mdistiller's CH×W matrices give another loss than the paper's (and RepDistiller's) HW×C."
    fs = [_rand((3, 4, 5, 5), 110 + i) for i in range(2)]
    ft = [_rand((3, 4, 5, 5), 120 + i) for i in range(2)]
    assert abs(float(kdsvd_loss(fs, ft)) - float(kdsvd_loss(fs, ft, layout='mdistiller'))) > 1e-3


# ---- SP, RKD and NST from their equations, by hand ----------------------------------------------------------------------
def test_sp_by_hand():
    # student rows (1, 0), (1, 1): G_S = [[1, 1], [1, 2]]; teacher rows (1,), (2,): G_T = [[1, 2], [2, 4]]
    fs, ft = torch.tensor([[1., 0.], [1., 1.]], dtype=D), torch.tensor([[1.], [2.]], dtype=D)
    gs = np.array([[1, 1], [1, 2]]) / np.array([[math.sqrt(2)], [math.sqrt(5)]])
    gt = np.array([[1, 2], [2, 4]]) / np.array([[math.sqrt(5)], [math.sqrt(20)]])
    assert math.isclose(float(sp_loss(fs, ft)), ((gt - gs) ** 2).sum() / 4, rel_tol=1e-12)


def test_rkd_by_hand():
    # teacher: a 3-4-5 right triangle; student: three points on a line at 0, 1, 3
    t = torch.tensor([[0., 0.], [3., 0.], [0., 4.]], dtype=D)
    s = torch.tensor([[0.], [1.], [3.]], dtype=D)
    huber = lambda x: 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5
    dt = np.array([[0, 3, 4], [3, 0, 5], [4, 5, 0]]) / 4.0                 # mean of the six non-zero: 4
    ds = np.array([[0, 1, 3], [1, 0, 2], [3, 2, 0]]) / 2.0                 # mean: 2
    dist = sum(huber(a - b) for a, b in zip(ds.ravel(), dt.ravel())) / 9
    def angles(p):
        p = np.asarray(p, dtype=float)
        out = []
        for i in range(3):
            for j in range(3):
                for k in range(3):
                    u, v = p[j] - p[i], p[k] - p[i]
                    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
                    out.append(0. if nu == 0 or nv == 0 else float(u @ v / nu / nv))
        return out
    ang = sum(huber(a - b) for a, b in zip(angles(s), angles(t))) / 27
    assert math.isclose(float(rkd_loss(s, t, w_d=1, w_a=0)), dist, rel_tol=1e-12)
    assert math.isclose(float(rkd_loss(s, t, w_d=0, w_a=1)), ang, rel_tol=1e-12)
    assert math.isclose(float(rkd_loss(s, t)), 25 * dist + 50 * ang, rel_tol=1e-12)


def test_nst_by_hand():
    # one sample; student channels (1, 0, 0, 0) and (1, 1, 0, 0)/√2 over 2×2 positions; teacher channel (0, 0, 0, 2)
    fs = torch.tensor([[[[1., 0.], [0., 0.]], [[1., 1.], [0., 0.]]]], dtype=D)
    ft = torch.tensor([[[[0., 0.], [0., 2.]]]], dtype=D)
    k_ss = (1 + 0.5 + 0.5 + 1) / 4                 # (xᵀy)²: 1, (1/√2)², (1/√2)², 1
    k_tt, k_st = 1.0, 0.0                          # the teacher's channel is orthogonal to both
    assert math.isclose(float(nst_loss(fs, ft)), k_tt + k_ss - 2 * k_st, rel_tol=1e-12)


# ---- the distillers ---------------------------------------------------------------------------------------------------
S_SHAPES = [(4, 8, 8), (8, 4, 4), (16, 2, 2), (16,)]          # a 3-stage network (CIFAR ResNet-like): every spatial tap
T_SHAPES = [(4, 8, 8), (8, 4, 4), (16, 2, 2), (16,)]
T_WIDE = [(8, 8, 8), (16, 4, 4), (32, 2, 2), (32,)]


def _outs(shapes, seed, grad=False, B=6):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, 5, generator=g, dtype=D)
    feats = [torch.randn(B, *s, generator=g, dtype=D).requires_grad_(grad) for s in shapes]
    return logits, feats


def test_all_nine_are_registered_beyond_the_paper():
    for n in NINE:
        info = method(n)
        assert n in names() and f'{n}+kd' in names() and not info.in_paper and info.needs_teacher and 0 <= info.order < 80
    assert method('sp').cls.alpha == 3000 and method('rkd').cls.alpha == 1 and method('nst').cls.alpha == 50
    assert method('cc').cls.alpha == 0.02 and method('ft').cls.alpha == 200 and method('ofd').cls.alpha == 0.001
    assert method('kdsvd').cls.alpha == 1 and method('fsp').cls.alpha == 0 and method('ab').cls.alpha == 0


@pytest.mark.parametrize('t_shapes', [T_SHAPES, T_WIDE])
def test_each_distiller_term_is_its_weighted_loss_on_every_spatial_tap(t_shapes):
    so, to, y = _outs(S_SHAPES, 0, grad=True), _outs(t_shapes, 1), torch.tensor([0, 1, 2, 3, 4, 0])
    sp = lambda i: so[1][i]
    tp = lambda i: to[1][i]
    want = {'sp': 3000 * ref_sp(sp(2), tp(2)), 'rkd': ref_rkd(sp(3), tp(3)), 'nst': 50 * sum(ref_nst(sp(i), tp(i)) for i in range(3))}
    for n, w in want.items():
        d = build(n, S_SHAPES, t_shapes, 32).double()
        terms = d(so, to, y)
        assert torch.allclose(terms[n], w, rtol=1e-10), n
        assert torch.allclose(terms['ce'], F.cross_entropy(so[0], y), rtol=1e-12)
    d = build('cc', S_SHAPES, t_shapes, 32).double()
    assert torch.allclose(d(so, to, y)['cc'], 0.02 * ref_cc(d.embed_s(sp(3)), d.embed_t(tp(3))), rtol=1e-10)
    d = build('ab', S_SHAPES, t_shapes, 32, init_epochs=1).double()
    assert torch.allclose(d(so, to, y)['ab'], ref_ab([c(sp(i)) for i, c in enumerate(d.connectors)], [tp(i) for i in range(3)]))
    d = build('ft', S_SHAPES, t_shapes, 32, init_epochs=0).double()
    with torch.no_grad(): factor_t = d.paraphraser.encoder(tp(2))
    assert torch.allclose(d(so, to, y)['ft'], 200 * ref_ft(d.translator(sp(2)), factor_t), rtol=1e-10)
    margins = [ofd_margin(_rand((t[0],), i), _rand((t[0],), 9 + i)) for i, t in enumerate(t_shapes[:3])]
    d = build('ofd', S_SHAPES, t_shapes, 32, margins=margins).double()
    want = 0.001 * ref_ofd([c(sp(i)) for i, c in enumerate(d.connectors)], [tp(i) for i in range(3)], margins)
    assert torch.allclose(d(so, to, y)['ofd'], want, rtol=1e-6)    # margins held as float32 buffers
    if t_shapes is T_SHAPES:
        for n, w in [('kdsvd', ref_kdsvd([sp(i) for i in range(3)], [tp(i) for i in range(3)])),
                     ('fsp', ref_fsp([sp(i) for i in range(3)], [tp(i) for i in range(3)]))]:
            assert torch.allclose(build(n, S_SHAPES, t_shapes, 32)(so, to, y)[n], w, rtol=1e-9), n
    else:
        for n in ('kdsvd', 'fsp'):
            assert distillers.method(n).cls.pair_status(S_SHAPES, t_shapes, 5, 5).startswith('cannot: tap 0 has 4 student and 8')
            with pytest.raises(ValueError, match='equal channels'): build(n, S_SHAPES, t_shapes, 32)


def test_init_phase_methods_switch_phase_by_epoch():
    so, to, y = _outs(S_SHAPES, 0, grad=True), _outs(T_WIDE, 1), torch.tensor([0, 1, 2, 3, 4, 0])
    for n in ('fsp', 'ab', 'ft'):
        shapes = T_SHAPES if n == 'fsp' else T_WIDE
        d = build(n + '+kd', S_SHAPES, shapes, 32, init_epochs=2).double()
        t = (to[0], [f.detach() + 0.1 for f in (so if n == 'fsp' else to)[1]])
        for epoch, init in [(0, True), (1, True), (2, False), (5, False), (1, True)]:
            d.start_epoch(epoch, 6)
            terms = d(so, t, y)
            assert set(terms) == {'ce', n, 'kd'}
            if init: assert terms['ce'].item() == 0 and terms['kd'].item() == 0 and terms[n].item() > 0, (n, epoch)
            else:
                assert terms['ce'].item() > 0 and terms['kd'].item() > 0
                assert (terms[n].item() > 0) == (n == 'ft'), (n, epoch)       # FSP and AB: nothing after their phase (α = 0)
    d = build('fsp', S_SHAPES, T_SHAPES, 32, init_epochs=0, alpha=3.)
    assert torch.allclose(d(so, so, y)['fsp'], torch.zeros((), dtype=D))        # its own student: 0
    with pytest.raises(ValueError, match='init_epochs'): build('ab', S_SHAPES, T_WIDE, 32, init_epochs=-1)


@pytest.mark.parametrize('name', ['fsp', 'ab'])
def test_init_bn_eval_variant_keeps_the_students_batchnorm_frozen_in_the_phase(name):
    "RepDistiller's init runs `model_s.eval()`: `init_bn_eval=True` (the faithful recipe) does the same during the phase only."
    torch.manual_seed(0)
    s, t = build_model('resnet18', 4), FrozenTeacher(build_model('resnet18', 4))
    d = build(name, s, t, 32, init_epochs=1, recipe='faithful')
    assert d.init_bn_eval and not build(name, build_model('resnet18', 4), t, 32).init_bn_eval
    trainee = T.Trainee(s, d)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    d.start_epoch(0, 2); trainee.train()
    bns = [m for m in s.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    stats = [m.running_mean.clone() for m in bns]
    terms, _ = trainee(x, y, None, t(x))
    sum(terms.values()).backward()
    assert all(not m.training for m in bns) and all(torch.equal(m.running_mean, r) for m, r in zip(bns, stats))
    assert s.model.layer1[0].bn1.weight.grad is not None                   # its affine parameters still train
    d.start_epoch(1, 2); trainee.train()
    assert all(m.training for m in bns)
    trainee(x, y, None, t(x))
    assert not torch.equal(bns[0].running_mean, stats[0])


def test_preact_taps_for_ofd_and_ab_built_from_networks():
    torch.manual_seed(0)
    s, t = build_model('resnet18', 4), build_model('resnet34', 4)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad(): post = s.eval()(x)[1]
    d = build('ofd', s, FrozenTeacher(t), 32)
    with torch.no_grad(): pre = s(x)[1]
    for a, b in zip(pre[:4], post[:4]): assert torch.equal(a.relu(), b) and (a < 0).any()
    bns = tap_norms(t)
    assert bns[3] is t.model.layer4[2].bn2 and bns[4] is None
    for i in range(4): assert torch.allclose(getattr(d, f'margin{i}').double(), ref_ofd_margin(bns[i].weight.detach().double(), bns[i].bias.detach().double()), rtol=1e-6)
    r = check_pair(build_model('resnet18', 4), build_model('resnet50', 4), 32)
    assert r.methods['kdsvd'].startswith('cannot') and r.methods['fsp'].startswith('cannot') and r.methods['ofd'].startswith('as is')
    assert all(r.methods[n].startswith('as is') for n in ('sp', 'rkd', 'nst', 'cc', 'ft', 'ab'))


# ---- trained by fit on the toy scenes; each lowers its loss on a fixed batch --------------------------------------------
BASE = dict(dataset='toy', image_size=32, resize=36, batch_size=8, lr=0.01, lr_step=10, workers=0, progress=False, augment=False)
HP = {n: {'init_epochs': 1} for n in ('fsp', 'ft', 'ab')}


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp('toy9')
    make_toy_scenes(root, layout='mit67', n_classes=4, n_per_class=6, size=36, seed=0, progress=False)
    return root


@pytest.fixture(scope='module')
def teacher(toy, tmp_path_factory):
    return fit(make_config(**BASE, root=str(toy), out=str(tmp_path_factory.mktemp('t9')), arch='resnet18', epochs=1, max_batches=2,
                           name='teacher'))


def _rows(run):
    with open(Path(run) / 'metrics.csv') as f: return list(csv.DictReader(f))


@pytest.mark.parametrize('name', NINE)
def test_fit_trains_each_method_one_epoch_of_two_batches(toy, teacher, tmp_path, name, capsys):
    run = fit(make_config(**BASE, root=str(toy), out=str(tmp_path), method=name, teacher=str(teacher), epochs=1, max_batches=2,
                          hparams=HP.get(name, {})))
    (row,) = _rows(run)
    assert math.isfinite(float(row[f'train_{name}'])) and float(row[f'train_{name}']) > 0
    if name in HP:                                             # the initialisation phase shows in the log
        assert float(row['train_ce']) == 0 and f'{name}: initialisation phase, epochs 1–1' in capsys.readouterr().out
    else: assert float(row['train_ce']) > 0


@pytest.mark.parametrize('name', NINE)
def test_each_method_lowers_its_loss_on_a_fixed_batch(name):
    torch.manual_seed(0)
    s, t = build_model('resnet18', 4), build_model('resnet18', 4)
    teacher = FrozenTeacher(t)
    d = build(name, s, teacher, 32, **({'init_epochs': 1} if name in HP else {}))
    x, y = torch.randn(8, 3, 32, 32), torch.tensor([0, 1, 2, 3] * 2)
    t_out = teacher(x)
    params = [p for p in [*s.parameters(), *d.parameters()] if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01 if name != 'rkd' else 0.001, momentum=0.9)
    s.train(); d.train()
    seen = []
    for _ in range(6):
        terms = d(s(x), t_out, y)
        seen.append(float(terms[name].detach()))
        opt.zero_grad(); sum(terms.values()).backward(); opt.step()
    assert all(map(math.isfinite, seen)) and seen[-1] < seen[0], (name, seen)


def test_fsp_resumed_in_its_main_phase_equals_an_uninterrupted_run(toy, teacher, tmp_path, monkeypatch, capsys):
    cfg = dict(BASE, root=str(toy), method='fsp', teacher=str(teacher), epochs=2, max_batches=2, hparams={'init_epochs': 1})
    straight = fit(make_config(**cfg, out=str(tmp_path / 'a')))
    log = capsys.readouterr().out
    assert 'fsp: initialisation phase, epochs 1–1' in log and 'fsp: main phase from epoch 2' in log
    real = T._train_epoch
    def killed(*a, **k):
        if a[-1] == 1: raise KeyboardInterrupt('killed')         # epoch index 1: the first of the main phase
        return real(*a, **k)
    monkeypatch.setattr(T, '_train_epoch', killed)
    with pytest.raises(KeyboardInterrupt): fit(make_config(**cfg, out=str(tmp_path / 'b')))
    monkeypatch.setattr(T, '_train_epoch', real)
    (run_b,) = list((tmp_path / 'b' / 'toy-scenes').iterdir())
    resumed = fit(resume=str(run_b))
    assert 'fsp: main phase from epoch 2' in capsys.readouterr().out
    a, b = read_checkpoint(Path(straight) / 'checkpoints' / 'latest.pt'), read_checkpoint(Path(resumed) / 'checkpoints' / 'latest.pt')
    assert all(torch.equal(a['student'][k], b['student'][k]) for k in a['student'])
    timed = lambda r: {k: v for k, v in r.items() if k not in ('time_s', 'img_s')}
    rows = _rows(straight)
    assert [timed(r) for r in rows] == [timed(r) for r in _rows(resumed)]
    assert float(rows[0]['train_ce']) == 0 < float(rows[0]['train_fsp']) and float(rows[1]['train_fsp']) == 0 < float(rows[1]['train_ce'])
