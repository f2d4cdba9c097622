"""Triton-vs-reference checks shared by the per-op kernel tests (test_kernel_quantize.py,
test_kernel_scale_indexes.py, test_kernel_likelihood.py, test_kernels_triton.py), and the two ways
they run: natively on a CUDA device (`gpu_test`), or on CPU by the Triton interpreter
(`interpreter_case`, driven by `run_interpreter_cases`).

Data are fresh random draws on every run (no fixed seeds); a failure prints what it saw.
Kernel outputs are written into buffers poisoned with two different sentinels in two runs, so
an element the kernel does not write shows up as a mismatch in at least one run.
"""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor

from slim_rt.kernels import reference as R

try:
    import triton  # noqa: F401
    NO_TRITON = ""
except Exception as e:  # not installed, or installed but unusable
    NO_TRITON = f"triton is not usable here ({type(e).__name__}: {e})"
if not NO_TRITON:  # imported unguarded: an error in an op file must fail the tests, not skip them
    from slim_rt.kernels import triton_likelihood, triton_quantize, triton_scale_indexes

FLOATS = (torch.float32, torch.float16, torch.bfloat16)
SHIFT, LEVELS = 12, 64  # intnet: ACT_FRAC + W_FRAC, a typical table size
LOWER_BOUND = 0.11

# gaussian_likelihood tolerances, as fractions of max|exact| (float64 evaluation of the same inputs)
#   vs reference: the fp16/bf16 references round every intermediate, so they are the loose side
#   vs float64:   elementwise |err| <= atol * max|exact| + rtol * |exact|
LIK_TOL_VS_REF = {torch.float32: 2e-6, torch.float16: 1e-2, torch.bfloat16: 1e-1}
LIK_TOL_VS_F64 = {torch.float32: (1e-6, 1e-4), torch.float16: (2e-3, 1e-2), torch.bfloat16: (1.5e-2, 5e-2)}


# ------------------------------------------------------------------------------------------ reports
def _where(mask: Tensor, shape) -> list:
    idx = mask.reshape(-1).nonzero()[:5, 0].tolist()
    return [tuple(int(i) for i in torch.unravel_index(torch.tensor(j), shape)) for j in idx]


def assert_equal(actual: Tensor, expected: Tensor, name: str, *inputs: tuple[str, Tensor]) -> None:
    """Exact equality (NaN == NaN, -0 == +0), dtype and shape included; a report on failure."""
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.cpu(), expected.cpu()
    bad = a != e
    if a.is_floating_point():
        bad &= ~(a.isnan() & e.isnan())
    if bad.any():
        at = _where(bad, a.shape)
        lines = [f"{name}: {int(bad.sum())} of {a.numel()} elements differ; first at {at}"]
        for i in at:
            vals = ", ".join(f"{n}={t.cpu()[i].item()!r}" for n, t in inputs)
            lines.append(f"  {i}: got {a[i].item()!r}, expected {e[i].item()!r} ({vals})")
        raise AssertionError("\n".join(lines))


def assert_close_scaled(actual: Tensor, expected: Tensor, name: str, atol: float, rtol: float = 0.0,
                        scale: Tensor | None = None) -> None:
    """|actual - expected| <= atol * max|scale| + rtol * |scale| elementwise (scale = expected by
    default); NaN/inf must sit at the same places. Reports the worst elements on failure."""
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.detach().cpu().double(), expected.detach().cpu().double()
    ref = e if scale is None else scale.detach().cpu().double()
    finite = e.isfinite()
    same_nonfinite = (a.isnan() & e.isnan()) | (~e.isnan() & ~finite & (a == e))
    fin_ref = ref[finite]
    big = fin_ref.abs().max().item() if fin_ref.numel() else 0.0
    allowed = atol * big + rtol * ref.abs()
    err = (a - e).abs()
    bad = torch.where(finite, ~(err <= allowed), ~same_nonfinite)
    if bad.any():
        worst = torch.where(bad, err.nan_to_num(math.inf), torch.zeros_like(err)).reshape(-1).argmax()
        i = tuple(int(k) for k in torch.unravel_index(worst, a.shape))
        raise AssertionError(
            f"{name} ({actual.dtype}): {int(bad.sum())} of {a.numel()} elements outside "
            f"atol={atol:g}*max|ref|({big:.3g}) + rtol={rtol:g}*|ref|; worst at {i}: got {a[i].item()!r}, "
            f"expected {e[i].item()!r}, err {err[i].item():.3g}, allowed {allowed[i].item():.3g}; "
            f"max err {err[finite].max().item() if finite.any() else float('nan'):.3g}")


