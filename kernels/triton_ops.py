"""Triton twins of `reference.py`: same signatures, same results (issue 3).

Ops (each one kernel; `quantize_with_indexes` is the fused encoder launch):
  quantize(y, means)                          -> (symbols int32, y_hat)     bit-exact
  scale_indexes(h, weight, bias, shift, lvls) -> indexes int32              bit-exact
  quantize_with_indexes(y, means, h, ...)     -> (symbols, y_hat, indexes)  bit-exact, one launch
  gaussian_likelihood(y, means, scales, lb)   -> likelihood                 fp tolerance, fused backward

Semantics shared with the reference (the rest of the code may rely on them):
  * rounding is half to even of float32(y - means), where y - means is evaluated (and rounded)
    in the promoted input dtype first, exactly like `torch.round((y - means).float())`;
  * NaN -> symbol 0, +-inf and |x| > 2**31-128 -> +-(2**31-128) (float32-exact int32 range ends);
  * scale indexes accumulate in int64, so they equal the reference's exact float64 sum whenever
    that sum is exact (|acc| < 2**53); shift > 0 rounds half up (floor((acc + 2**(s-1)) >> s)).
Rounding uses an explicit floor-based formula, not libdevice.rint: libdevice is not available to
the interpreter (TRITON_INTERPRET=1), and this way CPU tests exercise the same code as the GPU.

Every op is a `torch.library` custom op (namespace `slim_rt`) with a fake implementation, so
`torch.compile(fullgraph=True)` traces through them; the likelihood's gradient is a
`torch.autograd.Function` around a forward op and a fused backward op. Importing this module
registers the ops and changes no global setting. Kernels accept CUDA tensors, or CPU tensors
when TRITON_INTERPRET=1 was set before triton was imported.
"""
from __future__ import annotations

import os
from typing import Callable, Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["quantize", "scale_indexes", "quantize_with_indexes", "gaussian_likelihood"]

SYMBOL_LIMIT = 2**31 - 128  # largest float32-exact value inside int32 (reference clamp)
_LIM = tl.constexpr(2147483520.0)
_SQRT1_2 = tl.constexpr(0.7071067811865476)
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)

_TL = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32,
       torch.float64: tl.float64}
_LIKELIHOOD_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# ------------------------------------------------------------------------------------------
# device helpers
# ------------------------------------------------------------------------------------------
@triton.jit
def _rint(x):
    """Round half to even, exact for every float32 x (NaN and +-inf pass through)."""
    fl = tl.floor(x)
    frac = x - fl                                      # exact, in [0, 1]
    odd = (fl - 2.0 * tl.floor(0.5 * fl)) == 1.0
    up = (frac > 0.5) | ((frac == 0.5) & odd)
    return tl.where(up, fl + 1.0, fl)


