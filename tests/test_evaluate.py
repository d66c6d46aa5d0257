"""dctkd.evaluate: exact metrics against hand counts, SSIM against a numpy/scipy oracle, the evaluation loop
against metrics computed by hand on the same logits, and the counts summed under a real 2-process gloo group."""
import copy
import functools
import math
import os

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
import torch.nn.functional as F
from torch import nn

from dctkd.evaluate import (Metrics, _show_progress, attention_ssim, average_crops, confusion_figure, evaluate_model,
                            format_report, per_class_figure, ssim)

KEYS = ('top1', 'top5', 'mca_present', 'mca_all', 'loss')
EKEYS = ('top1', 'top2', 'mca_present', 'mca_all', 'loss')   # evaluate_model tests: 4 classes, topk=(1, 2)


def _close(a, b, tol=1e-9):
    return all(math.isclose(x, y, rel_tol=tol, abs_tol=tol) or (math.isnan(x) and math.isnan(y)) for x, y in zip(a, b))


def _data(seed, n=37, C=6, absent=(4,)):
    "Random logits and labels; classes in `absent` never occur as labels."
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, C, generator=g, dtype=torch.float64)
    labels = [c for c in range(C) if c not in absent]
    y = torch.tensor(labels)[torch.randint(0, len(labels), (n,), generator=g)]
    return z, y


# ---- Metrics: hand-computed values ------------------------------------------------------------------------------
def test_metrics_hand_values():
    # 5 classes; class 4 never occurs. Scores are listed best first per sample (a permutation of the classes).
    ranking = [[0, 1, 2, 3, 4], [1, 0, 2, 3, 4], [2, 3, 0, 1, 4],   # y=0: top-1 hit, top-2 hit, top-3 hit
               [1, 2, 3, 0, 4], [2, 1, 0, 3, 4],                    # y=1: top-1 hit, top-2 hit
               [2, 0, 1, 3, 4],                                     # y=2: top-1 hit
               [0, 1, 2, 4, 3], [3, 2, 1, 0, 4]]                    # y=3: miss everywhere in top-3, top-1 hit
    y = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3])
    z = torch.zeros(8, 5)
    for i, r in enumerate(ranking): z[i, r] = torch.tensor([5., 4., 3., 2., 1.])
    m = Metrics(5, topk=(1, 2, 3))
    for sl in (slice(0, 3), slice(3, 6), slice(6, 8)): m.update(z[sl], y[sl])
    r = m.compute()
    # top-1 hits: samples 0, 3, 5, 7 -> 4/8; top-2 adds 1 and 4 -> 6/8; top-3 adds 2 -> 7/8
    assert (r['top1'], r['top2'], r['top3']) == (50.0, 75.0, 87.5)
    # per class: class 0 1/3, class 1 1/2, class 2 1/1, class 3 1/2, class 4 absent
    expect = [100 / 3, 50.0, 100.0, 50.0]
    assert torch.allclose(r['per_class'][:4], torch.tensor(expect, dtype=torch.float64))
    assert torch.isnan(r['per_class'][4])
    assert math.isclose(r['mca_present'], sum(expect) / 4)
    assert math.isclose(r['mca_all'], sum(expect) / 5)
    assert r['mca_present'] != r['mca_all'] and (r['n'], r['n_present'], r['num_classes']) == (8, 4, 5)
    cm = np.zeros((5, 5), np.int64)
    np.add.at(cm, (y.numpy(), np.array([rk[0] for rk in ranking])), 1)
    assert r['confusion'].dtype == torch.int64 and np.array_equal(r['confusion'].numpy(), cm)
    # loss: exact mean CE per sample; every sample's log-softmax is one of five fixed values
    lsm = torch.log_softmax(torch.tensor([5., 4., 3., 2., 1.], dtype=torch.float64), 0)
    rank_of_y = [rk.index(int(t)) for rk, t in zip(ranking, y)]
    assert math.isclose(r['loss'], -sum(lsm[k].item() for k in rank_of_y) / 8, rel_tol=1e-6)


