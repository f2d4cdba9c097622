"""Triton `quantize` and the fused encoder launch `quantize_with_indexes`.
References: `reference.quantize` and `reference.quantize_with_indexes` (same signatures, bit-exact).

  quantize(y, means)                      -> (symbols int32, y_hat)     one kernel
  quantize_with_indexes(y, means, h, ...) -> (symbols, y_hat, indexes)  one launch: this file's
                                             quantizer + `triton_scale_indexes._index_tile`

Semantics shared with the reference (the rest of the code may rely on them):
  * rounding is half to even of float32(y - means), where y - means is evaluated (and rounded)
    in the promoted input dtype first, exactly like `torch.round((y - means).float())`;
  * NaN -> symbol 0, +-inf and |x| > 2**31-128 -> +-(2**31-128) (float32-exact int32 range ends).
Rounding uses an explicit floor-based formula, not libdevice.rint: libdevice is not available to
the interpreter (TRITON_INTERPRET=1), and this way CPU tests exercise the same code as the GPU.
Both ops are `torch.library` custom ops (`slim_rt::quantize`, `slim_rt::quantize_with_indexes`).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._triton_common import _TL, _broadcast, _cast, _check_device, _custom_op, _elementwise_block, _native, _widen
from .triton_scale_indexes import _check_index_args, _index_blocks, _index_tile, _scale_indexes_fake

__all__ = ["quantize", "quantize_with_indexes"]

SYMBOL_LIMIT = 2**31 - 128  # largest float32-exact value inside int32 (reference clamp)
_LIM = tl.constexpr(2147483520.0)


# ------------------------------------------------------------------------------------------
# device code
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
def _quantize_values(y, m, HAS_MEANS: tl.constexpr, C_DTYPE: tl.constexpr, C_WIDE: tl.constexpr,
                     M_DTYPE: tl.constexpr, M_WIDE: tl.constexpr, Y_DTYPE: tl.constexpr, NATIVE: tl.constexpr):
    """Elementwise quantization of a tile -> (symbols int32, y_hat Y_DTYPE).

    C_DTYPE: dtype of y - means in PyTorch's promotion (computed in C_WIDE, then rounded to it,
    which equals the correctly rounded C_DTYPE result); M_DTYPE / M_WIDE likewise for
    symbols + means. NATIVE: hardware bfloat16 conversions (see `_triton_common._cast`).
    """
    if HAS_MEANS:
        centered = _widen(_cast(_widen(y, C_WIDE, NATIVE) - _widen(m, C_WIDE, NATIVE), C_DTYPE, NATIVE),
                          tl.float32, NATIVE)
    else:
        centered = _widen(y, tl.float32, NATIVE)
    r = _rint(centered)
    r = tl.where(r != r, 0.0, r)                       # NaN -> 0
    r = tl.where(r > _LIM, _LIM, r)                    # +inf / huge -> 2**31 - 128
    r = tl.where(r < -_LIM, -_LIM, r)
    symbols = r.to(tl.int32)                           # exact: r is an integer in range
    if HAS_MEANS:                                      # r is float32-exact, so r.to(M) == symbols.to(M)
        y_hat = _cast(_cast(_widen(_cast(r, M_DTYPE, NATIVE), M_WIDE, NATIVE) + _widen(m, M_WIDE, NATIVE),
                            M_DTYPE, NATIVE), Y_DTYPE, NATIVE)
    else:
        y_hat = _cast(r, Y_DTYPE, NATIVE)
    return symbols, y_hat


@triton.jit
def _quantize_kernel(y_ptr, m_ptr, sym_ptr, yhat_ptr, n,
                     HAS_MEANS: tl.constexpr, C_DTYPE: tl.constexpr, C_WIDE: tl.constexpr,
                     M_DTYPE: tl.constexpr, M_WIDE: tl.constexpr, Y_DTYPE: tl.constexpr,
                     NATIVE: tl.constexpr, BLOCK: tl.constexpr):
    # y, means, symbols, y_hat: flat [n], all the same (broadcast) shape, contiguous
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    y = tl.load(y_ptr + offs, mask=mask, other=0.0)
    m = y
    if HAS_MEANS:
        m = tl.load(m_ptr + offs, mask=mask, other=0.0)
    symbols, y_hat = _quantize_values(y, m, HAS_MEANS, C_DTYPE, C_WIDE, M_DTYPE, M_WIDE, Y_DTYPE, NATIVE)
    tl.store(sym_ptr + offs, symbols, mask=mask)
    tl.store(yhat_ptr + offs, y_hat, mask=mask)


@triton.jit
def _quantize_with_indexes_kernel(y_ptr, m_ptr, h_ptr, w_ptr, bias_ptr, sym_ptr, yhat_ptr, idx_ptr,
                                  C, M, HW, levels,
                                  HAS_MEANS: tl.constexpr, C_DTYPE: tl.constexpr,
                                  C_WIDE: tl.constexpr, M_DTYPE: tl.constexpr,
                                  M_WIDE: tl.constexpr, Y_DTYPE: tl.constexpr, NATIVE: tl.constexpr,
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
    symbols, y_hat = _quantize_values(y, m, HAS_MEANS, C_DTYPE, C_WIDE, M_DTYPE, M_WIDE, Y_DTYPE, NATIVE)
    tl.store(sym_ptr + out, symbols, mask=mask)
    tl.store(yhat_ptr + out, y_hat, mask=mask)

    idx = _index_tile(h_ptr, w_ptr, bias_ptr, b, offs_m, offs_p, C, M, HW, levels,
                      SHIFT, BLOCK_M, BLOCK_C, BLOCK_P)
    tl.store(idx_ptr + out, idx, mask=mask)



# ------------------------------------------------------------------------------------------
# launchers: write into caller-allocated outputs (tests poison them to check every element
# is written). Inputs are contiguous and already broadcast to one shape.
# ------------------------------------------------------------------------------------------
def _quant_dtypes(y: Tensor, means: Tensor | None) -> dict:
    """constexpr dtypes of `_quantize_values` for PyTorch's promotion of y and means, and NATIVE."""
    def wide(dt: torch.dtype):
        return tl.float64 if dt == torch.float64 else tl.float32
    for t in (y, means):
        if t is not None and t.dtype not in _TL:
            raise TypeError(f"quantize supports float16/bfloat16/float32/float64, got {t.dtype}")
    mdt = y.dtype if means is None else means.dtype
    cdt = y.dtype if means is None else torch.promote_types(y.dtype, means.dtype)
    return dict(HAS_MEANS=means is not None, C_DTYPE=_TL[cdt], C_WIDE=wide(cdt), M_DTYPE=_TL[mdt],
                M_WIDE=wide(mdt), Y_DTYPE=_TL[y.dtype], NATIVE=_native())