def _poisoned(like: Tensor, dtype: torch.dtype, run: int, shape=None) -> Tensor:
    sentinel = (-77777, 12345)[run] if dtype == torch.int32 else (float("nan"), -1234.5)[run]
    return torch.full(like.shape if shape is None else shape, sentinel, dtype=dtype, device=like.device)


# ------------------------------------------------------------------------------------------ inputs
def special_values(dtype: torch.dtype) -> Tensor:
    """Ties, signed zeros, subnormals, huge values, NaN and +-inf representable in `dtype`."""
    fi = torch.finfo(dtype)
    ties = [k + 0.5 for k in range(-12, 12)]
    vals = ties + [0.0, -0.0, fi.tiny / 4, -fi.tiny / 4, fi.tiny, fi.eps, 0.49999997, -0.49999997,
                   0.5000001, 1e30, -1e30, 3e9, -3e9, 2.0**31, -(2.0**31), 2.0**31 - 128, 2.0**24 + 1,
                   1e4 + 0.5, 255.5, 256.5, fi.max, -fi.max, math.nan, math.inf, -math.inf]
    return torch.tensor(vals, dtype=torch.float64).to(dtype)  # out-of-range values become inf


def quantize_inputs(shape, dtype, device, with_means: bool, special: bool):
    """Random y (and means); with `special`, a third of y and means are special values and a third
    of y lie exactly half way between integers relative to means (exact ties after y - means)."""
    y = (torch.randn(shape, dtype=torch.float64) * 40).to(dtype)
    means = (torch.randn(shape, dtype=torch.float64) * 3).to(dtype) if with_means else None
    if special and y.numel():
        sv = special_values(dtype)
        pick = torch.rand(shape) < 1 / 3
        y[pick] = sv[torch.randint(len(sv), (int(pick.sum()),))]
        if with_means:
            means = (torch.round(means.double() * 8) / 8).to(dtype)  # exact in every dtype
            tie = (torch.rand(shape) < 1 / 3) & ~pick
            k = torch.randint(-30, 30, (int(tie.sum()),), dtype=torch.float64) + 0.5
            y[tie] = (means[tie].double() + k).to(dtype)  # exact: small multiples of 1/8
            mpick = torch.rand(shape) < 0.05
            means[mpick] = sv[torch.randint(len(sv), (int(mpick.sum()),))]
    to = dict(device=device)
    return y.to(**to), None if means is None else means.to(**to)


