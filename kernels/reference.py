"""Plain PyTorch references for the fused entropy-path ops.

Every op here has the same signature as its Triton twin (`triton_quantize.py`,
`triton_scale_indexes.py`, `triton_likelihood.py`, gathered in `triton_ops.py`); the dispatcher in
`__init__.py` picks one. These are the ground truth the kernels are tested against.

Exactness (see docs/exact-entropy.md): integer tensors are carried as int32 and every
integer sum is computed in float64, which represents all integers below 2**53 exactly, so the
result does not depend on summation order, thread count, BLAS or device.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def quantize(y: Tensor, means: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """symbols = round(y - means) (half to even), y_hat = symbols + means.

    y, means: [B, M, H, W] float (means may be None). Returns (symbols int32, y_hat y.dtype).
    Non-finite inputs are rejected by the caller (`check_finite`); here NaN maps to 0 and +-inf
    to the int32 range ends, which is what a float->int32 saturating cast gives on GPU.
    """
    centered = y if means is None else y - means
    rounded = torch.round(centered.float())
    rounded = torch.nan_to_num(rounded, nan=0.0, posinf=2**31 - 128, neginf=-(2**31) + 128)
    symbols = rounded.clamp(-(2**31) + 128, 2**31 - 128).to(torch.int32)
    y_hat = symbols.to(y.dtype) if means is None else (symbols.to(means.dtype) + means).to(y.dtype)
    return symbols, y_hat


def int_conv2d(x: Tensor, weight: Tensor, bias: Tensor, shift: int, lo: int, hi: int) -> Tensor:
    """Exact integer convolution with rounding shift and clamp (a Ballé-2019 style integer layer).

    x: [B, C, H, W] int32; weight: [O, C, k, k] int32; bias: [O] int32 (odd k, 'same' padding).
    out = clamp((conv(x, weight) + bias + 2**(shift-1)) >> shift, lo, hi)  -> [B, O, H, W] int32
    """
    B, C, H, W = x.shape
    O, _, k, _ = weight.shape
    cols = torch.nn.functional.unfold(x.to(torch.float64), k, padding=k // 2)  # [B, C*k*k, H*W]
    acc = weight.reshape(O, -1).to(torch.float64) @ cols + bias.to(torch.float64)[:, None]
    out = _round_shift(acc, shift).clamp(lo, hi)
    return out.to(torch.int32).reshape(B, O, H, W)


def _round_shift(acc: Tensor, shift: int) -> Tensor:
    """floor((acc + 2**(shift-1)) / 2**shift) for integer-valued float64 acc (exact)."""
    if shift <= 0:
        return acc * (2.0 ** -shift)
    return torch.floor((acc + 2.0 ** (shift - 1)) * (2.0 ** -shift))


def scale_indexes(h: Tensor, weight: Tensor, bias: Tensor, shift: int, levels: int) -> Tensor:
    """Last layer of the integer scale network fused with the CDF-index selection.

    h: [B, C, H, W] int32 hidden activations of the integer hyper-synthesis,
    weight: [M, C] int32, bias: [M] int32.
    index = clamp((sum_c weight[m, c] * h[b, c] + bias[m] + 2**(shift-1)) >> shift, 0, levels-1)
    Returns [B, M, H, W] int32. Bit-exact on every device (float64 integer arithmetic).
    """
    B, C, H, W = h.shape
    M = weight.shape[0]
    acc = torch.einsum("mc,bcp->bmp", weight.to(torch.float64), h.reshape(B, C, H * W).to(torch.float64))
    acc = acc + bias.to(torch.float64)[None, :, None]
    return _round_shift(acc, shift).clamp(0, levels - 1).to(torch.int32).reshape(B, M, H, W)


def quantize_with_indexes(
    y: Tensor, means: Tensor | None, h: Tensor, weight: Tensor, bias: Tensor, shift: int, levels: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Encoder entry point: (symbols, y_hat) = quantize(y, means) and indexes = scale_indexes(...)."""
    symbols, y_hat = quantize(y, means)
    return symbols, y_hat, scale_indexes(h, weight, bias, shift, levels)


def gaussian_likelihood(y: Tensor, means: Tensor | None, scales: Tensor, lower_bound: float) -> Tensor:
    """P(round interval) of N(means, max(scales, lower_bound)) at y, evaluated in the lower tail.

    likelihood = Phi((0.5 - |y-mu|)/s) - Phi((-0.5 - |y-mu|)/s), Phi(v) = 0.5*erfc(-v/sqrt2).
    Autograd differentiates this reference; the Triton version has a fused backward.
    """
    values = (y if means is None else y - means).abs()
    # max(scales, bound) whose gradient is zero strictly below the bound and passes AT it: every index-0
    # scale equals the bound exactly, and a zero there would freeze it (no gradient to grow and spend
    # fewer bits). Not clamp_min: its gradient at a tie differs between torch's CPU and CUDA kernels.
    s = torch.where(scales < lower_bound, lower_bound, scales)
    c = -(2**-0.5)
    upper = 0.5 * torch.erfc(c * (0.5 - values) / s)
    lower = 0.5 * torch.erfc(c * (-0.5 - values) / s)
    return upper - lower


def scale_table(levels: int, smin: float, smax: float) -> Tensor:
    """The log-spaced scale table shared by training (float) and coding (CDF rows)."""
    return torch.exp(torch.linspace(math.log(smin), math.log(smax), levels, dtype=torch.float64)).float()
