"""dctkd.losses.dct_loss: its properties, and an independent numpy/scipy oracle for every variant; the logit methods beyond
the paper (DKD, DIST, LS-KD) against hand computations of their equations."""
import math

import numpy as np
import pytest
import scipy.fft
import torch
import torch.nn.functional as F

from dctkd.losses import DCTLoss, VARIANTS, dct_loss, dct_stage_distances, dist_loss, dkd_loss, kd_loss, ls_kd_loss, prediction_guide

TRANSFORMS = list(VARIANTS)


def _feats(seed, B=6, channels=(4, 8, 16), sizes=(12, 6, 3), dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, c, s, s + 1, generator=g, dtype=dtype).relu() for c, s in zip(channels, sizes)]


# ---- the oracle: original-method.md §1.2–1.8, written with numpy and scipy -------------------------------------
def _oracle_sample(fs, ft, transform):
    "Per-sample loss for one sample: lists of (C, H, W) numpy arrays."
    total = 0.0
    for s, t in zip(fs, ft):
        D = []
        for f in (s, t):
            A = (f ** 2).mean(0)
            if transform == 'fft-abs': A = (A - A.min()) / A.max()
            else: A = (A - A.min()) / (A.max() - A.min())
            A = A - A.mean()
            if transform == 'dct': R = scipy.fft.dctn(A, type=2, norm='ortho')
            else:
                R = np.real(np.fft.fft2(A))
                if transform == 'fft-abs': R = np.abs(R)
            if transform == 'fft-abs': R = (R - R.min()) / R.max()
            else: R = (R - R.min()) / (R.max() - R.min())
            D.append(R)
        total += math.sqrt(((D[0] - D[1]) ** 2).sum())
    return total


@pytest.mark.parametrize('transform', TRANSFORMS)
def test_matches_independent_oracle(transform):
    fs, ft = _feats(0), _feats(1, channels=(32, 3, 5))
    ours = dct_loss(fs, ft, transform=transform, reduction='none')
    ref = [_oracle_sample([f[b].numpy() for f in fs], [f[b].numpy() for f in ft], transform) for b in range(6)]
    assert np.abs(ours.numpy() - np.array(ref)).max() < 1e-10


@pytest.mark.parametrize('transform', TRANSFORMS)
def test_zero_for_identical_and_positive_otherwise(transform):
    fs, ft = _feats(0), _feats(1)
    assert dct_loss(fs, fs, transform=transform).item() == 0.0
    per = dct_loss(fs, ft, transform=transform, reduction='none')
    assert (per > 0).all()


@pytest.mark.parametrize('transform', TRANSFORMS)
@pytest.mark.parametrize('scale', [1e-3, 0.5, 7.0, 1e3])
def test_invariant_to_positive_rescaling_of_either_network(transform, scale):
    fs, ft = _feats(0), _feats(1)
    ref = dct_loss(fs, ft, transform=transform, reduction='none')
    assert torch.allclose(dct_loss([scale * f for f in fs], ft, transform=transform, reduction='none'), ref, atol=1e-9, rtol=0)
    assert torch.allclose(dct_loss(fs, [scale * f for f in ft], transform=transform, reduction='none'), ref, atol=1e-9, rtol=0)


def test_independent_of_channel_counts():
    fs, ft = _feats(0), _feats(1)
    ref = dct_loss(fs, ft, reduction='none')
    wide_s = [torch.cat([f] * 5, 1) for f in fs]          # same maps from 5× the channels
    wide_t = [torch.cat([f, -f], 1) for f in ft]
    assert torch.allclose(dct_loss(wide_s, wide_t, reduction='none'), ref, atol=1e-12, rtol=0)


