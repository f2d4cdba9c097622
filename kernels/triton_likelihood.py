"""Triton `gaussian_likelihood`: the training-time rate term with a fused backward.
Reference: `reference.gaussian_likelihood` (same signature; equal within floating-point tolerance).

  gaussian_likelihood(y, means, scales, lower_bound) -> likelihood   differentiable

The gradient is a `torch.autograd.Function` around `torch.library` custom ops:
`slim_rt::gaussian_likelihood_fwd`, the fused `slim_rt::gaussian_likelihood_bwd` (grads of
y - means and of the scales in one pass) and `slim_rt::gaussian_likelihood_bwd_means` (the same
pass writing the gradients of y, of the means (-grad_d) and of the scales in their own dtypes, used
when the means need a gradient: no separate negation or cast pass). In eager mode the Function calls
the ops' implementations directly (the dispatcher costs more CPU time than the kernels take on the
GPU); under torch.compile it goes through the ops. Like the reference, the scale gradient is zero
strictly below `lower_bound` and passes AT it; the launcher rounds the bound to the scales' dtype first.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._triton_common import (_TL, _broadcast, _cast, _check_device, _custom_op, _direct, _elementwise_block,
                             _native, _widen)

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
def _gaussian_bwd_kernel(g_ptr, y_ptr, m_ptr, s_ptr, gd_ptr, gm_ptr, gs_ptr, n, lower_bound,
                         HAS_MEANS: tl.constexpr, HAS_GM: tl.constexpr, S_DTYPE: tl.constexpr,
                         GD_DTYPE: tl.constexpr, GY_DTYPE: tl.constexpr, GM_DTYPE: tl.constexpr,
                         NATIVE: tl.constexpr, BLOCK: tl.constexpr):
    # grad, y, means, scales: flat [n] -> gd: dL/d(y - means) rounded to GD_DTYPE (the dtype of
    # y - means, as autograd holds it) and stored as GY_DTYPE (the gradient of y: autograd's cast
    # to y's dtype); with HAS_GM also gm = -gd as GM_DTYPE (the gradient of the means, written here
    # rather than by a separate negation pass); grad_scales [S_DTYPE]
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
    gd = _cast(grad_d, GD_DTYPE, NATIVE)
    if GY_DTYPE == GD_DTYPE:
        tl.store(gd_ptr + offs, gd, mask=mask)
    else:
        tl.store(gd_ptr + offs, _cast(gd, GY_DTYPE, NATIVE), mask=mask)
    if HAS_GM:
        # exact negation (a product with -1, not 0 - x: the sign of a zero flips like torch.neg), then
        # the means' dtype: (-grad_d).to(means.dtype) bit for bit
        gm = _widen(gd, tl.float32, NATIVE) * -1.0
        tl.store(gm_ptr + offs, _cast(gm, GM_DTYPE, NATIVE), mask=mask)
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


@functools.lru_cache(maxsize=64)
def _bound_as(lower_bound: float, dtype: torch.dtype) -> float:
    """The bound as `dtype` holds it, as torch compares a tensor with a Python number: a scale stored
    AT the bound is at it (its gradient passes), not just below. Cached: a CPU tensor per call costs
    more than the kernel launch."""
    return float(torch.tensor(lower_bound, dtype=dtype))


def _launch_likelihood_bwd(grad: Tensor, y: Tensor, means: Tensor | None, scales: Tensor,
                           lower_bound: float, grad_d: Tensor, grad_s: Tensor,
                           grad_m: Tensor | None = None) -> None:
    """grad_d: dL/d(y - means), rounded to the dtype of y - means and stored as grad_d's dtype (that
    dtype itself, or y's for the gradient of y); grad_m (optional): -grad_d as grad_m's dtype."""
    n = y.numel()
    if n:
        block = _elementwise_block()
        _gaussian_bwd_kernel[(triton.cdiv(n, block),)](
            grad, y, y if means is None else means, scales, grad_d, grad_d if grad_m is None else grad_m,
            grad_s, n, _bound_as(float(lower_bound), scales.dtype),
            HAS_MEANS=means is not None, HAS_GM=grad_m is not None, S_DTYPE=_TL[scales.dtype],
            GD_DTYPE=_TL[_diff_dtype(y, means)], GY_DTYPE=_TL[grad_d.dtype],
            GM_DTYPE=_TL[grad_d.dtype if grad_m is None else grad_m.dtype], NATIVE=_native(), BLOCK=block)



# ------------------------------------------------------------------------------------------
# custom ops, autograd Function and public function
# ------------------------------------------------------------------------------------------
def _diff_dtype(y: Tensor, means: Tensor | None) -> torch.dtype:
    return y.dtype if means is None else torch.promote_types(y.dtype, means.dtype)


def _out_dtype(y: Tensor, means: Tensor | None, scales: Tensor) -> torch.dtype:
    return torch.promote_types(_diff_dtype(y, means), scales.dtype)


def _likelihood_fake(y: Tensor, means: Optional[Tensor], scales: Tensor, lower_bound: float) -> Tensor:
    return torch.empty_like(y, dtype=_out_dtype(y, means, scales))


def _likelihood_fwd_impl(y: Tensor, means: Optional[Tensor], scales: Tensor, lower_bound: float) -> Tensor:
    out = _likelihood_fake(y, means, scales, lower_bound)
    _launch_likelihood_fwd(y, means, scales, lower_bound, out)
    return out


def _likelihood_bwd_fake(grad: Tensor, y: Tensor, means: Optional[Tensor], scales: Tensor,
                         lower_bound: float) -> tuple[Tensor, Tensor]:
    return torch.empty_like(y, dtype=_diff_dtype(y, means)), torch.empty_like(scales)


def _likelihood_bwd_impl(grad: Tensor, y: Tensor, means: Optional[Tensor], scales: Tensor,
                         lower_bound: float) -> tuple[Tensor, Tensor]:
    grad_d, grad_s = _likelihood_bwd_fake(grad, y, means, scales, lower_bound)
    _launch_likelihood_bwd(grad, y, means, scales, lower_bound, grad_d, grad_s)
    return grad_d, grad_s


def _likelihood_bwd_means_fake(grad: Tensor, y: Tensor, means: Tensor, scales: Tensor,
                               lower_bound: float) -> tuple[Tensor, Tensor, Tensor]:
    return torch.empty_like(y), torch.empty_like(means), torch.empty_like(scales)


def _likelihood_bwd_means_impl(grad: Tensor, y: Tensor, means: Tensor, scales: Tensor,
                               lower_bound: float) -> tuple[Tensor, Tensor, Tensor]:
    grad_y, grad_m, grad_s = _likelihood_bwd_means_fake(grad, y, means, scales, lower_bound)
    _launch_likelihood_bwd(grad, y, means, scales, lower_bound, grad_y, grad_s, grad_m)
    return grad_y, grad_m, grad_s


# slim_rt::gaussian_likelihood_fwd(y, means?, scales, lower_bound) -> likelihood
_likelihood_fwd_op = _custom_op("gaussian_likelihood_fwd", _likelihood_fake)(_likelihood_fwd_impl)
# slim_rt::gaussian_likelihood_bwd(grad, y, means?, scales, lower_bound) -> (dL/d(y - means), grad_scales)
_likelihood_bwd_op = _custom_op("gaussian_likelihood_bwd", _likelihood_bwd_fake)(_likelihood_bwd_impl)
# slim_rt::gaussian_likelihood_bwd_means(grad, y, means, scales, lower_bound) -> (grad_y, grad_means,
# grad_scales) in the inputs' dtypes: one pass, no separate negation for the means
_likelihood_bwd_means_op = _custom_op("gaussian_likelihood_bwd_means", _likelihood_bwd_means_fake)(
    _likelihood_bwd_means_impl)


class _GaussianLikelihood(torch.autograd.Function):
    """Triton forward, fused Triton backward (grads for y, means, scales in one pass)."""

    @staticmethod
    def forward(ctx, y, means, scales, lower_bound):
        # y, means, scales: one (broadcast) shape, contiguous; autograd sums any expand back
        ctx.save_for_backward(y, means, scales)
        ctx.lower_bound = lower_bound
        fwd = _likelihood_fwd_impl if _direct(y, means, scales) else _likelihood_fwd_op
        return fwd(y, means, scales, lower_bound)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        y, means, scales = ctx.saved_tensors
        grad = grad.contiguous()
        need_y, need_m, need_s = ctx.needs_input_grad[:3]
        direct = _direct(grad, y, means, scales)
        if need_m:  # one kernel writes grad_y, grad_means (-grad_d as the means' dtype) and grad_scales
            bwd = _likelihood_bwd_means_impl if direct else _likelihood_bwd_means_op
            gy, gm, gs = bwd(grad, y, means, scales, ctx.lower_bound)
            return (gy if need_y else None), gm, (gs if need_s else None), None
        bwd = _likelihood_bwd_impl if direct else _likelihood_bwd_op
        grad_d, grad_s = bwd(grad, y, means, scales, ctx.lower_bound)
        gy = grad_d.to(y.dtype) if need_y else None
        gs = grad_s if need_s else None
        return gy, None, gs, None


def gaussian_likelihood(y: Tensor, means: Tensor | None, scales: Tensor, lower_bound: float) -> Tensor:
    """Likelihood of the rounding bin under N(means, max(scales, lower_bound)); differentiable."""
    _check_device(y, means, scales)
    for t in (y, means, scales):
        if t is not None and t.dtype not in _LIKELIHOOD_DTYPES:
            raise TypeError(f"gaussian_likelihood supports float16/bfloat16/float32, got {t.dtype}")
    y, means, scales = _broadcast(y, means, scales)
    return _GaussianLikelihood.apply(y, means, scales, float(lower_bound))
