"""dctkd.attention against numpy, and its safety on degenerate maps."""
import numpy as np
import pytest
import torch

from dctkd.attention import attention_map, minmax_norm, max_norm


def test_attention_map_is_channel_mean_of_squares():
    f = np.random.default_rng(0).standard_normal((3, 5, 7, 6))
    ref = (f ** 2).mean(axis=1)
    out = attention_map(torch.from_numpy(f))
    assert out.shape == (3, 7, 6) and out.dtype == torch.float64
    assert np.abs(out.numpy() - ref).max() < 1e-14


def test_attention_map_independent_of_repeated_channels_and_sign():
    f = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    assert torch.allclose(attention_map(f), attention_map(torch.cat([f, -f, f, f], 1)), atol=1e-14, rtol=0)


def test_attention_map_half_precision_in_float32():
    f = torch.randn(2, 16, 7, 7)
    out = attention_map(f.half())
    assert out.dtype == torch.float32
    assert torch.allclose(out, attention_map(f.half().float()), atol=1e-6)


@pytest.mark.parametrize('shape', [(2, 7, 7), (7, 7), (3, 5, 1, 9)])
def test_norms_match_numpy(shape):
    x = np.random.default_rng(1).random(shape) * 4 - 1
    flat = x.reshape(*shape[:-2], -1)
    lo, hi = flat.min(-1)[..., None, None], flat.max(-1)[..., None, None]
    assert np.abs(minmax_norm(torch.from_numpy(x)).numpy() - (x - lo) / (hi - lo)).max() < 1e-14
    xp = np.abs(x)  # max_norm is meant for non-negative maps and spectra
    flat = xp.reshape(*shape[:-2], -1)
    lo, hi = flat.min(-1)[..., None, None], flat.max(-1)[..., None, None]
    assert np.abs(max_norm(torch.from_numpy(xp)).numpy() - (xp - lo) / hi).max() < 1e-14


@pytest.mark.parametrize('norm', [minmax_norm, max_norm])
@pytest.mark.parametrize('scale', [1e-6, 1e-3, 1.0, 1e4])
def test_norms_are_scale_invariant(norm, scale):
    x = torch.rand(4, 9, 9, dtype=torch.float64)
    assert torch.allclose(norm(scale * x), norm(x), atol=1e-12, rtol=0)


@pytest.mark.parametrize('norm', [minmax_norm, max_norm])
def test_constant_zero_and_1x1_maps_give_zeros_and_finite_gradients(norm):
    for x in (torch.full((2, 5, 5), 3.0), torch.zeros(2, 5, 5), torch.rand(4, 1, 1)):
        x = x.clone().requires_grad_()
        y = norm(x)
        assert torch.equal(y.detach(), torch.zeros_like(x))
        y.sum().backward()
        assert torch.isfinite(x.grad).all()


def test_bad_input_names_the_shape():
    with pytest.raises(ValueError, match=r'\(B, C, H, W\), got \(2, 3\)'):
        attention_map(torch.ones(2, 3))
    with pytest.raises(ValueError, match='minmax_norm'):
        minmax_norm(torch.ones(3))


@pytest.mark.parametrize('chunk', [1, 7, 1 << 20, 1 << 30])
def test_chunked_sum_and_written_out_gradient_match_autograd(monkeypatch, chunk):
    import dctkd.attention as att
    monkeypatch.setattr(att, '_CHUNK', chunk)
    f = torch.randn(5, 6, 9, 8, dtype=torch.float64, requires_grad=True)
    g = torch.randn(5, 9, 8, dtype=torch.float64)
    a = attention_map(f)
    assert np.abs(a.detach().numpy() - (f.detach().numpy() ** 2).mean(1)).max() < 1e-13
    (grad,) = torch.autograd.grad((a * g).sum(), f)
    assert torch.allclose(grad, 2 * f.detach() * g[:, None] / 6, atol=1e-14, rtol=0)
    assert torch.autograd.gradcheck(attention_map, (f,))
    assert torch.autograd.gradgradcheck(attention_map, (f,))


def test_channels_last_and_no_grad_paths_agree():
    f = torch.randn(4, 16, 7, 7)
    ref = attention_map(f)
    assert torch.allclose(attention_map(f.contiguous(memory_format=torch.channels_last)), ref, atol=1e-6)
    with torch.inference_mode():
        assert torch.allclose(attention_map(f), ref, atol=0)