@pytest.mark.parametrize('transform', TRANSFORMS)
def test_per_sample_and_equivariant_to_batch_permutation(transform):
    fs, ft = _feats(0), _feats(1)
    logits, y = torch.randn(6, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 4, 0])
    y[:3] = logits[:3].argmax(1)
    perm = torch.randperm(6)
    out = dct_loss(fs, ft, transform=transform, teacher_logits=logits, targets=y, reduction='none')
    out_p = dct_loss([f[perm] for f in fs], [f[perm] for f in ft], transform=transform,
                     teacher_logits=logits[perm], targets=y[perm], reduction='none')
    assert torch.allclose(out_p, out[perm], atol=1e-14, rtol=0)
    # per-sample: sample 0 alone gives the same value as in the batch
    alone = dct_loss([f[:1] for f in fs], [f[:1] for f in ft], transform=transform, reduction='none')
    assert torch.allclose(alone, dct_loss(fs, ft, transform=transform, reduction='none')[:1], atol=1e-14, rtol=0)


def test_prediction_guide_zeroes_exactly_the_teacher_wrong_samples():
    fs, ft = _feats(0), _feats(1)
    logits = torch.randn(6, 5, dtype=torch.float64)
    wrong = torch.tensor([False, True, False, False, True, True])
    y = torch.where(wrong, (logits.argmax(1) + 1) % 5, logits.argmax(1))
    assert torch.equal(prediction_guide(logits, y), ~wrong)
    plain = dct_loss(fs, ft, reduction='none')
    guided = dct_loss(fs, ft, teacher_logits=logits, targets=y, reduction='none')
    assert torch.equal(guided[wrong], torch.zeros(3, dtype=guided.dtype))
    assert torch.equal(guided[~wrong], plain[~wrong])
    mean = dct_loss(fs, ft, teacher_logits=logits, targets=y)
    assert math.isclose(mean.item(), plain[~wrong].sum().item() / 6, rel_tol=1e-12)      # over the whole batch
    assert math.isclose(dct_loss(fs, ft, teacher_logits=logits, targets=y, reduction='sum').item(),
                        plain[~wrong].sum().item(), rel_tol=1e-12)


@pytest.mark.parametrize('transform', TRANSFORMS)
def test_gradcheck_float64(transform):
    fs, ft = _feats(3, B=2, channels=(3, 2), sizes=(5, 3)), _feats(4, B=2, channels=(2, 4), sizes=(5, 3))
    fs = [f + 0.1 for f in fs]     # away from the ReLU kinks
    fn = lambda a, b: dct_loss([a, b], ft, transform=transform)
    assert torch.autograd.gradcheck(fn, tuple(f.clone().requires_grad_() for f in fs))


def test_teacher_gets_no_gradient_and_student_does():
    fs = [f.requires_grad_() for f in _feats(0)]
    ft = [f.requires_grad_() for f in _feats(1)]
    dct_loss(fs, ft).backward()
    assert all(f.grad is None for f in ft)
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in fs)


EDGE_CASES = {
    'dead student stage': (torch.zeros(3, 4, 6, 6), torch.rand(3, 4, 6, 6)),
    'dead teacher stage': (torch.rand(3, 4, 6, 6), torch.zeros(3, 4, 6, 6)),
    'constant maps': (torch.full((3, 4, 6, 6), 2.0), torch.ones(3, 4, 6, 6)),
    '1x1 maps': (torch.rand(3, 4, 1, 1), torch.rand(3, 8, 1, 1)),
    'identical maps': (torch.rand(3, 4, 6, 6),) * 2,
    'all-zero features': (torch.zeros(3, 4, 6, 6), torch.zeros(3, 4, 6, 6)),
}


@pytest.mark.parametrize('case', EDGE_CASES)
@pytest.mark.parametrize('transform', TRANSFORMS)
def test_edge_cases_give_finite_values_and_gradients(case, transform):
    s, t = EDGE_CASES[case]
    s = s.clone().requires_grad_()
    logits, y = torch.randn(3, 4), torch.tensor([0, 1, 2])
    for kw in ({}, {'teacher_logits': logits, 'targets': y}):
        s.grad = None
        loss = dct_loss([s], [t], transform=transform, **kw)
        loss.backward()
        assert torch.isfinite(loss), (case, transform)
        assert torch.isfinite(s.grad).all(), (case, transform)
    if case in ('identical maps', 'constant maps', 'all-zero features', '1x1 maps'):
        assert loss.item() == 0.0      # nothing to compare: both spectra are identical or both degenerate