def test_partial_last_batch_is_exact_and_the_per_batch_mean_is_not():
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    pred = torch.tensor([0, 1, 2, 0, 1, 2, 1, 2, 2, 1])     # right: 1,1,1,1 | 1,1,0,0 | 1,0 -> 7 of 10
    z = F.one_hot(pred, 3).double()
    m = Metrics(3, topk=(1,))
    batches = [slice(0, 4), slice(4, 8), slice(8, 10)]
    for sl in batches: m.update(z[sl], y[sl])
    r = m.compute()
    assert r['top1'] == 70.0 and r['n'] == 10
    whole = Metrics(3, topk=(1,)).update(z, y).compute()
    assert r['top1'] == whole['top1'] and torch.equal(r['confusion'], whole['confusion'])
    per_batch = np.mean([100 * (pred[sl] == y[sl]).double().mean().item() for sl in batches])   # the original's
    assert math.isclose(per_batch, (100 + 50 + 50) / 3) and abs(per_batch - r['top1']) > 3
    # and the mean CE is per sample, not a mean of per-batch means
    assert math.isclose(r['loss'], F.cross_entropy(z, y).item(), rel_tol=1e-12)


def test_mca_all_counts_absent_classes_as_zero():
    z, y = _data(1, n=200, C=8, absent=(2, 5, 7))
    r = Metrics(8).update(z, y).compute()
    assert r['n_present'] == 5
    assert math.isclose(r['mca_all'], r['mca_present'] * 5 / 8)
    recall = [(z.argmax(1)[y == c] == c).double().mean().item() * 100 for c in range(8) if c not in (2, 5, 7)]
    assert math.isclose(r['mca_present'], float(np.mean(recall)))


def test_topk_ties_follow_torch_topk_and_lie_between_strict_and_lenient():
    g = torch.Generator().manual_seed(0)
    z = torch.randint(0, 3, (64, 10), generator=g).float()          # many exact ties
    z[:8] = 0                                                      # some rows entirely tied
    y = torch.randint(0, 10, (64,), generator=g)
    m = Metrics(10, topk=(1, 5))
    for i in range(0, 64, 7): m.update(z[i:i + 7], y[i:i + 7])
    r = m.compute()
    idx = z.topk(5, dim=1).indices                                  # one topk call with the largest k
    for k in (1, 5):
        assert r[f'top{k}'] == 100 * (idx[:, :k] == y[:, None]).any(1).double().mean().item()
        kth = z.sort(1, descending=True).values[:, k - 1]
        zy = z.gather(1, y[:, None])[:, 0]
        strict, lenient = 100 * (zy > kth).double().mean().item(), 100 * (zy >= kth).double().mean().item()
        assert strict <= r[f'top{k}'] <= lenient and strict < lenient
    assert r['top1'] == 100 * r['confusion'].trace().item() / 64    # top-1 and the confusion matrix agree


def test_topk_larger_than_num_classes_clamps():
    z, y = _data(2, n=20, C=3, absent=())
    r = Metrics(3, topk=(1, 5)).update(z, y).compute()
    assert r['top5'] == 100.0 and 'top5' in r
    with pytest.raises(ValueError): Metrics(3, topk=(0,))
    with pytest.raises(ValueError): Metrics(0)


def test_merge_of_halves_equals_whole_and_reset():
    z, y = _data(3)
    whole = Metrics(6, (1, 3)).update(z, y)
    a, b = Metrics(6, (1, 3)).update(z[:11], y[:11]), Metrics(6, (1, 3)).update(z[11:], y[11:])
    merged = a.merge(b).compute()
    w = whole.compute()
    assert torch.equal(merged['confusion'], w['confusion'])
    assert _close([merged[k] for k in ('top1', 'top3', 'mca_present', 'mca_all', 'loss')],
                  [w[k] for k in ('top1', 'top3', 'mca_present', 'mca_all', 'loss')], 1e-12)
    with pytest.raises(ValueError): a.merge(Metrics(7, (1, 3)))
    with pytest.raises(ValueError): a.merge(Metrics(6, (1, 5)))
    a.reset()
    r = a.compute()
    assert r['n'] == 0 and math.isnan(r['top1']) and math.isnan(r['mca_present']) and r['confusion'].sum() == 0


