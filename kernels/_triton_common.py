"""Shared pieces of the Triton ops (`triton_quantize.py`, `triton_scale_indexes.py`,
`triton_likelihood.py`): dtype map, the exact widening/rounding casts every kernel uses, launch
configuration, argument checks and the `torch.library` registration helper.

Kernels accept CUDA tensors, or CPU tensors when TRITON_INTERPRET=1 was set before triton was
imported. Importing this module changes no global setting.
"""
from __future__ import annotations

import os
from typing import Callable

import torch
import triton
import triton.language as tl
from torch import Tensor

_TL = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32,
       torch.float64: tl.float64}


# ------------------------------------------------------------------------------------------
# device helpers
# ------------------------------------------------------------------------------------------
@triton.jit
def _widen(x, WIDE: tl.constexpr, NATIVE: tl.constexpr):
    """x.to(WIDE) for WIDE float32/float64, exact.

    NATIVE (the launchers pass `_native()`: True on a GPU, False under the interpreter) picks how
    bfloat16 is widened: the hardware conversion (exact: it only shifts the bits), or the same
    shift written out on the bits, because the interpreter's bfloat16 cast flushes subnormals."""
    if x.dtype == tl.bfloat16:
        if NATIVE:
            x = x.to(tl.float32)
        else:
            x = (x.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    return x.to(WIDE)


@triton.jit
def _cast(x, DTYPE: tl.constexpr, NATIVE: tl.constexpr):
    """x.to(DTYPE) rounding like PyTorch: to half types via float32, round to nearest even, NaN
    kept a NaN (its payload is not kept: tests compare NaN positions only).

    float32 -> bfloat16: with NATIVE the hardware conversion (Triton's default fp downcast rounding
    is round-to-nearest-even: cvt.rn.bf16.f32, subnormals and overflow to inf like PyTorch);
    otherwise on the bits, because the interpreter's own cast truncates and flushes subnormals.
    """
    if DTYPE == tl.bfloat16:
        if NATIVE:
            return _widen(x, tl.float32, NATIVE).to(tl.bfloat16)
        else:
            bits = _widen(x, tl.float32, NATIVE).to(tl.uint32, bitcast=True)
            bits = bits + (0x7FFF + ((bits >> 16) & 1))              # RTNE to 8 mantissa bits
            bits = tl.where(x != x, 0x7FC00000, bits)                # keep NaN a (quiet) NaN
            return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    elif DTYPE == tl.float16:
        return _widen(x, tl.float32, NATIVE).to(DTYPE)
    else:
        return x.to(DTYPE)



# ------------------------------------------------------------------------------------------
# launch configuration and checks
# ------------------------------------------------------------------------------------------
def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _native() -> bool:
    """The `NATIVE` constexpr of `_widen` / `_cast`: hardware bfloat16 conversions on a GPU, the
    bit-level ones under the interpreter (same results; see `_cast`)."""
    return not _interpreting()


def _elementwise_block() -> int:
    return 8192 if _interpreting() else 1024  # big blocks: fewer (slow) interpreted programs


def _check_device(*tensors: Tensor | None) -> None:
    ts = [t for t in tensors if t is not None]
    dev = ts[0].device
    if any(t.device != dev for t in ts):
        raise ValueError(f"all tensors must be on one device, got {[str(t.device) for t in ts]}")
    if dev.type != "cuda" and not _interpreting():
        raise RuntimeError("Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 set before "
                           "importing triton); use impl='reference' on CPU")


def _broadcast(*tensors: Tensor | None) -> list[Tensor | None]:
    """The tensors expanded to their broadcast shape, contiguous. Tensors that already share one
    shape and are contiguous come back as they are: no `torch.broadcast_shapes` (tens of
    microseconds of Python), no expand views, which in eager mode cost more than a kernel launch."""
    ts = [t for t in tensors if t is not None]
    first = ts[0].shape
    if all(t.shape == first and t.is_contiguous() for t in ts):
        return list(tensors)
    shape = torch.broadcast_shapes(*(t.shape for t in ts))
    return [None if t is None else t.expand(shape).contiguous() for t in tensors]



# ------------------------------------------------------------------------------------------
# torch.library custom ops (namespace slim_rt) with fake implementations for torch.compile
# ------------------------------------------------------------------------------------------
def _direct(*tensors: Tensor | None) -> bool:
    """Whether to call a custom op's implementation directly instead of through the torch.library
    dispatcher: in eager mode on plain tensors. The dispatcher's Python layers cost about 50-70 us
    a call on the lent H100 machine's CPU (op vs bare launcher), as much as the kernels take on an
    encoder-sized batch; the results are the same function's. Under torch.compile (and for fake or
    other tensor subclasses) the ops are called, so tracing sees them with their fake
    implementations."""
    if torch.compiler.is_compiling():
        return False
    return all(t is None or type(t) in (Tensor, torch.nn.Parameter) for t in tensors)


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

