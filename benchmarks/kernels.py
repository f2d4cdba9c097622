"""Benchmark the Triton entropy-path kernels against the PyTorch references.

    python benchmarks/kernels.py [--shape 16 192 64 64] [--hidden 192]

On a CUDA device: every op, Triton vs reference, fp32 and fp16, on an encoder-sized batch;
median time of `triton.testing.do_bench` (it warms up and flushes L2), the bytes each op must
move (inputs read once + outputs written once), achieved GB/s and its share of the card's
device-to-device copy bandwidth measured in the same run. Correctness is checked before timing.

gaussian_likelihood_fwd_bwd is also split into its parts (SPLIT_OPS: the forward and backward
kernels alone, the backward custom op alone, fwd+bwd through the dispatcher), and every row records
the host time to issue one call, so one GPU run shows whether the kernels or the Python around them
take the time.

Without CUDA nothing is timed (the interpreter says nothing about GPU speed): the Triton kernels
run under TRITON_INTERPRET=1 on a small shape, are checked against the references, and the
result file records that only correctness was checked.

Writes benchmarks/results/kernels-<device>.json and .md (the table names the device).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import torch

if not torch.cuda.is_available():  # must precede the first triton import
    os.environ.setdefault("TRITON_INTERPRET", "1")

from slim_rt import kernels as K  # noqa: E402
from slim_rt.kernels import reference as R  # noqa: E402
from slim_rt.kernels import triton_likelihood as TL  # noqa: E402
from slim_rt.kernels import triton_ops as T  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SHIFT, LEVELS, LOWER_BOUND = 12, 64, 0.11
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# rows that split gaussian_likelihood_fwd_bwd into its parts (no targets of their own); reference
# column: the reference's forward, or its backward alone (autograd over a kept graph)
#   _fwd_kernel: the forward launcher into a ready buffer (kernel + launch, no op or autograd layers)
#   _bwd_kernel: the backward launcher into ready buffers (grad_y, grad_means, grad_scales in one pass)
#   _bwd_op: torch.ops.slim_rt.gaussian_likelihood_bwd_means through the dispatcher (+ allocation)
#   _fwd_bwd_dispatch: fwd+bwd with the custom ops called through the dispatcher (as under
#       torch.compile), where gaussian_likelihood_fwd_bwd calls their implementations directly
SPLIT_OPS = ("gaussian_likelihood_fwd_kernel", "gaussian_likelihood_bwd_kernel", "gaussian_likelihood_bwd_op",
             "gaussian_likelihood_fwd_bwd_dispatch")
HOST_CALLS = 50  # calls timed on the host (no synchronization) per row


def make_inputs(shape, hidden, dtype, device):
    B, M, H, W = shape
    y = (torch.randn(shape, device=device) * 8).to(dtype)
    means = torch.randn(shape, device=device).to(dtype)
    scales = (torch.rand(shape, device=device) * 5 + 0.05).to(dtype)
    h = torch.randint(0, 256, (B, hidden, H, W), dtype=torch.int32, device=device)
    weight = torch.randint(-2047, 2048, (M, hidden), dtype=torch.int32, device=device)
    bias = torch.randint(-(2**20), 2**20, (M,), dtype=torch.int32, device=device)
    return y, means, scales, h, weight, bias


def ops(y, means, scales, h, weight, bias):
    """name -> (triton fn, reference fn, bytes moved)."""
    n, es = y.numel(), y.element_size()
    idx_bytes = h.numel() * 4 + weight.numel() * 4 + bias.numel() * 4 + n * 4
    q_bytes = 2 * n * es + n * 4 + n * es
    yg, mg, sg = (t.detach().clone().requires_grad_(True) for t in (y, means, scales))
    grad = torch.ones_like(y)
    lik_out = torch.empty_like(y)
    gy_out, gm_out, gs_out = torch.empty_like(y), torch.empty_like(means), torch.empty_like(scales)
    ref_graph = R.gaussian_likelihood(yg, mg, sg, LOWER_BOUND)  # the reference's graph, for its backward alone

    def fwd_bwd(impl):
        def run():
            out = impl.gaussian_likelihood(yg, mg, sg, LOWER_BOUND)
            return torch.autograd.grad(out, (yg, mg, sg), grad)
        return run

    def fwd_bwd_dispatch():  # the same, through the torch.library dispatcher (as torch.compile sees it)
        direct, TL._direct = TL._direct, lambda *t: False
        try:
            return fwd_bwd(T)()
        finally:
            TL._direct = direct

    def fwd_kernel():
        TL._launch_likelihood_fwd(y, means, scales, LOWER_BOUND, lik_out)
        return lik_out

    def bwd_kernel():
        TL._launch_likelihood_bwd(grad, y, means, scales, LOWER_BOUND, gy_out, gs_out, gm_out)
        return gy_out, gm_out, gs_out

    def ref_fwd_bwd_split():  # the reference's backward alone: its forward graph is kept
        return torch.autograd.grad(ref_graph, (yg, mg, sg), grad, retain_graph=True)

    lik_fwd = lambda: R.gaussian_likelihood(y, means, scales, LOWER_BOUND)  # noqa: E731
    return {
        "quantize": (lambda: T.quantize(y, means), lambda: R.quantize(y, means), q_bytes),
        "scale_indexes": (lambda: T.scale_indexes(h, weight, bias, SHIFT, LEVELS),
                          lambda: R.scale_indexes(h, weight, bias, SHIFT, LEVELS), idx_bytes),
        "quantize_with_indexes": (lambda: T.quantize_with_indexes(y, means, h, weight, bias, SHIFT, LEVELS),
                                  lambda: R.quantize_with_indexes(y, means, h, weight, bias, SHIFT, LEVELS),
                                  q_bytes + idx_bytes),
        # what the encoder runs: the dispatcher's "auto" (Triton quantizer + reference indexes) vs reference
        "quantize_with_indexes_auto": (
            lambda: K.quantize_with_indexes(y, means, h, weight, bias, SHIFT, LEVELS, impl="auto"),
            lambda: R.quantize_with_indexes(y, means, h, weight, bias, SHIFT, LEVELS), q_bytes + idx_bytes),
        "gaussian_likelihood": (lambda: T.gaussian_likelihood(y, means, scales, LOWER_BOUND), lik_fwd, 4 * n * es),
        # fwd (3 reads, 1 write) + fused bwd (grad + 3 inputs read, grad_y, grad_means, grad_scales written)
        "gaussian_likelihood_fwd_bwd": (fwd_bwd(T), fwd_bwd(R), (4 + 7) * n * es),
        # where the fwd+bwd time goes (SPLIT_OPS: no targets of their own)
        "gaussian_likelihood_fwd_kernel": (fwd_kernel, lik_fwd, 4 * n * es),
        "gaussian_likelihood_bwd_kernel": (bwd_kernel, ref_fwd_bwd_split, 7 * n * es),
        "gaussian_likelihood_bwd_op": (
            lambda: torch.ops.slim_rt.gaussian_likelihood_bwd_means(grad, y, means, scales, LOWER_BOUND),
            ref_fwd_bwd_split, 7 * n * es),
        "gaussian_likelihood_fwd_bwd_dispatch": (fwd_bwd_dispatch, fwd_bwd(R), (4 + 7) * n * es),
    }


def check(shape, hidden, dtype, device) -> dict:
    """Triton vs reference on one input draw: exact for the integer outputs, max error otherwise."""
    out = {}
    for name, (tf, rf, _) in ops(*make_inputs(shape, hidden, dtype, device)).items():
        a, e = tf(), rf()
        a = a if isinstance(a, (tuple, list)) else (a,)
        e = e if isinstance(e, (tuple, list)) else (e,)
        if name.startswith("gaussian"):
            err = max((x.double() - z.double()).abs().max().item() for x, z in zip(a, e)) if a[0].numel() else 0.0
            out[name] = {"max_abs_err": err}
        else:
            out[name] = {"bit_exact": all(torch.equal(x, z) for x, z in zip(a, e))}
    return out


def copy_bandwidth(device) -> float:
    from triton.testing import do_bench
    src = torch.empty(256 * 2**20, dtype=torch.uint8, device=device)  # 256 MiB, far beyond L2
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=50, rep=200, return_mode="median")
    return 2 * src.numel() / (ms * 1e-3) / 1e9


def host_us(fn, calls: int = HOST_CALLS) -> float:
    """Mean host (CPU) time to issue one call, without waiting for the GPU: where it is close to or
    above the GPU-side median, the op is bound by Python/launch overhead on this machine, not by
    the kernels."""
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    us = (time.perf_counter() - t0) / calls * 1e6
    torch.cuda.synchronize()
    return us


def bench(shape, hidden, device) -> list[dict]:
    from triton.testing import do_bench
    rows = []
    for dtype in DTYPES:
        for name, (tf, rf, nbytes) in ops(*make_inputs(shape, hidden, dtype, device)).items():
            for impl, fn in (("triton", tf), ("reference", rf)):
                ms = do_bench(fn, warmup=25, rep=100, return_mode="median")
                rows.append({"op": name, "dtype": str(dtype).replace("torch.", ""), "impl": impl,
                             "median_ms": ms, "bytes": nbytes, "gbps": nbytes / (ms * 1e-3) / 1e9,
                             "host_us": host_us(fn)})
    return rows


def targets(result: dict) -> list[dict]:
    """The issue's targets on this run: bandwidth share of each Triton kernel (>= 70% of copy for >= 1 M
    elements), fused quantize+indexes vs the unfused PyTorch reference (>= 3x), likelihood fwd+bwd (>= 2x)."""
    t = {(r["op"], r["dtype"], r["impl"]): r for r in result["timings"]}
    out = []
    for (op, dt, impl), r in t.items():
        if impl == "triton" and op not in SPLIT_OPS:
            share = r["gbps"] / result["copy_gbps"]
            out.append({"target": f"{op} {dt}: >= 70% of copy bandwidth", "value": f"{100 * share:.0f}%",
                        "met": share >= 0.7})
    for dt in {r["dtype"] for r in result["timings"]}:
        for op, need in (("quantize_with_indexes", 3.0), ("gaussian_likelihood_fwd_bwd", 2.0)):
            if (op, dt, "triton") in t:
                sp = t[(op, dt, "reference")]["median_ms"] / t[(op, dt, "triton")]["median_ms"]
                out.append({"target": f"{op} {dt}: >= {need:.0f}x the PyTorch reference", "value": f"{sp:.2f}x",
                            "met": sp >= need})
    return out


def device_tag(device) -> str:
    if device == "cpu":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def markdown(result: dict) -> str:
    lines = [f"# Kernel benchmark: {result['device_name']}", "",
             f"mode: {result['mode']}; shape {result['shape']}, hidden {result['hidden']}; "
             f"torch {result['torch']}, triton {result['triton']}", ""]
    if result["mode"] == "correctness-only":
        lines += [result["note"], "", "| op | dtype | check |", "|---|---|---|"]
        for dt, res in result["correctness"].items():
            for op, r in res.items():
                lines.append(f"| {op} | {dt} | {json.dumps(r)} |")
        return "\n".join(lines) + "\n"
    bw = result["copy_gbps"]
    lines += [f"device-to-device copy: {bw:.0f} GB/s (100% reference)", "",
              "| op | dtype | impl | median ms | MB moved | GB/s | % of copy BW | speed-up |",
              "|---|---|---|---|---|---|---|---|"]
    ref = {(r["op"], r["dtype"]): r["median_ms"] for r in result["timings"] if r["impl"] == "reference"}
    for r in result["timings"]:
        sp = ref[(r["op"], r["dtype"])] / r["median_ms"]
        lines.append(f"| {r['op']} | {r['dtype']} | {r['impl']} | {r['median_ms']:.3f} | {r['bytes'] / 1e6:.1f} | "
                     f"{r['gbps']:.0f} | {100 * r['gbps'] / bw:.0f}% | {sp:.2f}x |")
    if result.get("targets"):
        lines += ["", "| target | measured | met |", "|---|---|---|"]
        lines += [f"| {x['target']} | {x['value']} | {'yes' if x['met'] else 'no'} |" for x in result["targets"]]
    host = [r for r in result["timings"] if "host_us" in r]
    if host:
        lines += ["", f"Host time: mean CPU time to issue one call ({HOST_CALLS} calls, no synchronization). "
                  "Where it is near or above the median, the row measures Python/launch overhead, not the GPU.", "",
                  "| op | dtype | impl | median us | host us/call | host / median |", "|---|---|---|---|---|---|"]
        for r in host:
            med = r["median_ms"] * 1e3
            lines.append(f"| {r['op']} | {r['dtype']} | {r['impl']} | {med:.0f} | {r['host_us']:.0f} | "
                         f"{r['host_us'] / med:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", type=int, nargs=4, default=[16, 192, 64, 64], metavar=("B", "M", "H", "W"))
    ap.add_argument("--hidden", type=int, default=192, help="channels of h (integer hyper-synthesis width)")
    ap.add_argument("--out", default=str(RESULTS), help="results folder")
    args = ap.parse_args(argv)
    import triton

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    result = {"device": device_tag(device), "torch": torch.__version__, "triton": triton.__version__,
              "hidden": args.hidden, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    if cuda:
        result.update(device_name=torch.cuda.get_device_name(), mode="timed", shape=args.shape)
        result["correctness"] = {str(dt): check(args.shape, args.hidden, dt, device) for dt in DTYPES}
        result["copy_gbps"] = copy_bandwidth(device)
        result["timings"] = bench(args.shape, args.hidden, device)
        result["targets"] = targets(result)
    else:
        small, hidden = [2, 8, 9, 11], 6
        result.update(device_name=f"CPU ({platform.processor() or platform.machine()}), Triton interpreter",
                      mode="correctness-only", shape=small, hidden=hidden, timings=None,
                      note=("No CUDA device: only correctness was checked (Triton interpreter vs reference "
                            f"on shape {small}); nothing was timed. Run on a GPU for "
                            f"{args.shape} timings."))
        result["correctness"] = {str(dt): check(small, hidden, dt, device)
                                 for dt in (torch.float32, torch.float16)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"kernels-{result['device']}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    if result["mode"] == "correctness-only":
        print("NOTE: no CUDA device - only correctness was checked, nothing was timed.")
    print(f"wrote {stem}.json and {stem}.md")
    bad = [(dt, op) for dt, res in result["correctness"].items() for op, r in res.items()
           if r.get("bit_exact") is False]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