@triton.jit
def _widen(x, WIDE: tl.constexpr):
    """x.to(WIDE) for WIDE float32/float64, exact. bfloat16 is widened through its bits because
    the interpreter's bfloat16 cast flushes subnormals."""
    if x.dtype == tl.bfloat16:
        x = (x.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    return x.to(WIDE)


@triton.jit
def _cast(x, DTYPE: tl.constexpr):
    """x.to(DTYPE) rounding like PyTorch: to half types via float32, round to nearest even.

    float32 -> bfloat16 is done on the bits (the interpreter's own cast truncates and flushes
    subnormals); the same code runs on the GPU.
    """
    if DTYPE == tl.bfloat16:
        bits = _widen(x, tl.float32).to(tl.uint32, bitcast=True)
        bits = bits + (0x7FFF + ((bits >> 16) & 1))              # RTNE to 8 mantissa bits
        bits = tl.where(x != x, 0x7FC00000, bits)                # keep NaN a (quiet) NaN
        return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    elif DTYPE == tl.float16:
        return _widen(x, tl.float32).to(DTYPE)
    else:
        return x.to(DTYPE)


@triton.jit
def _quantize_values(y, m, HAS_MEANS: tl.constexpr, C_DTYPE: tl.constexpr, C_WIDE: tl.constexpr,
                     M_DTYPE: tl.constexpr, M_WIDE: tl.constexpr, Y_DTYPE: tl.constexpr):
    """Elementwise quantization of a tile -> (symbols int32, y_hat Y_DTYPE).

    C_DTYPE: dtype of y - means in PyTorch's promotion (computed in C_WIDE, then rounded to it,
    which equals the correctly rounded C_DTYPE result); M_DTYPE / M_WIDE likewise for
    symbols + means.
    """
    if HAS_MEANS:
        centered = _widen(_cast(_widen(y, C_WIDE) - _widen(m, C_WIDE), C_DTYPE), tl.float32)
    else:
        centered = _widen(y, tl.float32)
    r = _rint(centered)
    r = tl.where(r != r, 0.0, r)                       # NaN -> 0
    r = tl.where(r > _LIM, _LIM, r)                    # +inf / huge -> 2**31 - 128
    r = tl.where(r < -_LIM, -_LIM, r)
    symbols = r.to(tl.int32)                           # exact: r is an integer in range
    if HAS_MEANS:                                      # r is float32-exact, so r.to(M) == symbols.to(M)
        y_hat = _cast(_cast(_widen(_cast(r, M_DTYPE), M_WIDE) + _widen(m, M_WIDE), M_DTYPE), Y_DTYPE)
    else:
        y_hat = _cast(r, Y_DTYPE)
    return symbols, y_hat


@triton.jit
def _index_tile(h_ptr, w_ptr, bias_ptr, b, offs_m, offs_p, C, M, HW, levels,
                SHIFT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
                BLOCK_P: tl.constexpr):
    """Indexes of batch b, channels offs_m [BLOCK_M], pixels offs_p [BLOCK_P] -> [BLOCK_M, BLOCK_P] int32.

    h: [B, C, HW] int32, w: [M, C] int32, bias: [M] int32. Exact int64 accumulation.
    """
    mask_m = offs_m < M
    mask_p = offs_p < HW
    h_base = h_ptr + b.to(tl.int64) * C * HW
    acc = tl.zeros([BLOCK_M, BLOCK_P], dtype=tl.int64)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        w = tl.load(w_ptr + offs_m[:, None] * C + offs_c[None, :],
                    mask=mask_m[:, None] & mask_c[None, :], other=0)          # [BLOCK_M, BLOCK_C]
        h = tl.load(h_base + offs_c[:, None] * HW + offs_p[None, :],
                    mask=mask_c[:, None] & mask_p[None, :], other=0)          # [BLOCK_C, BLOCK_P]
        acc += tl.sum(w.to(tl.int64)[:, :, None] * h.to(tl.int64)[None, :, :], axis=1)
    acc += tl.load(bias_ptr + offs_m, mask=mask_m, other=0).to(tl.int64)[:, None]
    if SHIFT > 0:
        acc = (acc + (1 << (SHIFT - 1))) >> SHIFT     # arithmetic shift = floor
    elif SHIFT < 0:
        acc = acc << (-SHIFT)
    acc = tl.minimum(tl.maximum(acc, 0), levels - 1)
    return acc.to(tl.int32)


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


# ------------------------------------------------------------------------------------------
# kernels
# ------------------------------------------------------------------------------------------
@triton.jit
def _quantize_kernel(y_ptr, m_ptr, sym_ptr, yhat_ptr, n,
                     HAS_MEANS: tl.constexpr, C_DTYPE: tl.constexpr, C_WIDE: tl.constexpr,
                     M_DTYPE: tl.constexpr, M_WIDE: tl.constexpr, Y_DTYPE: tl.constexpr,
                     BLOCK: tl.constexpr):
    # y, means, symbols, y_hat: flat [n], all the same (broadcast) shape, contiguous
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    y = tl.load(y_ptr + offs, mask=mask, other=0.0)
    m = y
    if HAS_MEANS:
        m = tl.load(m_ptr + offs, mask=mask, other=0.0)
    symbols, y_hat = _quantize_values(y, m, HAS_MEANS, C_DTYPE, C_WIDE, M_DTYPE, M_WIDE, Y_DTYPE)
    tl.store(sym_ptr + offs, symbols, mask=mask)
    tl.store(yhat_ptr + offs, y_hat, mask=mask)


@triton.jit
def _scale_indexes_kernel(h_ptr, w_ptr, bias_ptr, idx_ptr, C, M, HW, levels,
                          SHIFT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
                          BLOCK_P: tl.constexpr):
    # grid (cdiv(HW, BLOCK_P), cdiv(M, BLOCK_M), B); h: [B, C, HW] -> idx: [B, M, HW] int32
    b = tl.program_id(2)
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    idx = _index_tile(h_ptr, w_ptr, bias_ptr, b, offs_m, offs_p, C, M, HW, levels,
                      SHIFT, BLOCK_M, BLOCK_C, BLOCK_P)
    out = b.to(tl.int64) * M * HW + offs_m[:, None] * HW + offs_p[None, :]      # [BLOCK_M, BLOCK_P]
    mask = (offs_m < M)[:, None] & (offs_p < HW)[None, :]
    tl.store(idx_ptr + out, idx, mask=mask)


@triton.jit
def _quantize_with_indexes_kernel(y_ptr, m_ptr, h_ptr, w_ptr, bias_ptr, sym_ptr, yhat_ptr, idx_ptr,
                                  C, M, HW, levels,
                                  HAS_MEANS: tl.constexpr, C_DTYPE: tl.constexpr,
                                  C_WIDE: tl.constexpr, M_DTYPE: tl.constexpr,
                                  M_WIDE: tl.constexpr, Y_DTYPE: tl.constexpr,
                                  SHIFT: tl.constexpr, BLOCK_M: tl.constexpr,
                                  BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    # grid (cdiv(HW, BLOCK_P), cdiv(M, BLOCK_M), B)
    # y, means, symbols, y_hat, idx: [B, M, HW]; h: [B, C, HW]; the index tile and the
    # quantized tile cover the same (b, channels, pixels), so one program writes all three.
    b = tl.program_id(2)
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    out = b.to(tl.int64) * M * HW + offs_m[:, None] * HW + offs_p[None, :]      # [BLOCK_M, BLOCK_P]
    mask = (offs_m < M)[:, None] & (offs_p < HW)[None, :]

    y = tl.load(y_ptr + out, mask=mask, other=0.0)
    m = y
    if HAS_MEANS:
        m = tl.load(m_ptr + out, mask=mask, other=0.0)
    symbols, y_hat = _quantize_values(y, m, HAS_MEANS, C_DTYPE, C_WIDE, M_DTYPE, M_WIDE, Y_DTYPE)
    tl.store(sym_ptr + out, symbols, mask=mask)
    tl.store(yhat_ptr + out, y_hat, mask=mask)

    idx = _index_tile(h_ptr, w_ptr, bias_ptr, b, offs_m, offs_p, C, M, HW, levels,
                      SHIFT, BLOCK_M, BLOCK_C, BLOCK_P)
    tl.store(idx_ptr + out, idx, mask=mask)


@triton.jit
def _gaussian_fwd_kernel(y_ptr, m_ptr, s_ptr, out_ptr, n, lower_bound,
                         HAS_MEANS: tl.constexpr, S_DTYPE: tl.constexpr, OUT_DTYPE: tl.constexpr,
                         BLOCK: tl.constexpr):
    # y, means, scales, out: flat [n], same shape; math in float32
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    d = _widen(tl.load(y_ptr + offs, mask=mask, other=0.0), tl.float32)
    if HAS_MEANS:
        d = d - _widen(tl.load(m_ptr + offs, mask=mask, other=0.0), tl.float32)
    v = tl.abs(d)
    s = _widen(tl.load(s_ptr + offs, mask=mask, other=1.0), tl.float32)
    s = _widen(_cast(tl.where(s < lower_bound, lower_bound, s), S_DTYPE), tl.float32)  # clamp_min, NaN kept
    # (tensor-first products: constexpr * tensor yields a non-interpreter tensor under TRITON_INTERPRET)
    upper = 0.5 * _erfc((v - 0.5) * _SQRT1_2 / s)     # Phi((0.5 - v) / s)
    lower = 0.5 * _erfc((v + 0.5) * _SQRT1_2 / s)     # Phi((-0.5 - v) / s)
    tl.store(out_ptr + offs, _cast(upper - lower, OUT_DTYPE), mask=mask)


@triton.jit
def _gaussian_bwd_kernel(g_ptr, y_ptr, m_ptr, s_ptr, gd_ptr, gs_ptr, n, lower_bound,
                         HAS_MEANS: tl.constexpr, S_DTYPE: tl.constexpr, GD_DTYPE: tl.constexpr,
                         BLOCK: tl.constexpr):
    # grad, y, means, scales: flat [n] -> grad_d = dL/d(y - means) [GD_DTYPE], grad_scales [S_DTYPE]
    # L = Phi(a_u) - Phi(a_l), a_u = (0.5 - v)/s, a_l = (-0.5 - v)/s, v = |y - means|
    # dL/dv = (phi(a_l) - phi(a_u)) / s ;  dL/ds = (phi(a_l) a_l - phi(a_u) a_u) / s
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = _widen(tl.load(g_ptr + offs, mask=mask, other=0.0), tl.float32)
    d = _widen(tl.load(y_ptr + offs, mask=mask, other=0.0), tl.float32)
    if HAS_MEANS:
        d = d - _widen(tl.load(m_ptr + offs, mask=mask, other=0.0), tl.float32)
    v = tl.abs(d)
    s_in = _widen(tl.load(s_ptr + offs, mask=mask, other=1.0), tl.float32)
    s = _widen(_cast(tl.where(s_in < lower_bound, lower_bound, s_in), S_DTYPE), tl.float32)
    a_u = (0.5 - v) / s
    a_l = (-0.5 - v) / s
    phi_u = tl.exp(-0.5 * a_u * a_u) * _INV_SQRT_2PI
    phi_l = tl.exp(-0.5 * a_l * a_l) * _INV_SQRT_2PI
    sign = tl.where(d > 0, 1.0, tl.where(d < 0, -1.0, 0.0))  # d|x|/dx, 0 at 0 like torch.abs
    grad_d = g * (phi_l - phi_u) / s * sign
    grad_s = g * (phi_l * a_l - phi_u * a_u) / s
    grad_s = tl.where(s_in < lower_bound, 0.0, grad_s)  # zero below the bound only: AT it (a scale at the table's
    # minimum, as every index-0 scale is) the gradient passes, so such a scale can still grow
    tl.store(gd_ptr + offs, _cast(grad_d, GD_DTYPE), mask=mask)
    tl.store(gs_ptr + offs, _cast(grad_s, S_DTYPE), mask=mask)


# ------------------------------------------------------------------------------------------
# launch configuration
# ------------------------------------------------------------------------------------------
def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _elementwise_block() -> int:
    return 8192 if _interpreting() else 1024  # big blocks: fewer (slow) interpreted programs


def _index_blocks(M: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_C, BLOCK_P) for the index tiles (int64 accumulators: keep GPU tiles small)."""
    if _interpreting():
        return min(triton.next_power_of_2(max(M, 1)), 64), 32, 128
    return 32, 1, 64


def _check_device(*tensors: Tensor | None) -> None:
    ts = [t for t in tensors if t is not None]
    dev = ts[0].device
    if any(t.device != dev for t in ts):
        raise ValueError(f"all tensors must be on one device, got {[str(t.device) for t in ts]}")
    if dev.type != "cuda" and not _interpreting():
        raise RuntimeError("Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 set before "
                           "importing triton); use impl='reference' on CPU")


def _quant_dtypes(y: Tensor, means: Tensor | None) -> dict:
    """constexpr dtypes of `_quantize_values` for PyTorch's promotion of y and means."""
    def wide(dt: torch.dtype):
        return tl.float64 if dt == torch.float64 else tl.float32
    for t in (y, means):
        if t is not None and t.dtype not in _TL:
            raise TypeError(f"quantize supports float16/bfloat16/float32/float64, got {t.dtype}")
    mdt = y.dtype if means is None else means.dtype
    cdt = y.dtype if means is None else torch.promote_types(y.dtype, means.dtype)
    return dict(HAS_MEANS=means is not None, C_DTYPE=_TL[cdt], C_WIDE=wide(cdt), M_DTYPE=_TL[mdt],
                M_WIDE=wide(mdt), Y_DTYPE=_TL[y.dtype])


def _check_index_args(h: Tensor, weight: Tensor, bias: Tensor, levels: int) -> None:
    for name, t in (("h", h), ("weight", weight), ("bias", bias)):
        if t.dtype != torch.int32:
            raise TypeError(f"scale_indexes: {name} must be int32, got {t.dtype}")
    if h.dim() != 4 or weight.dim() != 2 or weight.shape[1] != h.shape[1] or bias.shape != (weight.shape[0],):
        raise ValueError(f"scale_indexes: bad shapes h {tuple(h.shape)}, weight {tuple(weight.shape)}, "
                         f"bias {tuple(bias.shape)}")
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")


# ------------------------------------------------------------------------------------------
# launchers: write into caller-allocated outputs (tests poison them to check every element
# is written). Inputs are contiguous and already broadcast to one shape.
# ------------------------------------------------------------------------------------------
def _launch_quantize(y: Tensor, means: Tensor | None, symbols: Tensor, y_hat: Tensor) -> None:
    n = y.numel()
    if n:
        block = _elementwise_block()
        _quantize_kernel[(triton.cdiv(n, block),)](
            y, y if means is None else means, symbols, y_hat, n, **_quant_dtypes(y, means), BLOCK=block)


def _launch_scale_indexes(h: Tensor, weight: Tensor, bias: Tensor, shift: int, levels: int,
                          idx: Tensor) -> None:
    B, C, H, W = h.shape
    M = weight.shape[0]
    if idx.numel():
        bm, bc, bp = _index_blocks(M)
        grid = (triton.cdiv(H * W, bp), triton.cdiv(M, bm), B)
        _scale_indexes_kernel[grid](h, weight, bias, idx, C, M, H * W, levels,
                                    SHIFT=shift, BLOCK_M=bm, BLOCK_C=bc, BLOCK_P=bp)


def _launch_quantize_with_indexes(y: Tensor, means: Tensor | None, h: Tensor, weight: Tensor,
                                  bias: Tensor, shift: int, levels: int, symbols: Tensor,
                                  y_hat: Tensor, idx: Tensor) -> None:
    B, C, H, W = h.shape
    M = weight.shape[0]
    if idx.numel():
        bm, bc, bp = _index_blocks(M)
        grid = (triton.cdiv(H * W, bp), triton.cdiv(M, bm), B)
        _quantize_with_indexes_kernel[grid](
            y, y if means is None else means, h, weight, bias, symbols, y_hat, idx, C, M, H * W, levels,
            **_quant_dtypes(y, means), SHIFT=shift, BLOCK_M=bm, BLOCK_C=bc, BLOCK_P=bp)


def _launch_likelihood_fwd(y: Tensor, means: Tensor | None, scales: Tensor, lower_bound: float,
                           out: Tensor) -> None:
    n = y.numel()
    if n:
        block = _elementwise_block()
        _gaussian_fwd_kernel[(triton.cdiv(n, block),)](
            y, y if means is None else means, scales, out, n, lower_bound,
            HAS_MEANS=means is not None, S_DTYPE=_TL[scales.dtype], OUT_DTYPE=_TL[out.dtype], BLOCK=block)


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
            HAS_MEANS=means is not None, S_DTYPE=_TL[scales.dtype], GD_DTYPE=_TL[grad_d.dtype], BLOCK=block)


# ------------------------------------------------------------------------------------------
# torch.library custom ops (namespace slim_rt) with fake implementations for torch.compile
# ------------------------------------------------------------------------------------------
def _custom_op(name: str, fake: Callable):
    """Register `slim_rt::name`; reuse the registration when this file is imported twice
    (it is reachable both as `kernels` and as `slim_rt.kernels`)."""
    def deco(fn):
        if hasattr(torch.ops.slim_rt, name):
            return getattr(torch.ops.slim_rt, name)
        op = torch.library.custom_op(f"slim_rt::{name}", fn, mutates_args=())
        op.register_fake(fake)
        return op
    return deco


def _index_shape(h: Tensor, weight: Tensor) -> tuple[int, int, int, int]:
    B, _, H, W = h.shape
    return B, weight.shape[0], H, W


def _quantize_fake(y: Tensor, means: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    return torch.empty_like(y, dtype=torch.int32), torch.empty_like(y)


@_custom_op("quantize", _quantize_fake)
def _quantize_op(y: Tensor, means: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    symbols, y_hat = _quantize_fake(y, means)
    _launch_quantize(y, means, symbols, y_hat)
    return symbols, y_hat


def _scale_indexes_fake(h: Tensor, weight: Tensor, bias: Tensor, shift: int, levels: int) -> Tensor:
    return h.new_empty(_index_shape(h, weight), dtype=torch.int32)


@_custom_op("scale_indexes", _scale_indexes_fake)
def _scale_indexes_op(h: Tensor, weight: Tensor, bias: Tensor, shift: int, levels: int) -> Tensor:
    idx = _scale_indexes_fake(h, weight, bias, shift, levels)
    _launch_scale_indexes(h, weight, bias, shift, levels, idx)
    return idx


def _quantize_with_indexes_fake(y: Tensor, means: Optional[Tensor], h: Tensor, weight: Tensor,
                                bias: Tensor, shift: int, levels: int) -> tuple[Tensor, Tensor, Tensor]:
    return (*_quantize_fake(y, means), _scale_indexes_fake(h, weight, bias, shift, levels))


@_custom_op("quantize_with_indexes", _quantize_with_indexes_fake)
def _quantize_with_indexes_op(y: Tensor, means: Optional[Tensor], h: Tensor, weight: Tensor,
                              bias: Tensor, shift: int, levels: int) -> tuple[Tensor, Tensor, Tensor]:
    symbols, y_hat, idx = _quantize_with_indexes_fake(y, means, h, weight, bias, shift, levels)
    _launch_quantize_with_indexes(y, means, h, weight, bias, shift, levels, symbols, y_hat, idx)
    return symbols, y_hat, idx


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


def _diff_dtype(y: Tensor, means: Tensor | None) -> torch.dtype:
    return y.dtype if means is None else torch.promote_types(y.dtype, means.dtype)


def _out_dtype(y: Tensor, means: Tensor | None, scales: Tensor) -> torch.dtype:
    return torch.promote_types(_diff_dtype(y, means), scales.dtype)


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


# ------------------------------------------------------------------------------------------
# public functions (signatures of reference.py)
# ------------------------------------------------------------------------------------------
def _broadcast(*tensors: Tensor | None) -> list[Tensor | None]:
    ts = [t for t in tensors if t is not None]
    shape = torch.broadcast_shapes(*(t.shape for t in ts))
    return [None if t is None else t.expand(shape).contiguous() for t in tensors]


def quantize(y: Tensor, means: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """symbols = round(y - means) (half to even), y_hat = symbols + means. See reference.quantize."""
    _check_device(y, means)
    y, means = _broadcast(y, means)
    return _quantize_op(y, means)


def scale_indexes(h: Tensor, weight: Tensor, bias: Tensor, shift: int, levels: int) -> Tensor:
    """Exact int32 CDF indexes [B, M, H, W]. See reference.scale_indexes."""
    _check_device(h, weight, bias)
    _check_index_args(h, weight, bias, levels)
    return _scale_indexes_op(h.contiguous(), weight.contiguous(), bias.contiguous(), int(shift), int(levels))


def quantize_with_indexes(y: Tensor, means: Tensor | None, h: Tensor, weight: Tensor, bias: Tensor,
                          shift: int, levels: int) -> tuple[Tensor, Tensor, Tensor]:
    """quantize(y, means) and scale_indexes(h, ...) in one launch; y: [B, M, H, W] like the indexes."""
    _check_device(y, means, h, weight, bias)
    _check_index_args(h, weight, bias, levels)
    y, means = _broadcast(y, means)
    B, _, H, W = h.shape
    if tuple(y.shape) != (B, weight.shape[0], H, W):
        raise ValueError(f"quantize_with_indexes: y {tuple(y.shape)} must be [B, M, H, W] = "
                         f"{(B, weight.shape[0], H, W)}")
    return _quantize_with_indexes_op(y, means, h.contiguous(), weight.contiguous(), bias.contiguous(),
                                     int(shift), int(levels))


def gaussian_likelihood(y: Tensor, means: Tensor | None, scales: Tensor, lower_bound: float) -> Tensor:
    """Likelihood of the rounding bin under N(means, max(scales, lower_bound)); differentiable."""
    _check_device(y, means, scales)
    for t in (y, means, scales):
        if t is not None and t.dtype not in _LIKELIHOOD_DTYPES:
            raise TypeError(f"gaussian_likelihood supports float16/bfloat16/float32, got {t.dtype}")
    y, means, scales = _broadcast(y, means, scales)
    return _GaussianLikelihood.apply(y, means, scales, float(lower_bound))