def test_half_precision_and_autocast_features():
    fs, ft = _feats(0, dtype=torch.float32), _feats(1, dtype=torch.float32)
    ref = dct_loss(fs, ft)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = dct_loss([f.bfloat16() for f in fs], [f.bfloat16() for f in ft])
    assert out.dtype == torch.float32 and torch.isfinite(out)
    assert math.isclose(out.item(), ref.item(), rel_tol=0.05)


def test_spatial_mismatch_is_a_clear_error_unless_pooling():
    fs = [torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)]
    ft = [torch.rand(2, 5, 8, 8), torch.rand(2, 5, 4, 4)]
    with pytest.raises(ValueError, match=r'stage 1: student features \(2, 3, 8, 8\) and teacher features \(2, 5, 4, 4\).*pool=True'):
        dct_loss(fs, ft)
    pooled = dct_loss(fs, ft, pool=True, reduction='none')
    manual = dct_loss([fs[0], F.adaptive_avg_pool2d(fs[1], 4)], ft, reduction='none')
    assert torch.allclose(pooled, manual, atol=1e-7, rtol=0)


@pytest.mark.parametrize('kwargs, fs, ft, msg', [
    ({}, [torch.rand(2, 3, 4, 4)], [torch.rand(2, 3, 4, 4)] * 2, '1 stages and the teacher 2'),
    ({'reduction': 'avg'}, torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4), "reduction must be"),
    ({'targets': torch.zeros(2, dtype=torch.long)}, torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4), 'both teacher_logits and targets'),
    ({}, [torch.rand(2, 3, 4, 4), torch.rand(2, 512)], [torch.rand(2, 3, 4, 4), torch.rand(2, 512)], r'stage 1: student features must be \(B, C, H, W\).*pooled vector'),
    ({}, torch.rand(2, 3, 4, 4), torch.rand(3, 3, 4, 4), 'batch sizes differ'),
    ({'transform': 'dft'}, torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4), "unknown transform 'dft'"),
    ({}, 'feats', torch.rand(2, 3, 4, 4), 'student_feats must be a tensor'),
])
def test_bad_input_errors_name_the_problem(kwargs, fs, ft, msg):
    with pytest.raises((ValueError, TypeError), match=msg):
        dct_loss(fs, ft, **kwargs)


def test_stage_distances_and_module():
    fs, ft = _feats(0), _feats(1)
    d = dct_stage_distances(fs, ft)
    assert d.shape == (6, 3)
    assert torch.allclose(d.sum(1), dct_loss(fs, ft, reduction='none'), atol=1e-14, rtol=0)
    bounds = torch.tensor([math.sqrt(f.shape[-2] * f.shape[-1]) for f in fs], dtype=d.dtype)
    assert (d <= bounds).all()                       # spectra in [0, 1]: d ≤ √(HW)
    crit = DCTLoss(transform='fft-real', reduction='sum')
    assert crit(fs, ft).item() == dct_loss(fs, ft, transform='fft-real', reduction='sum').item()
    with pytest.raises(ValueError, match='unknown transform'):
        DCTLoss(transform='DCT')


# ---- beyond the paper: DKD, DIST, LS-KD, each against its equation written out with loops (numpy, float64) ---------
def _logits(seed, B=5, C=6, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, C, generator=g, dtype=torch.float64) * scale