def index_inputs(B, C, H, W, M, device, values="net"):
    """h, weight, bias for scale_indexes. `values`:
      "net":   the int scale network's range, h in [0, 255], 12-bit weights, plus extreme rows that
               hit both clamp ends and negative sums (floor of the arithmetic shift); the kernel's
               fp16 tensor-core path sums every chunk;
      "big_h": |h| up to 10**6 (and the int32 ends), |w| <= 3: no chunk may take the fp16 path;
      "big_w": |w| up to 2**20 (and the int32 ends), h in [0, 3]: likewise;
      "big":   |h| up to 10**6, |w| up to 2**20;
      "edge":  h in [2040, 2049] with |w| <= 3 on channels [0, 32), [64, 96) ..., |w| in
               [2040, 2049] with h in [0, 3] on the others: at the fp16-exact limit 2048 (2049 is
               not), chunk sums small;
      "near":  h, w in [1024, 2049]: chunk sums far above 2**24, where an fp32 sum rounds;
      "mixed": "net" values, but some channel ranges of h, some (row, channel) blocks of w and
               some pixel blocks of h hold values beyond fp16 (2049 .. 70000, some fp16 inf):
               fast and exact chunks in one tile.
    Pair each set with its `index_scaling(values)` (shift, levels), so indexes show the sums."""
    h = torch.randint(0, 256, (B, C, H, W), dtype=torch.int32)
    weight = torch.randint(-2047, 2048, (M, C), dtype=torch.int32)
    bias = torch.randint(-(2**20), 2**20, (M,), dtype=torch.int32)
    ends = torch.tensor([-(2**31), 2**31 - 1], dtype=torch.int32)
    if values == "net":
        if M >= 3:
            weight[0], bias[0] = 2047, 2**24           # saturates at levels - 1
            weight[1], bias[1] = -2047, -(2**20)       # negative -> clamps at 0
            weight[2] = 0                              # bias only, exact tie on the rounding point
            bias[2] = 5 * 2**SHIFT + 2 ** (SHIFT - 1)
    elif values == "big_h":
        h = torch.randint(-(10**6), 10**6 + 1, (B, C, H, W), dtype=torch.int32)
        weight = torch.randint(-3, 4, (M, C), dtype=torch.int32)
        if h.numel():
            h.view(-1)[torch.randint(h.numel(), (2,))] = ends
    elif values == "big_w":
        h = torch.randint(0, 4, (B, C, H, W), dtype=torch.int32)
        weight = torch.randint(-(2**20), 2**20 + 1, (M, C), dtype=torch.int32)
        if weight.numel():
            weight.view(-1)[torch.randint(weight.numel(), (2,))] = ends
    elif values == "big":
        h = torch.randint(-(10**6), 10**6 + 1, (B, C, H, W), dtype=torch.int32)
        weight = torch.randint(-(2**20), 2**20 + 1, (M, C), dtype=torch.int32)
    elif values == "edge":
        hc = (torch.arange(C) // 32) % 2 == 0                 # channel chunks with h at the edge
        wc = ~hc
        h[:, hc] = torch.randint(2040, 2050, h[:, hc].shape, dtype=torch.int32)
        weight[:, hc] = torch.randint(-3, 4, weight[:, hc].shape, dtype=torch.int32)
        h[:, wc] = torch.randint(0, 4, h[:, wc].shape, dtype=torch.int32)
        sign = torch.randint(0, 2, weight[:, wc].shape, dtype=torch.int32) * 2 - 1
        weight[:, wc] = torch.randint(2040, 2050, weight[:, wc].shape, dtype=torch.int32) * sign
    elif values == "near":
        h = torch.randint(1024, 2050, (B, C, H, W), dtype=torch.int32)
        weight = torch.randint(1024, 2050, (M, C), dtype=torch.int32)
        bias = torch.randint(0, 2**20, (M,), dtype=torch.int32)
    elif values == "mixed":
        def big(n):
            return torch.randint(2049, 70001, (n,), dtype=torch.int32)
        hv = h.view(B, C, H * W)
        hv[:, 32:48] = big(hv[:, 32:48].numel()).view(hv[:, 32:48].shape)      # some channel chunks
        hv[:, 64:80, 256:] = big(hv[:, 64:80, 256:].numel()).view(hv[:, 64:80, 256:].shape)  # some pixels
        weight[64:, :16] = big(weight[64:, :16].numel()).view(weight[64:, :16].shape)  # some rows
    else:
        raise ValueError(values)
    return h.to(device), weight.to(device), bias.to(device)


def index_scaling(values: str) -> tuple[int, int]:
    """(shift, levels) that make the indexes of `index_inputs(..., values)` informative: the
    network's for "net", else the exact sums themselves (shift 0, levels 2**31 - 1; "big" sums need
    2**24 less to stay mostly inside int32)."""
    return {"net": (SHIFT, LEVELS), "big": (24, 2**31 - 1)}.get(values, (0, 2**31 - 1))


# ------------------------------------------------------------------------------------------ checks
def check_quantize(shape, dtype, device, with_means=True, special=False) -> None:
    y, means = quantize_inputs(shape, dtype, device, with_means, special)
    ref_sym, ref_hat = R.quantize(y, means)
    ins = (("y", y),) + ((("means", means),) if means is not None else ())
    for run in range(2):  # launcher into poisoned outputs
        sym, hat = _poisoned(y, torch.int32, run), _poisoned(y, dtype, run)
        triton_quantize._launch_quantize(y.contiguous(), None if means is None else means.contiguous(), sym, hat)
        assert_equal(sym, ref_sym, f"quantize symbols {tuple(shape)} {dtype} run {run}", *ins)
        assert_equal(hat, ref_hat, f"quantize y_hat {tuple(shape)} {dtype} run {run}", *ins)
    sym, hat = triton_quantize.quantize(y, means)  # public path (custom op)
    assert_equal(sym, ref_sym, "quantize symbols (public)", *ins)
    assert_equal(hat, ref_hat, "quantize y_hat (public)", *ins)


def check_quantize_mixed(device) -> None:
    """y and means of different dtypes follow PyTorch's promotion like the reference."""
    for ydt, mdt in ((torch.float16, torch.float32), (torch.float32, torch.bfloat16),
                     (torch.bfloat16, torch.float16), (torch.float32, torch.float64)):
        y = (torch.randn(3, 5, 7, 11) * 30).to(ydt).to(device)
        m = torch.randn(3, 5, 7, 11).to(mdt).to(device)
        for a, e, n in zip(triton_quantize.quantize(y, m), R.quantize(y, m), ("symbols", "y_hat")):
            assert_equal(a, e, f"quantize {n} y {ydt} means {mdt}", ("y", y), ("means", m))
    y = torch.randn(2, 4, 5, 6, device=device) * 9  # broadcast means
    m = torch.randn(1, 4, 1, 1, device=device)
    for a, e, n in zip(triton_quantize.quantize(y, m), R.quantize(y, m), ("symbols", "y_hat")):
        assert_equal(a, e, f"quantize {n} broadcast means")


def check_scale_indexes(B, C, H, W, M, device, shift=SHIFT, levels=LEVELS, values="net") -> None:
    h, weight, bias = index_inputs(B, C, H, W, M, device, values)
    ref = R.scale_indexes(h, weight, bias, shift, levels)
    for run in range(2):
        idx = _poisoned(h, torch.int32, run, shape=(B, M, H, W))
        triton_scale_indexes._launch_scale_indexes(h, weight, bias, shift, levels, idx)
        assert_equal(idx, ref, f"scale_indexes {(B, C, H, W)} M={M} shift={shift} {values} run {run}")
    assert_equal(triton_scale_indexes.scale_indexes(h, weight, bias, shift, levels), ref, "scale_indexes (public)")


def check_quantize_with_indexes(B, C, H, W, M, dtype, device, with_means=True, values="net") -> None:
    y, means = quantize_inputs((B, M, H, W), dtype, device, with_means, special=True)
    h, weight, bias = index_inputs(B, C, H, W, M, device, values)
    shift, levels = index_scaling(values)
    ref = R.quantize_with_indexes(y, means, h, weight, bias, shift, levels)
    names = ("symbols", "y_hat", "indexes")
    for run in range(2):
        outs = (_poisoned(y, torch.int32, run), _poisoned(y, dtype, run),
                _poisoned(h, torch.int32, run, shape=(B, M, H, W)))
        triton_quantize._launch_quantize_with_indexes(y, means, h, weight, bias, shift, levels, *outs)
        for a, e, n in zip(outs, ref, names):
            assert_equal(a, e, f"quantize_with_indexes {n} {(B, C, H, W)} M={M} {dtype} {values} run {run}",
                         ("y", y))
    for a, e, n in zip(triton_quantize.quantize_with_indexes(y, means, h, weight, bias, shift, levels), ref, names):
        assert_equal(a, e, f"quantize_with_indexes {n} (public)")


def likelihood_inputs(shape, dtype, device, with_means=True):
    y = torch.randn(shape, dtype=torch.float64) * 4
    means = torch.randn(shape, dtype=torch.float64) if with_means else None
    scales = torch.rand(shape, dtype=torch.float64) * 5 + 0.02  # ~2% below the lower bound
    if scales.numel() >= 4:
        flat = scales.view(-1)
        flat[:: 7] = LOWER_BOUND  # exactly at the bound (after rounding to dtype: at or below)
    ts = [t if t is None else t.to(dtype).to(device) for t in (y, means, scales)]
    return ts


def check_likelihood(shape, dtype, device, with_means=True) -> None:
    y, means, scales = likelihood_inputs(shape, dtype, device, with_means)
    leaves = [t for t in (y, means, scales) if t is not None]
    names = ["y", "means", "scales"] if with_means else ["y", "scales"]

    def run(fn, cast=None):
        xs = [t.detach().clone() if cast is None else t.detach().to(cast) for t in leaves]
        for x in xs:
            x.requires_grad_(True)
        args = (xs[0], xs[1], xs[2]) if with_means else (xs[0], None, xs[1])
        # the float64 run keeps the bound as `dtype` holds it, so scales at the bound stay AT it
        bound = LOWER_BOUND if cast is None else float(torch.tensor(LOWER_BOUND, dtype=dtype))
        out = fn(*args, bound)
        return out, xs, args

    out_t, xs_t, _ = run(triton_likelihood.gaussian_likelihood)
    grad = torch.randn_like(out_t)
    grads_t = torch.autograd.grad(out_t, xs_t, grad) if out_t.numel() else [torch.zeros_like(x) for x in xs_t]
    out_r, xs_r, _ = run(R.gaussian_likelihood)
    grads_r = torch.autograd.grad(out_r, xs_r, grad) if out_r.numel() else [torch.zeros_like(x) for x in xs_r]
    out_x, xs_x, _ = run(R.gaussian_likelihood, torch.float64)
    grads_x = (torch.autograd.grad(out_x, xs_x, grad.double()) if out_x.numel()
               else [torch.zeros_like(x) for x in xs_x])

    tag = f"{tuple(shape)} {dtype}{'' if with_means else ' no means'}"
    a64, r64 = LIK_TOL_VS_F64[dtype]
    for n, t, r, x in [("likelihood", out_t, out_r, out_x)] + [
            (f"d/d{nm}", gt, gr, gx) for nm, gt, gr, gx in zip(names, grads_t, grads_r, grads_x)]:
        assert_close_scaled(t, r, f"{n} vs reference {tag}", LIK_TOL_VS_REF[dtype], scale=x)
        assert_close_scaled(t.double(), x, f"{n} vs float64 {tag}", a64, r64)

    # kernels fully write their outputs (launchers into poisoned buffers)
    if not with_means or y.numel() == 0:
        return
    for k in range(2):
        out = _poisoned(y, dtype, k)
        triton_likelihood._launch_likelihood_fwd(y, means, scales, LOWER_BOUND, out)
        assert_close_scaled(out, out_t.detach(), f"likelihood launcher run {k}", 0.0)
        gd, gs = _poisoned(y, dtype, k), _poisoned(y, dtype, k)
        triton_likelihood._launch_likelihood_bwd(grad, y, means, scales, LOWER_BOUND, gd, gs)
        assert_close_scaled(gd, grads_t[0], f"grad_d launcher run {k}", 0.0)
        assert_close_scaled(gs, grads_t[2], f"grad_scales launcher run {k}", 0.0)


def check_likelihood_special(dtype, device) -> None:
    """Forward on NaN/inf/huge/zero offsets and scales below, at and above the bound."""
    sv = special_values(dtype).to(device)
    y = sv[:, None].expand(-1, 5).contiguous()
    means = torch.zeros_like(y)
    scales = torch.tensor([0.01, LOWER_BOUND, 0.125, 1.0, 1e4], dtype=dtype, device=device).expand_as(y).contiguous()
    out_t = triton_likelihood.gaussian_likelihood(y, means, scales, LOWER_BOUND)
    out_r = R.gaussian_likelihood(y, means, scales, LOWER_BOUND)
    out_x = R.gaussian_likelihood(y.double(), means.double(), scales.double(), LOWER_BOUND)
    assert_close_scaled(out_t, out_r, f"likelihood special {dtype} vs reference", LIK_TOL_VS_REF[dtype], scale=out_x)
    # gradient of scales: zero below the bound, passes at and above it (an index-0 scale sits AT it)
    s = torch.tensor([0.05, 0.125, 0.25], dtype=dtype, device=device, requires_grad=True)
    yy = torch.tensor([0.3, 0.3, 0.3], dtype=dtype, device=device)
    (gs_t,) = torch.autograd.grad(triton_likelihood.gaussian_likelihood(yy, None, s, 0.125).sum(), s)
    s2 = s.detach().clone().requires_grad_(True)
    (gs_r,) = torch.autograd.grad(R.gaussian_likelihood(yy, None, s2, 0.125).sum(), s2)
    assert gs_t[0] == 0 and gs_t[1] != 0 and gs_t[2] != 0, (gs_t, gs_r)
    assert_equal(gs_t == 0, gs_r == 0, "scale-gradient mask vs reference")


def check_compile(device) -> None:
    """The custom ops trace under torch.compile(fullgraph=True) (fake impls + autograd.Function)."""
    y = torch.randn(2, 8, 5, 7, device=device) * 5
    means = torch.randn_like(y)
    scales = (torch.rand_like(y) + 0.1).requires_grad_(True)
    h, weight, bias = index_inputs(2, 6, 5, 7, 8, device)

    def f(y, means, scales, h, weight, bias):
        sym, y_hat, idx = triton_quantize.quantize_with_indexes(y, means, h, weight, bias, SHIFT, LEVELS)
        lik = triton_likelihood.gaussian_likelihood(y_hat, means, scales, LOWER_BOUND)
        idx2 = triton_scale_indexes.scale_indexes(h, weight, bias, SHIFT, LEVELS)
        return sym, idx, lik, idx2, triton_quantize.quantize(y)[0]

    backend = "inductor" if device == "cuda" else "aot_eager"  # no C++ toolchain needed on CPU
    got = torch.compile(f, backend=backend, fullgraph=True)(y, means, scales, h, weight, bias)
    want = f(y, means, scales, h, weight, bias)
    for a, e in zip(got, want):
        assert_equal(a.detach(), e.detach(), "compiled vs eager")
    (g_c,) = torch.autograd.grad(got[2].sum(), scales)
    (g_e,) = torch.autograd.grad(want[2].sum(), scales)
    assert_equal(g_c, g_e, "compiled grad vs eager")


def check_opcheck(device, *names: str) -> None:
    """torch.library.opcheck (schema, fake tensors, AOT dispatch) of the custom ops `slim_rt::<name>`."""
    y = torch.randn(2, 4, 3, 5, device=device) * 5
    m = torch.randn_like(y)
    s = torch.rand_like(y) + 0.1
    h, w, b = index_inputs(2, 3, 3, 5, 4, device)
    cases = {"quantize": [(y, m), (y, None)],
             "scale_indexes": [(h, w, b, SHIFT, LEVELS)],
             "quantize_with_indexes": [(y, m, h, w, b, SHIFT, LEVELS)],
             "gaussian_likelihood_fwd": [(y, m, s, LOWER_BOUND)],
             "gaussian_likelihood_bwd": [(torch.randn_like(y), y, m, s, LOWER_BOUND)]}
    for name in names:
        for args in cases[name]:
            torch.library.opcheck(getattr(torch.ops.slim_rt, name), args,
                                  test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


# ------------------------------------------------------------------------------------------ running
# Each kernel test file holds two kinds of tests:
#   * `gpu_test`: the checks on CUDA, natively (`-m gpu` collects them);
#   * `interpreter_case`: the same checks on CPU under the Triton interpreter. TRITON_INTERPRET=1
#     must be set before triton is imported, which this pytest process may already have done, so
#     test_kernels_triton.py::test_interpreter_subprocess runs every file's cases in a fresh Python.
#     Run one file's cases in-process with `TRITON_INTERPRET=1 python -m pytest tests/<file>`.
INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
INTERP_TIMEOUT_S = 90  # all files take 25-30 s on 2 busy CPU cores: ~3x that, so a hang fails fast
ROOT = Path(__file__).resolve().parent.parent

needs_triton = pytest.mark.skipif(bool(NO_TRITON), reason=NO_TRITON or "triton imports")
interpreter_case = pytest.mark.skipif(not INTERPRETING, reason=(
    "Triton interpreter case: run by test_kernels_triton.py::test_interpreter_subprocess, "
    "or with TRITON_INTERPRET=1 in the environment"))


def gpu_test(fn):
    """Mark a native CUDA test: collected by `-m gpu`; skipped without CUDA or under the interpreter."""
    fn = pytest.mark.gpu(fn)
    fn = pytest.mark.skipif(not torch.cuda.is_available(),
                            reason="needs a CUDA device (torch.cuda.is_available() is False)")(fn)
    return pytest.mark.skipif(INTERPRETING, reason="TRITON_INTERPRET is set: GPU tests must run natively")(fn)


def _text(b: bytes | str | None) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else b or ""


def run_interpreter_cases(*test_files: Path) -> None:
    """Run the interpreter cases of `test_files` in a fresh Python with TRITON_INTERPRET=1 (GPU tests
    and the runner itself deselected); fail with the tail of its output if a case fails, none passes,
    one skips, or the run takes longer than INTERP_TIMEOUT_S."""
    if INTERPRETING:
        pytest.skip("already under the interpreter: the cases run in this process")
    rel = [str(Path(f).resolve().relative_to(ROOT)) for f in test_files]
    # unbuffered: a run killed at the timeout still leaves its progress to show
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONWARNINGS": "ignore", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "-p", "no:cacheprovider",
           "-W", "ignore::RuntimeWarning", "-m", "not gpu", "-k", "not test_interpreter_subprocess", *rel]
    what = f"the interpreter cases of {', '.join(rel)} (TRITON_INTERPRET=1)"
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=INTERP_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        tail = (_text(e.stdout) + _text(e.stderr))[-6000:]
        pytest.fail(f"{what} did not finish in {INTERP_TIMEOUT_S} s; output so far:\n{tail}", pytrace=False)
    tail = (proc.stdout + proc.stderr)[-6000:]
    if proc.returncode != 0:
        pytest.fail(f"{what} failed (rc={proc.returncode}):\n{tail}", pytrace=False)
    summary = proc.stdout.strip().splitlines()[-1]
    if not re.search(r"[1-9]\d* passed", summary) or re.search(r"skipped|failed|error", summary):
        pytest.fail(f"{what}: expected only passes, got {summary!r}:\n{tail}", pytrace=False)