def test_input_checks():
    z, y = _data(4)
    with pytest.raises(ValueError, match=r'\[0, 6\)'): Metrics(6).update(z, y + 6)
    with pytest.raises(ValueError, match='-1'): Metrics(6).update(z, y - 1)
    with pytest.raises(ValueError, match=r'\(B, 5\)'): Metrics(5).update(z, y)
    with pytest.raises(ValueError, match='targets'): Metrics(6).update(z, y[:-1])
    with pytest.raises(TypeError, match='integer'): Metrics(6).update(z, y.float())
    assert Metrics(6).update(z[:0], y[:0]).n == 0


def test_state_is_usable_after_updates_inside_inference_mode():
    z, y = _data(5)
    m = Metrics(6)
    with torch.inference_mode(): m.update(z, y)
    assert not m.confusion.is_inference()
    m.update(z, y).merge(Metrics(6).update(z, y))      # in-place adds outside inference mode still work
    assert m.n == 3 * len(y)


def test_all_reduce_without_process_group_is_a_no_op():
    z, y = _data(6)
    m = Metrics(6).update(z, y)
    before = m.compute()
    after = m.all_reduce().compute()
    assert torch.equal(before['confusion'], after['confusion'])


class Tiny(nn.Module):
    "A small CNN returning (logits, [two spatial stages, the pooled vector]); has BN and dropout."
    def __init__(self, C=4, width=4):
        super().__init__()
        self.c1, self.bn = nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width)
        self.c2, self.drop, self.fc = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.Dropout(0.5), nn.Linear(2 * width, C)

    def forward(self, x):
        f1 = self.bn(self.c1(x)).relu()
        f2 = self.c2(f1).relu()
        v = f2.mean((2, 3))
        return self.fc(self.drop(v)), [f1, f2, v]


def _ddp_worker(rank, world, init, out_dir):
    import torch.distributed as dist
    dist.init_process_group('gloo', init_method=init, rank=rank, world_size=world)
    try:
        z, y = _data(7, n=53, C=6)
        shard = slice(rank * 30, 53 if rank else 30)       # unequal shards: 30 and 23 samples
        m = Metrics(6, (1, 3))
        for i in range(shard.start, shard.stop, 8): m.update(z[i:min(i + 8, shard.stop)], y[i:min(i + 8, shard.stop)])
        res = m.all_reduce().compute()
        torch.manual_seed(0)
        net = Tiny(6)
        X = torch.randn(53, 3, 8, 8, generator=torch.Generator().manual_seed(1))
        Y = torch.arange(53) % 6
        loader = [(X[i:min(i + 10, shard.stop)], Y[i:min(i + 10, shard.stop)]) for i in range(shard.start, shard.stop, 10)]
        ev = evaluate_model(net, loader, teacher=net, num_classes=6, progress=False)
        torch.save({'metrics': res, 'evaluate': ev}, os.path.join(out_dir, f'rank{rank}.pt'))
    finally:
        dist.destroy_process_group()