def _softmax_row(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def _kl(p, q): return sum(p[i] * (math.log(p[i]) - math.log(q[i])) for i in range(len(p)) if p[i] > 0)


def _dkd_ref(zs, zt, y, alpha, beta, T):
    "α·T²·mean_b KL(b_T ‖ b_S) + β·T²·mean_b KL(p̂_T ‖ p̂_S): b = (p_t, 1 − p_t), p̂_j = exp(z_j/T) / Σ_{k≠t} exp(z_k/T)."
    zs, zt, y = zs.numpy(), zt.numpy(), y.numpy()
    tckd = nckd = 0.0
    for b in range(len(y)):
        t = y[b]
        bin_, hat = [], []
        for z in (zs[b], zt[b]):
            p = _softmax_row(z / T)
            bin_.append([p[t], 1 - p[t]])
            rest = [j for j in range(len(z)) if j != t]
            den = sum(math.exp(z[k] / T) for k in rest)
            hat.append([math.exp(z[j] / T) / den for j in rest])
        tckd += _kl(bin_[1], bin_[0])
        nckd += _kl(hat[1], hat[0])
    return T * T * (alpha * tckd + beta * nckd) / len(y)


@pytest.mark.parametrize('alpha, beta, T', [(1.0, 8.0, 4.0), (1.0, 0.5, 1.0), (0.3, 2.0, 2.0)])
def test_dkd_loss_matches_hand_formula(alpha, beta, T):
    zs, zt, y = _logits(0), _logits(1), torch.tensor([0, 5, 2, 2, 3])
    ref = _dkd_ref(zs, zt, y, alpha, beta, T)
    assert ref > 0 and abs(dkd_loss(zs, zt, y, alpha, beta, T).item() - ref) < 1e-12 * ref


def test_dkd_loss_decomposes_kd_zero_at_equal_logits_finite_when_probabilities_underflow():
    zs, zt = _logits(2, B=1), _logits(3, B=1)
    y = torch.tensor([4])
    pt = torch.softmax(zt / 4, 1)[0, 4].item()
    assert abs(kd_loss(zs, zt, 4.0).item() - dkd_loss(zs, zt, y, 1.0, 1 - pt, 4.0).item()) < 1e-12   # KD = TCKD + (1 − p_t)·NCKD
    assert dkd_loss(zt, zt.clone(), torch.tensor([1])).item() == 0.0
    zt = torch.tensor([[0., 2e3, -2e3, 5.]])                   # 1 − p_t and p_{-2e3} underflow in float32 even at T = 4
    zs = torch.randn(1, 4, requires_grad=True)
    out = dkd_loss(zs, zt, torch.tensor([1]), T=1.0)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(zs.grad).all()


def _pearson_ref(a, b, eps):
    am, bm = sum(a) / len(a), sum(b) / len(b)
    num = sum((x - am) * (w - bm) for x, w in zip(a, b))
    return num / (math.sqrt(sum((x - am) ** 2 for x in a)) * math.sqrt(sum((w - bm) ** 2 for w in b)) + eps)


def _dist_ref(zs, zt, beta, gamma, T, eps=0.0):
    "T²·(β·(1 − mean over samples of ρ(rows)) + γ·(1 − mean over classes of ρ(columns))) of the softmax probabilities."
    ys = [_softmax_row(z / T) for z in zs.numpy()]
    yt = [_softmax_row(z / T) for z in zt.numpy()]
    B, C = len(ys), len(ys[0])
    inter = 1 - sum(_pearson_ref(ys[b], yt[b], eps) for b in range(B)) / B
    intra = 1 - sum(_pearson_ref([ys[b][c] for b in range(B)], [yt[b][c] for b in range(B)], eps) for c in range(C)) / C
    return T * T * (beta * inter + gamma * intra)


@pytest.mark.parametrize('beta, gamma, T', [(1.0, 1.0, 1.0), (2.0, 2.0, 4.0), (1.0, 0.0, 1.0), (0.0, 1.0, 2.0)])
@pytest.mark.parametrize('eps', [0.0, 1e-8])
def test_dist_loss_matches_hand_formula(beta, gamma, T, eps):
    zs, zt = _logits(4), _logits(5)
    ref = _dist_ref(zs, zt, beta, gamma, T, eps)
    assert ref > 0 and abs(dist_loss(zs, zt, beta, gamma, T, eps=eps).item() - ref) < 1e-12 * ref
    if eps: return
    ys, yt = torch.softmax(zs / T, 1).numpy(), torch.softmax(zt / T, 1).numpy()        # and numpy's Pearson
    inter = 1 - np.mean([np.corrcoef(ys[b], yt[b])[0, 1] for b in range(5)])
    intra = 1 - np.mean([np.corrcoef(ys[:, c], yt[:, c])[0, 1] for c in range(6)])
    assert abs(dist_loss(zs, zt, beta, gamma, T).item() - T * T * (beta * inter + gamma * intra)) < 1e-12


def test_dist_loss_at_its_minimum_for_equal_logits_and_bounded():
    z = _logits(6)
    assert 0 <= dist_loss(z, z.clone()).item() < 1e-12
    assert dist_loss(z, z.clone(), eps=1e-8).item() > 1e-6        # the official ε: columns of tiny variance correlate < 1
    assert dist_loss(z, _logits(7)).item() > 1e-2
    assert dist_loss(z, -z).item() <= 4 * (1 + 1e-9)           # each relation term lies in [0, 2]
    one = torch.randn(1, 5, requires_grad=True)               # B = 1: every class column is constant and correlates 0
    out = dist_loss(one, torch.randn(1, 5))
    out.backward()
    assert torch.isfinite(one.grad).all() and 1 <= out.item() <= 3


def _zscore_ref(z):
    m = sum(z) / len(z)
    sd = math.sqrt(sum((x - m) ** 2 for x in z) / (len(z) - 1))      # Bessel's correction
    return np.array([(x - m) / (sd + 1e-7) for x in z])


def _ls_kd_ref(zs, zt, T):
    total = 0.0
    for a, b in zip(zs.numpy(), zt.numpy()):
        total += _kl(_softmax_row(_zscore_ref(b) / T), _softmax_row(_zscore_ref(a) / T))
    return T * T * total / zs.shape[0]


@pytest.mark.parametrize('T', [1.0, 2.0, 4.0])
def test_ls_kd_loss_matches_hand_formula(T):
    zs, zt = _logits(8), _logits(9, scale=10.0)
    ref = _ls_kd_ref(zs, zt, T)
    assert ref > 0 and abs(ls_kd_loss(zs, zt, T).item() - ref) < 1e-12 * ref


@pytest.mark.parametrize('a, b', [(1.0, 7.0), (0.01, 0.0), (25.0, -3.0)])
def test_ls_kd_loss_invariant_to_shift_and_positive_scale_of_either_network(a, b):
    zs, zt = _logits(10), _logits(11)
    base = ls_kd_loss(zs, zt).item()
    for s, t in ((a * zs + b, zt), (zs, a * zt + b), (a * zs + b, a * zt - b)):
        assert abs(ls_kd_loss(s, t).item() - base) < 1e-5 * base     # exact but for the 1e-7 in the z-score
    assert ls_kd_loss(a * zt + b, zt).item() < 1e-10                   # zero whenever z_S = a·z_T + b, a > 0
    assert ls_kd_loss(zt, zt.clone()).item() == 0.0 and ls_kd_loss(-zt, zt).item() > 0.1


@pytest.mark.parametrize('loss', [lambda s, t: dkd_loss(s, t, torch.tensor([0, 1, 2])), dist_loss, ls_kd_loss],
                         ids=['dkd', 'dist', 'lskd'])
def test_logit_losses_give_no_gradient_to_the_teacher_and_keep_float64(loss):
    zs, zt = torch.randn(3, 5, requires_grad=True), torch.randn(3, 5, requires_grad=True)
    loss(zs, zt).backward()
    assert zt.grad is None and zs.grad is not None and zs.grad.abs().sum() > 0
    assert loss(zs.detach().double(), zt.detach().double()).dtype == torch.float64
    with pytest.raises(ValueError, match='same'): loss(torch.randn(3, 5), torch.randn(3, 4))
