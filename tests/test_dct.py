"""dctkd.dct against scipy and against the formulas of original-method.md §1.4, written out here."""
import math

import numpy as np
import pytest
import scipy.fft
import torch

from dctkd import dct as D
from dctkd.dct import dct2, idct2, dct_matrix, fft_real, fft_abs, get_transform

SIZES = range(1, 65)


def test_dct2_matches_scipy_for_every_size_pair():
    rng = np.random.default_rng(0)
    worst = 0.0
    for h in SIZES:
        for w in SIZES:
            x = rng.standard_normal((2, h, w))
            ours = dct2(torch.from_numpy(x)).numpy()
            ref = scipy.fft.dctn(x, type=2, norm='ortho', axes=(-2, -1))
            worst = max(worst, float(np.abs(ours - ref).max()))
    assert worst < 1e-10, worst


def test_idct2_matches_scipy_and_inverts():
    rng = np.random.default_rng(1)
    for h, w in [(1, 1), (1, 9), (9, 1), (7, 7), (14, 28), (56, 56), (33, 64)]:
        X = rng.standard_normal((3, h, w))
        ref = scipy.fft.idctn(X, type=2, norm='ortho', axes=(-2, -1))
        assert np.abs(idct2(torch.from_numpy(X)).numpy() - ref).max() < 1e-10
        x = torch.from_numpy(rng.standard_normal((2, 3, h, w)))
        assert torch.allclose(idct2(dct2(x)), x, atol=1e-12, rtol=0)
        assert torch.allclose(dct2(idct2(x)), x, atol=1e-12, rtol=0)


@pytest.mark.parametrize('n', SIZES)
def test_basis_is_orthonormal_and_is_the_dct_ii(n):
    C = dct_matrix(n)
    assert torch.allclose(C @ C.T, torch.eye(n, dtype=C.dtype), atol=1e-13, rtol=0)
    # the textbook definition, element by element
    k, i = 3 % n, 5 % n
    s = math.sqrt(1 / n) if k == 0 else math.sqrt(2 / n)
    assert math.isclose(float(C[k, i]), s * math.cos(math.pi * (2 * i + 1) * k / (2 * n)), abs_tol=1e-15)


def test_parseval_and_dc_of_mean_removed_map():
    x = torch.randn(4, 5, 13, 21, dtype=torch.float64)
    X = dct2(x)
    assert torch.allclose(X.square().sum((-2, -1)), x.square().sum((-2, -1)), rtol=1e-12, atol=0)
    # the DC coefficient is sqrt(HW)·mean: zero once the mean is removed
    assert torch.allclose(X[..., 0, 0], x.mean((-2, -1)) * math.sqrt(13 * 21), rtol=1e-12, atol=0)
    Xc = dct2(x - x.mean((-2, -1), keepdim=True))
    assert Xc[..., 0, 0].abs().max() < 1e-12


def test_leading_dims_and_plain_2d():
    x = torch.randn(2, 3, 4, 6, 5, dtype=torch.float64)
    X = dct2(x)
    assert X.shape == x.shape
    assert torch.allclose(X[1, 2, 3], dct2(x[1, 2, 3]), atol=1e-14, rtol=0)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16, torch.float32, torch.int64])
def test_low_precision_inputs_are_computed_in_float32(dtype):
    x = (torch.rand(3, 14, 9) * 10).to(dtype)
    X = dct2(x)
    assert X.dtype == torch.float32
    ref = torch.from_numpy(scipy.fft.dctn(x.double().numpy(), type=2, norm='ortho', axes=(-2, -1)))
    assert torch.allclose(X.double(), ref, atol=1e-4, rtol=1e-5)
    assert idct2(x).dtype == torch.float32


def test_autocast_does_not_lower_precision():
    x = torch.rand(8, 28, 28)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        X = dct2(x)
    assert X.dtype == torch.float32
    assert torch.allclose(X, dct2(x), atol=1e-6, rtol=0)


def test_differentiable_and_gradient_is_the_inverse_transform():
    x = torch.randn(2, 5, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(dct2, (x,))
    assert torch.autograd.gradcheck(idct2, (x,))
    G = torch.randn(2, 5, 7, dtype=torch.float64)
    (dct2(x) * G).sum().backward()
    assert torch.allclose(x.grad, idct2(G), atol=1e-12, rtol=0)   # orthonormal: the adjoint is the inverse


def test_basis_cache_is_per_size_dtype_device_and_safe_after_inference_mode():
    D._BASES.clear()
    with torch.inference_mode():
        dct2(torch.rand(2, 11, 12))
    assert {(k[0], k[1]) for k in D._BASES} == {(11, torch.float32), (12, torch.float32)}
    x = torch.rand(2, 11, 12, requires_grad=True)
    dct2(x).sum().backward()             # a basis cached under inference mode must still work with autograd
    assert x.grad is not None
    assert dct_matrix(11, torch.float32) is dct_matrix(11, torch.float32)
    assert dct_matrix(11, torch.float64) is not dct_matrix(11, torch.float32)


@pytest.mark.parametrize('bad, msg', [(torch.ones(5), 'at least 2 dims'), (torch.ones(3, 3, dtype=torch.complex64), 'real tensor'),
                                      (np.ones((3, 3)), 'torch.Tensor')])
def test_bad_inputs_say_what_is_wrong(bad, msg):
    with pytest.raises((TypeError, ValueError), match=msg):
        dct2(bad)


def _re_dft_by_formula(a):
    "R(k, m) = Σ_h Σ_w a(h, w) cos(2π(kh/H + mw/W)), summed term by term (original-method.md §1.4)."
    H, W = a.shape
    R = np.zeros((H, W))
    for k in range(H):
        for m in range(W):
            for h in range(H):
                for w in range(W):
                    R[k, m] += a[h, w] * math.cos(2 * math.pi * (k * h / H + m * w / W))
    return R


@pytest.mark.parametrize('shape', [(1, 1), (5, 5), (4, 7), (6, 3)])
def test_fft_variants_follow_the_original_formulas(shape):
    rng = np.random.default_rng(2)
    a = rng.random(shape)
    a = a - a.mean()
    R = _re_dft_by_formula(a)
    assert np.abs(fft_real(torch.from_numpy(a)).numpy() - R).max() < 1e-10
    assert np.abs(fft_abs(torch.from_numpy(a)).numpy() - np.abs(R)).max() < 1e-10


def test_fft_real_is_even_symmetric_and_not_a_dct():
    a = torch.rand(3, 14, 14, dtype=torch.float64)
    R = fft_real(a)
    k = torch.arange(14)
    mirrored = R[:, (-k) % 14][:, :, (-k) % 14]
    assert torch.allclose(R, mirrored, atol=1e-10, rtol=0)
    assert not torch.allclose(R, dct2(a), atol=1e-3)


def test_transform_registry():
    assert get_transform('dct') is dct2 and get_transform('fft-real') is fft_real and get_transform('fft-abs') is fft_abs
    with pytest.raises(ValueError, match="unknown transform 'fft'"):
        get_transform('fft')