def test_all_reduce_under_a_real_two_process_gloo_group(tmp_path):
    import torch.multiprocessing as mp
    init = f'file://{tmp_path / "store"}'
    mp.spawn(_ddp_worker, args=(2, init, str(tmp_path)), nprocs=2, join=True)
    z, y = _data(7, n=53, C=6)
    single = Metrics(6, (1, 3)).update(z, y).compute()
    torch.manual_seed(0)
    net = Tiny(6)
    X = torch.randn(53, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    ev_single = evaluate_model(net, [(X[i:i + 10], (torch.arange(53) % 6)[i:i + 10]) for i in range(0, 53, 10)],
                               teacher=net, num_classes=6, progress=False)
    for rank in range(2):
        got = torch.load(tmp_path / f'rank{rank}.pt', weights_only=False)
        res, ev = got['metrics'], got['evaluate']
        assert res['n'] == 53 and torch.equal(res['confusion'], single['confusion'])
        assert _close([res[k] for k in ('top1', 'top3', 'mca_present', 'mca_all', 'loss')],
                      [single[k] for k in ('top1', 'top3', 'mca_present', 'mca_all', 'loss')], 1e-12)
        assert ev['n'] == 53 and torch.equal(ev['confusion'], ev_single['confusion'])
        assert _close([ev['top1'], ev['loss'], *ev['attention_ssim']], [ev_single['top1'], ev_single['loss'], *ev_single['attention_ssim']], 1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_metrics_on_cuda_match_cpu():
    z, y = _data(8, n=300, C=6)
    r_gpu = Metrics(6).update(z.cuda(), y.cuda()).compute()
    r_cpu = Metrics(6).update(z, y).compute()
    assert torch.equal(r_gpu['confusion'], r_cpu['confusion']) and _close([r_gpu[k] for k in KEYS], [r_cpu[k] for k in KEYS], 1e-9)


# ---- SSIM against an independent numpy/scipy oracle -------------------------------------------------------------
def _odd(w, n):
    w = min(w, n)
    return w if w % 2 else w - 1


def ref_ssim(a, b, window=7, gaussian=True, sigma=1.5, padding='valid', L=1.0):
    "SSIM of two (H, W) numpy maps with scipy.ndimage filters (Wang et al. 2004)."
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    H, W = a.shape
    wh, ww = (_odd(window, H), _odd(window, W)) if padding == 'valid' else (window, window)
    mode = 'reflect' if padding == 'valid' else 'constant'
    if gaussian: filt = lambda x: ndi.gaussian_filter(x, sigma, mode=mode, cval=0.0, radius=(wh // 2, ww // 2))
    else: filt = lambda x: ndi.uniform_filter(x, size=(wh, ww), mode=mode, cval=0.0)
    mu_a, mu_b = filt(a), filt(b)
    va, vb, cov = filt(a * a) - mu_a ** 2, filt(b * b) - mu_b ** 2, filt(a * b) - mu_a * mu_b
    C1, C2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    s = (2 * mu_a * mu_b + C1) * (2 * cov + C2) / ((mu_a ** 2 + mu_b ** 2 + C1) * (va + vb + C2))
    if padding == 'valid': s = s[wh // 2:H - wh // 2, ww // 2:W - ww // 2]
    return s.mean()


def brute_ssim_uniform(a, b, w, L=1.0):
    "SSIM with a uniform w×w window by explicit loops over window positions (population statistics)."
    C1, C2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    vals = []
    for i in range(a.shape[0] - w + 1):
        for j in range(a.shape[1] - w + 1):
            p, q = a[i:i + w, j:j + w], b[i:i + w, j:j + w]
            cov = ((p - p.mean()) * (q - q.mean())).mean()
            vals.append((2 * p.mean() * q.mean() + C1) * (2 * cov + C2) / ((p.mean() ** 2 + q.mean() ** 2 + C1) * (p.var() + q.var() + C2)))
    return float(np.mean(vals))


@pytest.mark.parametrize('gaussian', [True, False])
@pytest.mark.parametrize('shape', [(28, 28), (14, 9), (7, 7), (4, 6), (2, 3), (1, 1), (12, 1)])
def test_ssim_matches_scipy_reference(shape, gaussian):
    g = torch.Generator().manual_seed(hash(shape) % 1000)
    a = torch.rand(3, *shape, generator=g, dtype=torch.float64)
    b = (a + 0.2 * torch.randn(3, *shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    got = ssim(a, b, gaussian=gaussian)
    ref = torch.tensor([ref_ssim(a[i].numpy(), b[i].numpy(), gaussian=gaussian) for i in range(3)], dtype=torch.float64)
    assert got.shape == (3,) and torch.allclose(got, ref, rtol=1e-10, atol=1e-12)
    # float32 maps are computed in float32 and stay close
    assert torch.allclose(ssim(a.float(), b.float(), gaussian=gaussian).double(), ref, atol=2e-5)


@pytest.mark.parametrize('window', [3, 5])
def test_ssim_uniform_matches_explicit_window_loops(window):
    g = torch.Generator().manual_seed(window)
    a, b = torch.rand(10, 9, generator=g, dtype=torch.float64), torch.rand(10, 9, generator=g, dtype=torch.float64)
    assert math.isclose(ssim(a[None], b[None], window, gaussian=False).item(), brute_ssim_uniform(a.numpy(), b.numpy(), window), rel_tol=1e-10)


@pytest.mark.parametrize('window', [7, 11])
def test_ssim_zero_padding_matches_scipy_constant_mode(window):
    g = torch.Generator().manual_seed(0)
    for s in (7, 14):
        a, b = torch.rand(2, s, s, generator=g, dtype=torch.float64), torch.rand(2, s, s, generator=g, dtype=torch.float64)
        got = ssim(a, b, window, padding='zeros')
        ref = [ref_ssim(a[i].numpy(), b[i].numpy(), window, padding='zeros') for i in range(2)]
        assert torch.allclose(got, torch.tensor(ref, dtype=torch.float64), rtol=1e-10)


def test_ssim_properties():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 16, 16, generator=g)
    y = torch.rand(6, 16, 16, generator=g)
    assert torch.allclose(ssim(x, x), torch.ones(6))
    assert torch.equal(ssim(x, y), ssim(y, x))
    assert (ssim(x, y) <= 1).all() and (ssim(x, y) < 0.5).all()               # unrelated noise maps
    assert (ssim(x, 1 - x) < 0).all()                                         # anti-correlated maps
    noise = torch.randn(6, 16, 16, generator=g)
    levels = torch.stack([ssim(x, x + s * noise) for s in (0.0, 0.01, 0.05, 0.1, 0.3, 1.0)])
    assert (levels.diff(dim=0) < 0).all() and torch.allclose(levels[0], torch.ones(6))
    c = torch.full((2, 5, 5), 0.4)
    assert torch.allclose(ssim(c, c), torch.ones(2))                          # constant maps are defined
    one = torch.tensor([[[0.2]]]), torch.tensor([[[0.7]]])
    assert math.isclose(ssim(*one).item(), (2 * .14 + 1e-4) / (.04 + .49 + 1e-4), rel_tol=1e-6)
    assert ssim(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)).shape == (2, 3)
    assert math.isclose(ssim(2 * x, 2 * y, data_range=2.0)[0].item(), ssim(x, y)[0].item(), rel_tol=1e-5)
    with pytest.raises(ValueError): ssim(x, y[:, :8])
    with pytest.raises(ValueError): ssim(x, y, window=4)
    with pytest.raises(ValueError): ssim(x, y, padding='same')


# ---- attention_ssim ---------------------------------------------------------------------------------------------
def _ref_attention(f):
    "Min-max-normalised channel mean of squares of a (C, H, W) numpy array."
    a = (f ** 2).mean(0)
    return (a - a.min()) / (a.max() - a.min()) if a.max() > a.min() else np.zeros_like(a)


def test_attention_ssim_with_stage_size_mismatch():
    g = torch.Generator().manual_seed(0)
    fs = [torch.randn(3, 4, 16, 16, generator=g, dtype=torch.float64).relu(), torch.randn(3, 4, 8, 8, generator=g, dtype=torch.float64),
          torch.randn(3, 4, generator=g, dtype=torch.float64)]                       # student: 2× the teacher's size, + pooled vector
    ft = [torch.randn(3, 6, 8, 8, generator=g, dtype=torch.float64).relu(), torch.randn(3, 6, 8, 8, generator=g, dtype=torch.float64),
          torch.randn(3, 6, generator=g, dtype=torch.float64)]
    got = attention_ssim(fs, ft, reduction='none')
    assert got.shape == (3, 2)
    for i in range(3):
        s0 = fs[0][i].numpy().reshape(4, 8, 2, 8, 2).mean((2, 4))                     # 2×2 average pooling, by hand
        assert math.isclose(got[i, 0].item(), ref_ssim(_ref_attention(s0), _ref_attention(ft[0][i].numpy())), rel_tol=1e-5)
        assert math.isclose(got[i, 1].item(), ref_ssim(_ref_attention(fs[1][i].numpy()), _ref_attention(ft[1][i].numpy())), rel_tol=1e-5)
    assert torch.allclose(attention_ssim(fs, ft), got.mean(0))
    # pooling goes whichever side is larger, and the result is symmetric
    assert torch.allclose(attention_ssim(ft, fs), attention_ssim(fs, ft))
    # the attention is blind to a rescaling of the features (min-max) and equal features give 1
    assert torch.allclose(attention_ssim([3 * f for f in fs], ft), attention_ssim(fs, ft))
    assert torch.allclose(attention_ssim(fs, fs), torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match='stages'): attention_ssim(fs, ft[:1])
    with pytest.raises(ValueError, match='batch'): attention_ssim(fs, [f[:2] for f in ft])


# ---- evaluate_model ---------------------------------------------------------------------------------------------
def _setup(n=23, C=4, seed=1, size=8):
    "A Tiny net fitted for a few steps on the first samples (so that its predictions are varied), and the data."
    net, X, Y = _fitted(n, C, seed, size)
    return copy.deepcopy(net), X, Y


@functools.lru_cache
def _fitted(n, C, seed, size):
    torch.manual_seed(seed)
    net = Tiny(C)
    g = torch.Generator().manual_seed(seed + 1)
    X, Y = torch.randn(n, 3, size, size, generator=g), torch.randint(0, C - 1, (n,), generator=g)   # class C-1 absent
    opt = torch.optim.Adam(net.parameters(), 0.05)
    for _ in range(30):
        opt.zero_grad(); F.cross_entropy(net(X[:12])[0], Y[:12]).backward(); opt.step()
    return net, X, Y


def _loader(X, Y, bs=5, index=True):
    ds = torch.utils.data.TensorDataset(X, Y, torch.arange(len(Y))) if index else torch.utils.data.TensorDataset(X, Y)
    return torch.utils.data.DataLoader(ds, batch_size=bs)


def test_evaluate_matches_metrics_by_hand_and_restores_modes():
    net, X, Y = _setup()
    net.train(); net.bn.eval()                                         # a mixed state that .train() would not restore
    res = evaluate_model(net, _loader(X, Y), topk=(1, 2), progress=False, predictions=True)
    assert net.training and not net.bn.training and net.drop.training
    with torch.no_grad(): z = net.eval()(X)[0]
    ref = Metrics(4, (1, 2)).update(z, Y).compute()
    assert _close([res[k] for k in EKEYS], [ref[k] for k in EKEYS], 1e-6) and torch.equal(res['confusion'], ref['confusion'])
    assert math.isclose(res['loss'], F.cross_entropy(z, Y).item(), rel_tol=1e-5)
    assert res['n'] == 23 and res['n_present'] == 3 and math.isclose(res['mca_all'], res['mca_present'] * 3 / 4)
    assert torch.equal(res['predictions'], z.argmax(1)) and torch.equal(res['targets'], Y) and torch.equal(res['indices'], torch.arange(23))
    assert 'attention_ssim' not in res and 'crops' not in res
    assert 0 < res['top1'] < res['top2'] < 100 and len(res['predictions'].unique()) == 3   # not a degenerate model
    # eval mode stays eval; (images, labels) batches without index; a model returning bare logits
    net.eval()
    res2 = evaluate_model(lambda_model(net), [(X[:10], Y[:10]), (X[10:], Y[10:])], topk=(1, 2), progress=False, predictions=True)
    assert not net.training and 'indices' not in res2
    assert _close([res2[k] for k in EKEYS], [ref[k] for k in EKEYS], 1e-6)


class lambda_model(nn.Module):
    "Wraps a (logits, feats) model to return bare logits."
    def __init__(self, m): super().__init__(); self.m = m
    def forward(self, x): return self.m(x)[0]


def test_evaluate_restores_modes_after_an_error():
    net, X, Y = _setup()
    net.train()
    def bad():
        yield X[:5], Y[:5]
        raise RuntimeError('loader broke')
    with pytest.raises(RuntimeError, match='loader broke'): evaluate_model(net, bad(), topk=(1, 2), progress=False)
    assert all(m.training for m in net.modules())


def test_evaluate_with_teacher_adds_attention_ssim():
    net, X, Y = _setup(n=17)
    torch.manual_seed(5)
    teacher = Tiny(4, width=6)
    res = evaluate_model(net, _loader(X, Y, bs=6), teacher=teacher, topk=(1, 2), progress=False)
    with torch.no_grad():
        _, fs = net.eval()(X)
        tz, ft = teacher.eval()(X)
    per = attention_ssim(fs, ft, reduction='none').double()           # (17, 2): per sample, per stage
    ok = tz.argmax(1) == Y
    assert 0 < ok.sum() < len(Y)
    assert np.allclose(res['attention_ssim'], per.mean(0).numpy(), rtol=1e-5)
    assert np.allclose(res['attention_ssim_teacher_correct'], per[ok].mean(0).numpy(), rtol=1e-5)
    assert math.isclose(res['attention_ssim_mean'], per.mean().item(), rel_tol=1e-5)
    assert math.isclose(res['teacher_top1'], 100 * ok.double().mean().item())
    same = evaluate_model(net, _loader(X, Y), teacher=net, topk=(1, 2), progress=False)
    assert np.allclose(same['attention_ssim'], 1.0)
    with pytest.raises(ValueError, match='features'): evaluate_model(lambda_model(net), _loader(X, Y), teacher=teacher, topk=(1, 2), progress=False)


@pytest.mark.parametrize('how', ['softmax', 'logits'])
def test_ten_crop_averaging_equals_own_averaging(how):
    net, _, Y = _setup(n=9)
    X10 = torch.randn(9, 10, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    res = evaluate_model(net, _loader(X10, Y, bs=4), ten_crop=True, crop_average=how, topk=(1, 2), progress=False, predictions=True)
    with torch.no_grad(): z = net.eval()(X10.reshape(90, 3, 8, 8))[0].reshape(9, 10, 4)
    own = torch.log(torch.stack([torch.softmax(z[i], 1).mean(0) for i in range(9)])) if how == 'softmax' else z.mean(1)
    ref = Metrics(4, (1, 2)).update(own, Y).compute()
    assert _close([res[k] for k in EKEYS], [ref[k] for k in EKEYS], 1e-5) and res['crops'] == 10
    assert torch.equal(res['predictions'], own.argmax(1))
    assert torch.allclose(average_crops(z, how), own, atol=1e-6)
    with pytest.raises(ValueError, match='ten_crop=True'): evaluate_model(net, _loader(X10, Y), topk=(1, 2), progress=False)
    with pytest.raises(ValueError, match='n_crops'): evaluate_model(net, _loader(X10[:, 0], Y), ten_crop=True, topk=(1, 2), progress=False)


def test_evaluate_resnet18_with_teacher_at_32px():
    from dctkd.models import build_model
    torch.manual_seed(0)
    s, t = build_model('resnet18', 3), build_model('resnet18', 3)
    X, Y = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1, 2])
    res = evaluate_model(s, _loader(X, Y, bs=4), teacher=t, progress=False)
    assert len(res['attention_ssim']) == 4 and all(-1 <= v <= 1 for v in res['attention_ssim'])
    assert math.isclose(res['attention_ssim'][-1], 1.0)                 # 1×1 stage: constant maps
    with torch.no_grad(): z = s.eval()(X)[0]
    assert math.isclose(res['top1'], 100 * (z.argmax(1) == Y).double().mean().item())


def test_evaluate_empty_loader_and_progress_switch(monkeypatch):
    net, _, _ = _setup()
    with pytest.raises(ValueError, match='no batches'): evaluate_model(net, [], progress=False)
    r = evaluate_model(net, [], num_classes=4, progress=False)
    assert r['n'] == 0 and math.isnan(r['top1'])
    assert evaluate_model(net, [], num_classes=4, ten_crop=True, progress=False)['n'] == 0
    assert not _show_progress(False)
    monkeypatch.setattr('sys.stderr.isatty', lambda: False, raising=False)
    assert not _show_progress(True)
    monkeypatch.setattr('sys.stderr.isatty', lambda: True, raising=False)
    assert _show_progress(True)


# ---- figures and report -----------------------------------------------------------------------------------------
def test_confusion_figure(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    z, y = _data(9, n=300, C=6, absent=(5,))
    r = Metrics(6).update(z, y).compute()
    names = ['a', 'b', 'c', 'd', 'e', 'f']
    fig = confusion_figure(r['confusion'], names)
    assert len(fig.axes) == 2 and [t.get_text() for t in fig.axes[0].get_xticklabels()] == names
    img = fig.axes[0].images[0].get_array()
    assert np.allclose(np.diag(img)[:5], r['per_class'][:5].numpy() / 100) and np.allclose(img[:5].sum(1), 1)
    assert np.allclose(confusion_figure(r['confusion'].numpy(), normalize=False).axes[0].images[0].get_array(), r['confusion'].numpy())
    # many classes: the most frequent are kept, rows still normalised by the full class count
    cm = torch.zeros(50, 50, dtype=torch.int64)
    cm[torch.arange(50), torch.arange(50)] = torch.arange(50)              # class c has c samples, all right
    cm[49, 0] = 49                                                         # class 49: half wrong (to a dropped class)
    fig = confusion_figure(cm, [f'c{i}' for i in range(50)], max_classes=8)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == [f'c{i}' for i in range(42, 50)]
    assert 'the 8 most frequent of 50 classes' in fig.axes[0].get_title()
    assert math.isclose(fig.axes[0].images[0].get_array()[-1, -1], 0.5)
    with pytest.raises(ValueError): confusion_figure(r['confusion'], names[:3])
    assert os.listdir(tmp_path) == []                                      # nothing written


def test_per_class_figure(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    acc = torch.tensor([50., float('nan'), 90., 10., 70.], dtype=torch.float64)
    fig = per_class_figure(acc, ['a', 'b', 'c', 'd', 'e'])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ['d', 'a', 'e', 'c']        # bottom to top: best on top
    assert [p.get_width() for p in ax.patches] == [10., 50., 70., 90.]
    assert '1 absent classes not shown' in ax.get_title()
    many = torch.arange(100, dtype=torch.float64)
    ax = per_class_figure(many, max_classes=10).axes[0]
    assert len(ax.patches) == 10 and 'best 5 and worst 5 of 100 classes' in ax.get_title()
    assert [p.get_width() for p in ax.patches] == [0., 1., 2., 3., 4., 95., 96., 97., 98., 99.]   # sorted, bottom to top
    assert os.listdir(tmp_path) == []


def test_format_report():
    z, y = _data(10, n=120, C=14, absent=(3,))
    r = Metrics(14).update(z, y).compute()
    names = [f'class_{i}' for i in range(14)]
    md = format_report(r, names, n_classes=2)
    assert f"| top-1 accuracy | {r['top1']:.2f} % |" in md and '| samples | 120 |' in md
    assert f"present classes (13 of 14) | {r['mca_present']:.2f} %" in md
    assert f"all 14 classes (absent count 0; the original MCA) | {r['mca_all']:.2f} %" in md
    assert '1 of 14 classes have no sample' in md
    acc = r['per_class']
    worst = int(torch.where(acc.isnan(), torch.inf, acc).argmin())
    best = int(torch.where(acc.isnan(), -torch.inf, acc).argmax())
    w_sec, b_sec = md.split('### Worst 2 classes')[1].split('### Best 2 classes')
    assert f'| {names[worst]} |' in w_sec and f'| {names[best]} |' in b_sec and f'| {names[3]} |' not in md
    small = format_report(Metrics(3).update(*_data(11, n=30, C=3, absent=())).compute())
    assert '### Per-class accuracy' in small and 'no sample' not in small