def _launch_quantize(y: Tensor, means: Tensor | None, symbols: Tensor, y_hat: Tensor) -> None:
    n = y.numel()
    if n:
        block = _elementwise_block()
        _quantize_kernel[(triton.cdiv(n, block),)](
            y, y if means is None else means, symbols, y_hat, n, **_quant_dtypes(y, means), BLOCK=block)


def _launch_quantize_with_indexes(y: Tensor, means: Tensor | None, h: Tensor, weight: Tensor,
                                  bias: Tensor, shift: int, levels: int, symbols: Tensor,
                                  y_hat: Tensor, idx: Tensor) -> None:
    B, C, H, W = h.shape
    M = weight.shape[0]
    if idx.numel():
        blocks = _index_blocks(M)
        grid = (triton.cdiv(H * W, blocks["BLOCK_P"]), triton.cdiv(M, blocks["BLOCK_M"]), B)
        _quantize_with_indexes_kernel[grid](
            y, y if means is None else means, h, weight, bias, symbols, y_hat, idx, C, M, H * W, levels,
            **_quant_dtypes(y, means), SHIFT=shift, **blocks)



# ------------------------------------------------------------------------------------------
# custom ops and public functions
# ------------------------------------------------------------------------------------------
def _quantize_fake(y: Tensor, means: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    return torch.empty_like(y, dtype=torch.int32), torch.empty_like(y)


@_custom_op("quantize", _quantize_fake)
def _quantize_op(y: Tensor, means: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    symbols, y_hat = _quantize_fake(y, means)
    _launch_quantize(y, means, symbols, y_hat)
    return symbols, y_hat


def _quantize_with_indexes_fake(y: Tensor, means: Optional[Tensor], h: Tensor, weight: Tensor,
                                bias: Tensor, shift: int, levels: int) -> tuple[Tensor, Tensor, Tensor]:
    return (*_quantize_fake(y, means), _scale_indexes_fake(h, weight, bias, shift, levels))


@_custom_op("quantize_with_indexes", _quantize_with_indexes_fake)
def _quantize_with_indexes_op(y: Tensor, means: Optional[Tensor], h: Tensor, weight: Tensor,
                              bias: Tensor, shift: int, levels: int) -> tuple[Tensor, Tensor, Tensor]:
    symbols, y_hat, idx = _quantize_with_indexes_fake(y, means, h, weight, bias, shift, levels)
    _launch_quantize_with_indexes(y, means, h, weight, bias, shift, levels, symbols, y_hat, idx)
    return symbols, y_hat, idx


def quantize(y: Tensor, means: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """symbols = round(y - means) (half to even), y_hat = symbols + means. See reference.quantize."""
    _check_device(y, means)
    y, means = _broadcast(y, means)
    return _quantize_op(y, means)


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

