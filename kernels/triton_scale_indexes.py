"""Triton `scale_indexes`: the last layer of the integer scale network fused with the CDF-index
selection. Reference: `reference.scale_indexes` (same signature, bit-exact).

  scale_indexes(h, weight, bias, shift, levels) -> indexes int32 [B, M, H, W]

Exactness. Sums run over chunks of BLOCK_C channels into an int64 accumulator, so the indexes equal
the reference's exact float64 sum whenever that sum is exact (|acc| < 2**53). A chunk is summed
on the tensor cores, `tl.dot` of fp16 operands with an fp32 result started from zero for that
chunk and converted to int64, only when the chunk's own max|w| <= 2048, max|h| <= 2048 and
BLOCK_C * max|w| * max|h| < 2**24 (decided on the device, per tile and chunk, no host sync): then
every value is exact in fp16, every product exact in fp32, and every partial sum, in whatever
order the hardware adds, an integer below 2**24 in magnitude, hence exact in fp32. The network's
values (h in [0, 255], |w| <= 2047, BLOCK_C = 32) always qualify; any other chunk takes an int64
multiply-add per channel. shift > 0 rounds half up (floor((acc + 2**(s-1)) >> s)). `_index_tile`
is also the index half of the fused encoder kernel in `triton_quantize.py`. The op is the
`torch.library` custom op `slim_rt::scale_indexes` (fake implementation for torch.compile).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._triton_common import _check_device, _custom_op

__all__ = ["scale_indexes"]


# ------------------------------------------------------------------------------------------
# device code
# ------------------------------------------------------------------------------------------
@triton.jit
def _index_tile(h_ptr, w_ptr, bias_ptr, b, offs_m, offs_p, C, M, HW, levels,
                SHIFT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
                BLOCK_P: tl.constexpr):
    """Indexes of batch b, channels offs_m [BLOCK_M], pixels offs_p [BLOCK_P] -> [BLOCK_M, BLOCK_P] int32.

    h: [B, C, HW] int32, w: [M, C] int32, bias: [M] int32. Exact int64 accumulation over chunks of
    BLOCK_C channels: a chunk within the fp16 bounds by an fp16 tensor-core dot (exact, see the
    module docstring), any other by int64 multiply-adds. BLOCK_M, BLOCK_C, BLOCK_P >= 16 (tl.dot).
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
        # max |.| of the chunk in float32: exact up to 2**24 and monotone beyond, so "<= 2048" is
        # decided exactly (and |-2**31| does not wrap as it would in int32)
        w_max = tl.max(tl.abs(w.to(tl.float32)))
        h_max = tl.max(tl.abs(h.to(tl.float32)))
        if (w_max <= 2048.0) & (h_max <= 2048.0) & (w_max * h_max * BLOCK_C < 16777216.0):
            # every value exact in fp16, every product exact in fp32, every partial sum of the
            # chunk an integer below 2**24 in magnitude: the fp32 dot is exact in any order
            part = tl.dot(w.to(tl.float16), h.to(tl.float16), out_dtype=tl.float32)
            acc += part.to(tl.int64)
        else:
            for k in range(0, BLOCK_C):                                       # exact int64 path
                c = c0 + k
                wc = tl.load(w_ptr + offs_m * C + c, mask=mask_m & (c < C), other=0)       # [BLOCK_M]
                hc = tl.load(h_base + c * HW + offs_p, mask=mask_p & (c < C), other=0)     # [BLOCK_P]
                acc += wc.to(tl.int64)[:, None] * hc.to(tl.int64)[None, :]
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
def _index_blocks(M: int) -> dict:
    """Launch keywords of the index tiles, shared by both launchers. All blocks >= 16 (tl.dot);
    BLOCK_C = 32 keeps network chunks on the fast path (32 * 255 * 2047 < 2**24). On an H100 at
    h [16, 192, 64, 64], M = 192, BLOCK_P 128 / 4 warps measured best (BLOCK_M 128, BLOCK_C 16 or
    8 warps were slower). The interpreter runs the very same tiles (only num_warps is moot there)."""
    return dict(BLOCK_M=min(max(triton.next_power_of_2(max(M, 1)), 16), 64), BLOCK_C=32, BLOCK_P=128,
                num_warps=4)


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
        blocks = _index_blocks(M)
        grid = (triton.cdiv(H * W, blocks["BLOCK_P"]), triton.cdiv(M, blocks["BLOCK_M"]), B)
        _scale_indexes_kernel[grid](h, weight, bias, idx, C, M, H * W, levels, SHIFT=shift, **blocks)



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

