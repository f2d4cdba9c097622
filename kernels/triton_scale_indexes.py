"""Triton `scale_indexes`: the last layer of the integer scale network fused with the CDF-index
selection. Reference: `reference.scale_indexes` (same signature, bit-exact).

  scale_indexes(h, weight, bias, shift, levels) -> indexes int32 [B, M, H, W]

Indexes accumulate in int64, so they equal the reference's exact float64 sum whenever that sum is
exact (|acc| < 2**53); shift > 0 rounds half up (floor((acc + 2**(s-1)) >> s)). `_index_tile` is
also the index half of the fused encoder kernel in `triton_quantize.py`. The op is the
`torch.library` custom op `slim_rt::scale_indexes` (fake implementation for torch.compile).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._triton_common import _check_device, _custom_op, _interpreting

__all__ = ["scale_indexes"]


# ------------------------------------------------------------------------------------------
# device code
# ------------------------------------------------------------------------------------------
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



# ------------------------------------------------------------------------------------------
# launch configuration, checks, launcher (writes into a caller-allocated output)
# ------------------------------------------------------------------------------------------
def _index_blocks(M: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_C, BLOCK_P) for the index tiles (int64 accumulators: keep GPU tiles small)."""
    if _interpreting():
        return min(triton.next_power_of_2(max(M, 1)), 64), 32, 128
    return 32, 1, 64


def _check_index_args(h: Tensor, weight: Tensor, bias: Tensor, levels: int) -> None:
    for name, t in (("h", h), ("weight", weight), ("bias", bias)):
        if t.dtype != torch.int32:
            raise TypeError(f"scale_indexes: {name} must be int32, got {t.dtype}")
    if h.dim() != 4 or weight.dim() != 2 or weight.shape[1] != h.shape[1] or bias.shape != (weight.shape[0],):
        raise ValueError(f"scale_indexes: bad shapes h {tuple(h.shape)}, weight {tuple(weight.shape)}, "
                         f"bias {tuple(bias.shape)}")
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")


def _launch_scale_indexes(h: Tensor, weight: Tensor, bias: Tensor, shift: int, levels: int,
                          idx: Tensor) -> None:
    B, C, H, W = h.shape
    M = weight.shape[0]
    if idx.numel():
        bm, bc, bp = _index_blocks(M)
        grid = (triton.cdiv(H * W, bp), triton.cdiv(M, bm), B)
        _scale_indexes_kernel[grid](h, weight, bias, idx, C, M, H * W, levels,
                                    SHIFT=shift, BLOCK_M=bm, BLOCK_C=bc, BLOCK_P=bp)



# ------------------------------------------------------------------------------------------
# custom op and public function
# ------------------------------------------------------------------------------------------
def _index_shape(h: Tensor, weight: Tensor) -> tuple[int, int, int, int]:
    B, _, H, W = h.shape
    return B, weight.shape[0], H, W


def _scale_indexes_fake(h: Tensor, weight: Tensor, bias: Tensor, shift: int, levels: int) -> Tensor:
    return h.new_empty(_index_shape(h, weight), dtype=torch.int32)


@_custom_op("scale_indexes", _scale_indexes_fake)
def _scale_indexes_op(h: Tensor, weight: Tensor, bias: Tensor, shift: int, levels: int) -> Tensor:
    idx = _scale_indexes_fake(h, weight, bias, shift, levels)
    _launch_scale_indexes(h, weight, bias, shift, levels, idx)
    return idx


def scale_indexes(h: Tensor, weight: Tensor, bias: Tensor, shift: int, levels: int) -> Tensor:
    """Exact int32 CDF indexes [B, M, H, W]. See reference.scale_indexes."""
    _check_device(h, weight, bias)
    _check_index_args(h, weight, bias, levels)
    return _scale_indexes_op(h.contiguous(), weight.contiguous(), bias.contiguous(), int(shift), int(levels))

