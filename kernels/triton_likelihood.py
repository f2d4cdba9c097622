"""Triton `gaussian_likelihood`: the training-time rate term with a fused backward.
Reference: `reference.gaussian_likelihood` (same signature; equal within floating-point tolerance).

  gaussian_likelihood(y, means, scales, lower_bound) -> likelihood   differentiable

The gradient is a `torch.autograd.Function` around two `torch.library` custom ops,
`slim_rt::gaussian_likelihood_fwd` and the fused `slim_rt::gaussian_likelihood_bwd` (grads of
y - means and of the scales in one pass). Like the reference, the scale gradient is zero strictly
below `lower_bound` and passes AT it; the launcher rounds the bound to the scales' dtype first.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._triton_common import (_TL, _broadcast, _cast, _check_device, _custom_op, _elementwise_block, _native,
                             _widen)

__all__ = ["gaussian_likelihood"]

_SQRT1_2 = tl.constexpr(0.7071067811865476)
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)

_LIKELIHOOD_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# ------------------------------------------------------------------------------------------
# device code
# ------------------------------------------------------------------------------------------
@triton.jit
def _erfc(x):
    """erfc for float32 (Numerical Recipes' Chebyshev fit, relative error < 1.2e-7 everywhere),
    accurate in the tails where 1 - erf(x) is not. NaN -> NaN, +inf -> 0, -inf -> 2."""
    z = tl.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    p = -0.82215223 + t * 0.17087277
    p = 1.48851587 + t * p
    p = -1.13520398 + t * p
    p = 0.27886807 + t * p
    p = -0.18628806 + t * p
    p = 0.09678418 + t * p
    p = 0.37409196 + t * p
    p = 1.00002368 + t * p
    r = t * tl.exp(-z * z - 1.26551223 + t * p)
    return tl.where(x >= 0, r, 2.0 - r)


@triton.jit
def _gaussian_fwd_kernel(y_ptr, m_ptr, s_ptr, out_ptr, n, lower_bound,
                         HAS_MEANS: tl.constexpr, S_DTYPE: tl.constexpr, OUT_DTYPE: tl.constexpr,
                         NATIVE: tl.constexpr, BLOCK: tl.constexpr):
    # y, means, scales, out: flat [n], same shape; math in float32
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    d = _widen(tl.load(y_ptr + offs, mask=mask, other=0.0), tl.float32, NATIVE)
    if HAS_MEANS:
        d = d - _widen(tl.load(m_ptr + offs, mask=mask, other=0.0), tl.float32, NATIVE)
    v = tl.abs(d)
    s = _widen(tl.load(s_ptr + offs, mask=mask, other=1.0), tl.float32, NATIVE)
    s = _widen(_cast(tl.where(s < lower_bound, lower_bound, s), S_DTYPE, NATIVE), tl.float32, NATIVE)  # clamp_min, NaN kept
    # (tensor-first products: constexpr * tensor yields a non-interpreter tensor under TRITON_INTERPRET)
    upper = 0.5 * _erfc((v - 0.5) * _SQRT1_2 / s)     # Phi((0.5 - v) / s)
    lower = 0.5 * _erfc((v + 0.5) * _SQRT1_2 / s)     # Phi((-0.5 - v) / s)
    tl.store(out_ptr + offs, _cast(upper - lower, OUT_DTYPE, NATIVE), mask=mask)


@triton.jit
def _gaussian_bwd_kernel(g_ptr, y_ptr, m_ptr, s_ptr, gd_ptr, gs_ptr, n, lower_bound,
                         HAS_MEANS: tl.constexpr, S_DTYPE: tl.constexpr, GD_DTYPE: tl.constexpr,
                         NATIVE: tl.constexpr, BLOCK: tl.constexpr):
    # grad, y, means, scales: flat [n] -> grad_d = dL/d(y - means) [GD_DTYPE], grad_scales [S_DTYPE]
    # L = Phi(a_u) - Phi(a_l), a_u = (0.5 - v)/s, a_l = (-0.5 - v)/s, v = |y - means|
    # dL/dv = (phi(a_l) - phi(a_u)) / s ;  dL/ds = (phi(a_l) a_l - phi(a_u) a_u) / s
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = _widen(tl.load(g_ptr + offs, mask=mask, other=0.0), tl.float32, NATIVE)
    d = _widen(tl.load(y_ptr + offs, mask=mask, other=0.0), tl.float32, NATIVE)
    if HAS_MEANS:
        d = d - _widen(tl.load(m_ptr + offs, mask=mask, other=0.0), tl.float32, NATIVE)
    v = tl.abs(d)
    s_in = _widen(tl.load(s_ptr + offs, mask=mask, other=1.0), tl.float32, NATIVE)
    s = _widen(_cast(tl.where(s_in < lower_bound, lower_bound, s_in), S_DTYPE, NATIVE), tl.float32, NATIVE)
    a_u = (0.5 - v) / s
    a_l = (-0.5 - v) / s
    phi_u = tl.exp(-0.5 * a_u * a_u) * _INV_SQRT_2PI
    phi_l = tl.exp(-0.5 * a_l * a_l) * _INV_SQRT_2PI
    sign = tl.where(d > 0, 1.0, tl.where(d < 0, -1.0, 0.0))  # d|x|/dx, 0 at 0 like torch.abs
    grad_d = g * (phi_l - phi_u) / s * sign
    grad_s = g * (phi_l * a_l - phi_u * a_u) / s
    grad_s = tl.where(s_in < lower_bound, 0.0, grad_s)  # zero below the bound only: AT it (a scale at the table's
    # minimum, as every index-0 scale is) the gradient passes, so such a scale can still grow
    tl.store(gd_ptr + offs, _cast(grad_d, GD_DTYPE, NATIVE), mask=mask)
    tl.store(gs_ptr + offs, _cast(grad_s, S_DTYPE, NATIVE), mask=mask)



# ------------------------------------------------------------------------------------------
# launchers: write into caller-allocated outputs (tests poison them to check every element
# is written). Inputs are contiguous and already broadcast to one shape.
# ------------------------------------------------------------------------------------------
def _launch_likelihood_fwd(y: Tensor, means: Tensor | None, scales: Tensor, lower_bound: float,
                           out: Tensor) -> None:
    n = y.numel()
    if n:
        block = _elementwise_block()
        _gaussian_fwd_kernel[(triton.cdiv(n, block),)](
            y, y if means is None else means, scales, out, n, lower_bound,
            HAS_MEANS=means is not None, S_DTYPE=_TL[scales.dtype], OUT_DTYPE=_TL[out.dtype],
            NATIVE=_native(), BLOCK=block)


def _launch_likelihood_bwd(grad: Tensor, y: Tensor, means: Tensor | None, scales: Tensor,
                           lower_bound: float, grad_d: Tensor, grad_s: Tensor) -> None:
    n = y.numel()
    if n:
        block = _elementwise_block()
        # the bound as the scales' dtype holds it, as torch compares a tensor with a Python number: a
        # scale stored AT the bound is at it (its gradient passes), not just below
        bound = float(torch.tensor(lower_bound, dtype=scales.dtype))
        _gaussian_bwd_kernel[(triton.cdiv(n, block),)](
            grad, y, y if means is None else means, scales, grad_d, grad_s, n, bound,
            HAS_MEANS=means is not None, S_DTYPE=_TL[scales.dtype], GD_DTYPE=_TL[grad_d.dtype],
            NATIVE=_native(), BLOCK=block)



# ------------------------------------------------------------------------------------------
# custom ops, autograd Function and public function
# ------------------------------------------------------------------------------------------
def _diff_dtype(y: Tensor, means: Tensor | None) -> torch.dtype:
    return y.dtype if means is None else torch.promote_types(y.dtype, means.dtype)


def _out_dtype(y: Tensor, means: Tensor | None, scales: Tensor) -> torch.dtype:
    return torch.promote_types(_diff_dtype(y, means), scales.dtype)


def _likelihood_fake(y: Tensor, means: Optional[Tensor], scales: Tensor, lower_bound: float) -> Tensor:
    return torch.empty_like(y, dtype=_out_dtype(y, means, scales))


@_custom_op("gaussian_likelihood_fwd", _likelihood_fake)
def _likelihood_fwd_op(y: Tensor, means: Optional[Tensor], scales: Tensor, lower_bound: float) -> Tensor:
    out = _likelihood_fake(y, means, scales, lower_bound)
    _launch_likelihood_fwd(y, means, scales, lower_bound, out)
    return out


def _likelihood_bwd_fake(grad: Tensor, y: Tensor, means: Optional[Tensor], scales: Tensor,
                         lower_bound: float) -> tuple[Tensor, Tensor]:
    return torch.empty_like(y, dtype=_diff_dtype(y, means)), torch.empty_like(scales)


@_custom_op("gaussian_likelihood_bwd", _likelihood_bwd_fake)
def _likelihood_bwd_op(grad: Tensor, y: Tensor, means: Optional[Tensor], scales: Tensor,
                       lower_bound: float) -> tuple[Tensor, Tensor]:
    grad_d, grad_s = _likelihood_bwd_fake(grad, y, means, scales, lower_bound)
    _launch_likelihood_bwd(grad, y, means, scales, lower_bound, grad_d, grad_s)
    return grad_d, grad_s


class _GaussianLikelihood(torch.autograd.Function):
    """Triton forward, fused Triton backward (grads for y, means, scales in one pass)."""

    @staticmethod
    def forward(ctx, y, means, scales, lower_bound):
        # y, means, scales: one (broadcast) shape, contiguous; autograd sums the expand back
        ctx.save_for_backward(y, means, scales)
        ctx.lower_bound = lower_bound
        return _likelihood_fwd_op(y, means, scales, lower_bound)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        y, means, scales = ctx.saved_tensors
        grad_d, grad_s = _likelihood_bwd_op(grad.contiguous(), y, means, scales, ctx.lower_bound)
        need_y, need_m, need_s = ctx.needs_input_grad[:3]
        gy = grad_d.to(y.dtype) if need_y else None
        gm = (-grad_d).to(means.dtype) if need_m else None
        gs = grad_s if need_s else None
        return gy, gm, gs, None


def gaussian_likelihood(y: Tensor, means: Tensor | None, scales: Tensor, lower_bound: float) -> Tensor:
    """Likelihood of the rounding bin under N(means, max(scales, lower_bound)); differentiable."""
    _check_device(y, means, scales)
    for t in (y, means, scales):
        if t is not None and t.dtype not in _LIKELIHOOD_DTYPES:
            raise TypeError(f"gaussian_likelihood supports float16/bfloat16/float32, got {t.dtype}")
    y, means, scales = _broadcast(y, means, scales)
    return _GaussianLikelihood.apply(y, means, scales, float(lower_bound))

