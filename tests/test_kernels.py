"""The PyTorch references (kernels/reference.py) against independent float64 / integer math.

Fresh random data every run. The Triton kernels are checked against these references in
test_kernels_triton.py.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import ndtr

from slim_rt import kernels
from slim_rt.kernels import reference as R

LIM = 2**31 - 128


def _np_quantize(y: torch.Tensor, means: torch.Tensor | None):
    """Independent: y - means rounded to the promoted dtype via float64, np.rint (half to even)."""
    dt = y.dtype if means is None else torch.promote_types(y.dtype, means.dtype)
    c = y.double() if means is None else (y.double() - means.double())
    c = c.to(dt).to(torch.float32).double().numpy()  # float64 difference is exact for these inputs
    r = np.rint(c)
    r = np.where(np.isnan(r), 0.0, np.clip(r, -LIM, LIM))
    sym = torch.from_numpy(r.astype(np.int64)).to(torch.int32)
    if means is None:
        return sym, sym.to(y.dtype)
    return sym, (sym.double().to(means.dtype).double() + means.double()).to(means.dtype).to(y.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("with_means", [True, False])
def test_quantize_reference(dtype, with_means):
    y = (torch.randn(2, 5, 13, 17, dtype=torch.float64) * 30).to(dtype)
    means = (torch.round(torch.randn_like(y, dtype=torch.float64) * 8) / 8).to(dtype) if with_means else None
    ties = torch.arange(-20, 20, dtype=torch.float64) + 0.5
    y.view(-1)[: len(ties)] = ties.to(dtype) if means is None else (ties + means.view(-1)[: len(ties)].double()).to(dtype)
    special = torch.tensor([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e-45, 3e9, -3e9, 2.0**31])
    y.view(-1)[-len(special):] = special.to(dtype)
    sym, y_hat = R.quantize(y, means)
    e_sym, e_hat = _np_quantize(y, means)
    assert sym.dtype == torch.int32 and y_hat.dtype == dtype
    assert torch.equal(sym, e_sym)
    assert torch.equal(y_hat.nan_to_num(123.0), e_hat.nan_to_num(123.0))
    assert sym.view(-1)[-len(special):][:3].tolist() == [0, LIM, -LIM]  # NaN -> 0, +-inf clamped


def _np_indexes(h, w, b, shift, levels):
    acc = np.einsum("mc,bcp->bmp", w.numpy().astype(np.int64),
                    h.reshape(h.shape[0], h.shape[1], h.shape[2] * h.shape[3]).numpy().astype(np.int64)) + b.numpy().astype(np.int64)[:, None]
    out = (acc + (1 << (shift - 1))) >> shift if shift > 0 else acc << (-shift)
    return torch.from_numpy(np.clip(out, 0, levels - 1).astype(np.int32)).reshape(h.shape[0], w.shape[0], *h.shape[2:])


@pytest.mark.parametrize("shift", [12, 1, 0, -1])
@pytest.mark.parametrize("dims", [(1, 3, 37, 53, 5), (2, 192, 9, 11, 192), (1, 0, 2, 2, 3)], ids=str)
def test_scale_indexes_reference(dims, shift):
    B, C, H, W, M = dims
    h = torch.randint(0, 256, (B, C, H, W), dtype=torch.int32)
    w = torch.randint(-2047, 2048, (M, C), dtype=torch.int32)
    b = torch.randint(-(2**20), 2**20, (M,), dtype=torch.int32)
    levels = 64 if shift > 4 else 10**6
    got = R.scale_indexes(h, w, b, shift, levels)
    assert got.dtype == torch.int32
    assert torch.equal(got, _np_indexes(h, w, b, shift, levels))


def test_int_conv2d_reference():
    x = torch.randint(0, 256, (2, 4, 6, 7), dtype=torch.int32)
    w = torch.randint(-2047, 2048, (3, 4, 3, 3), dtype=torch.int32)
    b = torch.randint(-1000, 1000, (3,), dtype=torch.int32)
    acc = torch.nn.functional.conv2d(x.double(), w.double(), b.double(), padding=1).numpy().astype(np.int64)
    want = np.clip((acc + (1 << 7)) >> 8, 0, 255).astype(np.int32)
    assert torch.equal(R.int_conv2d(x, w, b, 8, 0, 255), torch.from_numpy(want))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float16, 2e-2), (torch.bfloat16, 1.5e-1)], ids=str)
def test_gaussian_likelihood_reference(dtype, tol):
    y = torch.randn(3, 7, 11, 13, dtype=torch.float64) * 4
    mu = torch.randn_like(y)
    s = torch.rand_like(y) * 5 + 0.02
    lb = 0.11
    v = (y - mu).abs().numpy()
    se = np.maximum(s.numpy(), lb)
    exact = ndtr((0.5 - v) / se) - ndtr((-0.5 - v) / se)  # independent float64 evaluation
    got = R.gaussian_likelihood(y.to(dtype), mu.to(dtype), s.to(dtype), lb)
    assert got.dtype == dtype
    err = np.abs(got.double().numpy() - exact)
    assert err.max() <= tol * max(exact.max(), 1e-30), err.max()
    got64 = R.gaussian_likelihood(y, mu, s, lb).numpy()
    assert np.allclose(got64, exact, rtol=1e-9, atol=1e-15)


def test_gaussian_likelihood_reference_grad_matches_finite_differences():
    y = (torch.randn(40, dtype=torch.float64) * 2).requires_grad_(True)
    mu = torch.randn(40, dtype=torch.float64, requires_grad=True)
    s = (torch.rand(40, dtype=torch.float64) * 3 + 0.2).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b, c: R.gaussian_likelihood(a, b, c, 0.11), (y, mu, s))


def test_dispatcher_semantics():
    y = torch.randn(2, 3, 4, 5)
    for a, e in zip(kernels.quantize(y, impl="auto"), R.quantize(y)):  # CPU tensors -> reference
        assert torch.equal(a, e)
    with pytest.raises(ValueError):
        kernels.quantize(y, impl="cuda")
    assert not kernels._triton_ok(y)  # CPU: never the kernel under "auto"
    assert isinstance(kernels.triton_available(), bool)
