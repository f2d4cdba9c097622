"""SD-1.5-architecture decode benchmark: one enhancement UNet step (K = 1) + the VAE decoder, 512x512, batch 1.

    python benchmarks/gpu/sd15.py [--runs 50] [--variants eager-fp16 compiled-fp16] [--budget-s 240] [--out DIR]
    python benchmarks/gpu/sd15.py --smoke            # tiny SD-1.5-shaped nets at 64x64 (CI; forced without CUDA)

The networks are diffusers' UNet2DConditionModel and AutoencoderKL with the Stable Diffusion 1.5 configs and
*random* weights (nothing is downloaded): latency depends on the architecture, not on the weights. They run
through slim-rt's own stages, as a decode with K = 1 does (slim_rt.pipeline.Pipeline._decode):
x_hat -> FewStepSampler.run (the "unet" stage: sample, timestep, context -> model_out; one DDIM step) ->
the "vae_decoder" stage (BaseModel.decode_latent) -> image [1,3,512,512].

Variants `{eager,compiled}-{fp16,bf16,fp32}`:
- eager: the torch backend's stages (FnStage over slim_rt.backends.unet_call / BaseModel.decode_latent), no compile.
- compiled: slim_rt.backends.compiled_backend.CompiledStage per stage (inductor "default" mode, one CUDA
  graph per static shape on a GPU, channels-last modules and inputs on a GPU); its first call compiles and
  captures (`compile_s`, timed apart from the runs).
Everything runs under torch.inference_mode(), as Pipeline.decode does. Per variant: median and p99 of the
UNet step (incl. the DDIM step around it), the VAE decoder and the whole sequence (CUDA events on a GPU,
one synchronised sequence per run; `total_wall_ms` is the host's view of the same runs), peak GPU memory
(weights included), and `max_abs_diff` of the image (and the enhanced latent) against one eager call of
the same dtype on the same input: a compiled graph must compute the same function.
`--budget-s`: before each variant the elapsed time is checked; the remaining variants are skipped (with the
reason recorded) once it is spent. A variant that fails is recorded with its error; the others still run.
Writes DIR/sd15-<device>.json (DIR/sd15-<gpu>-smoke.json for a smoke run on a GPU) with --out, and prints
a markdown table. `main(argv) -> 0`; `run(args) -> results dict`.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path

import torch

TARGET_MS = 15.0
SMOKE_NOTE = "CPU smoke run: tiny SD-1.5-shaped nets, not a measurement"

# Stable Diffusion 1.5 (runwayml/stable-diffusion-v1-5 unet/ and vae/ config.json); mostly diffusers' defaults
# (UNet: only cross_attention_dim (1280 -> 768) and sample_size differ; VAE: all the block settings).
UNET_SD15 = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280),
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                 cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5,
                 act_fn="silu", flip_sin_to_cos=True, freq_shift=0, downsample_padding=1,
                 mid_block_scale_factor=1, center_input_sample=False)
VAE_SD15 = dict(in_channels=3, out_channels=3, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, act_fn="silu",
                sample_size=512, scaling_factor=0.18215)
# The same block structure, tiny: every block type, attention and up/down sampling of the real thing.
UNET_TINY = {**UNET_SD15, "sample_size": 8, "block_out_channels": (32, 64, 64, 64), "layers_per_block": 1,
             "cross_attention_dim": 32, "norm_num_groups": 8}
VAE_TINY = {**VAE_SD15, "sample_size": 64, "block_out_channels": (8, 16, 16, 16), "layers_per_block": 1,
            "norm_num_groups": 8}
FULL = dict(unet=UNET_SD15, vae=VAE_SD15, size=512, context_len=77)
TINY = dict(unet=UNET_TINY, vae=VAE_TINY, size=64, context_len=77)

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
KINDS = ("eager", "compiled")
STAGE_NAMES = ("unet", "vae_decoder")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=None,
                   help="{eager,compiled}-{fp16,bf16,fp32} (default: eager-fp16 compiled-fp16; "
                        "smoke: eager-fp32 compiled-fp32)")
    p.add_argument("--runs", type=int, default=None, help="timed runs per variant (default 50; smoke 5)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs after the first call (default 3; smoke 1)")
    p.add_argument("--budget-s", type=float, default=240.0,
                   help="wall-time budget: no variant starts once it is spent (default 240)")
    p.add_argument("--smoke", action="store_true", help="tiny SD-1.5-shaped nets at 64x64, fp32 (forced without CUDA)")
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    p.add_argument("--compile-stages", nargs="+", default=list(STAGE_NAMES), choices=STAGE_NAMES,
                   help="the stages a compiled variant compiles; the others run eager (default: both)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder for sd15-<device>.json")
    return p.parse_args(argv)


def _variant(name: str) -> tuple[str, torch.dtype]:
    kind, _, dt = name.partition("-")
    if kind not in KINDS or dt not in DTYPES:
        raise SystemExit(f"unknown variant {name!r}: use {{{','.join(KINDS)}}}-{{{','.join(DTYPES)}}}")
    return kind, DTYPES[dt]


def _versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    for mod in ("diffusers", "triton"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # triton is absent on some CPU installs
            out[mod] = None
    return out


def _pct(xs: list[float], q: float) -> float:
    """q-th percentile, linear interpolation between order statistics."""
    s = sorted(xs)
    if len(s) == 1:
        return s[0]
    k = (len(s) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def _stats(xs: list[float]) -> dict:
    return {"median": round(_pct(xs, 50), 4), "p99": round(_pct(xs, 99), 4),
            "min": round(min(xs), 4), "max": round(max(xs), 4)}


def build(cfg: dict, device: torch.device, dtype: torch.dtype, seed: int):
    """UNet + VAE with random weights, built directly on `device` (seeded locally), frozen, eval, `dtype`."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.device(device):
        torch.manual_seed(seed)
        if device.type == "cuda":
            torch.cuda.manual_seed(seed)
        unet = UNet2DConditionModel(**cfg["unet"])
        vae = AutoencoderKL(**cfg["vae"])
    import diffusers.utils.logging as dl
    level = dl.get_verbosity()
    dl.set_verbosity_error()  # "modules that should be kept in float32: []" on every .to(dtype)
    try:
        for m in (unet, vae):
            m.to(dtype).eval().requires_grad_(False)
    finally:
        dl.set_verbosity(level)
    return unet, vae


def param_counts(unet, vae) -> dict:
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return {"unet": n(unet), "vae_decoder": n(vae.decoder) + n(vae.post_quant_conv), "vae": n(vae)}


def make_inputs(cfg: dict, device: torch.device, dtype: torch.dtype, seed: int):
    """x_hat (the decompressed latent, fp32 as the pipeline has it) and the caption context (`dtype`)."""
    g = torch.Generator().manual_seed(seed + 1)
    lat = cfg["size"] // 8
    x_hat = torch.randn(1, cfg["unet"]["in_channels"], lat, lat, generator=g)
    ctx = torch.randn(1, cfg["context_len"], cfg["unet"]["cross_attention_dim"], generator=g)
    return x_hat.to(device), ctx.to(device, dtype)


class Decode:
    """The K = 1 decode tail of slim_rt.pipeline.Pipeline._decode over two named-tensor stages."""

    def __init__(self, unet_stage, vae_stage, dtype: torch.dtype):
        from slim_rt.config import EnhanceConfig
        from slim_rt.sampler import FewStepSampler
        self.unet_stage, self.vae_stage, self.dtype = unet_stage, vae_stage, dtype
        self.sampler = FewStepSampler.from_configs({}, EnhanceConfig())  # SD defaults, t0 as slim-rt

    def _unet(self, x, t, c):
        return self.unet_stage(sample=x.to(self.dtype), timestep=t, context=c.to(self.dtype))["model_out"].float()

    def enhance(self, x_hat, ctx):
        return self.sampler.run(self._unet, x_hat, ctx, 1)

    def decode(self, latent):
        return self.vae_stage(latent=latent.to(self.dtype))["image"].float()

    def __call__(self, x_hat, ctx):
        latent = self.enhance(x_hat, ctx)
        return latent, self.decode(latent)


def make_stages(kind: str, unet, vae, device: torch.device, compile_stages=STAGE_NAMES):
    """("unet", "vae_decoder") stages of the eager torch backend or the compiled backend (the latter for
    the stages in `compile_stages`, eager for the others)."""
    from slim_rt.backends import FnStage
    from slim_rt.backends import unet_call
    from slim_rt.models.base import BaseModel
    base = BaseModel(vae=vae, unet=unet, text_encoder=None, tokenizer=None, scheduler_config={}, source="sd15-random")
    fns = {"unet": (unet, unet_call(unet)), "vae_decoder": (vae, base.decode_latent)}
    if kind == "eager":
        return tuple(FnStage(name, fn) for name, (_, fn) in fns.items())
    from slim_rt.backends.compiled_backend import CompiledStage, CompileOptions
    opts = CompileOptions(mode="default")
    lock = threading.RLock()
    pool = torch.cuda.graph_pool_handle() if device.type == "cuda" and opts.cuda_graphs else None
    stages = []
    for name, (module, fn) in fns.items():
        if name not in compile_stages:
            stages.append(FnStage(name, fn))
            continue
        if opts.channels_last and device.type == "cuda":  # as compiled_stages does for a whole SlimModel
            module.to(memory_format=torch.channels_last)
        stages.append(CompiledStage(name, fn, device, opts, lock, pool))
    return tuple(stages)


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def time_variant(dec: Decode, x_hat, ctx, ref, device: torch.device, runs: int, warmup: int) -> dict:
    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    out: dict = {}
    # first call: compiles (and captures the CUDA graphs) for the compiled variant; timed per stage
    sync()
    t0 = time.perf_counter()
    latent = dec.enhance(x_hat, ctx)
    sync()
    t1 = time.perf_counter()
    dec.decode(latent)
    sync()
    t2 = time.perf_counter()
    out["first_call_s"] = {"unet": round(t1 - t0, 3), "vae_decoder": round(t2 - t1, 3), "total": round(t2 - t0, 3)}
    for _ in range(warmup):
        dec(x_hat, ctx)
    sync()
    # the output that the timed runs compute (graph replays for the compiled variant) against eager's
    latent, img = dec(x_hat, ctx)
    out["finite"] = bool(torch.isfinite(img).all() and torch.isfinite(latent).all())
    out["max_abs_diff"] = _diff(img, ref["image"])
    out["max_abs_diff_latent"] = _diff(latent, ref["latent"])
    unet_ms, vae_ms, total_ms, wall_ms = [], [], [], []
    for _ in range(runs):
        sync()
        if cuda:
            e0, e1, e2 = (torch.cuda.Event(enable_timing=True) for _ in range(3))
            w0 = time.perf_counter()
            e0.record()
            latent = dec.enhance(x_hat, ctx)
            e1.record()
            dec.decode(latent)
            e2.record()
            torch.cuda.synchronize(device)
            w1 = time.perf_counter()
            unet_ms.append(e0.elapsed_time(e1))
            vae_ms.append(e1.elapsed_time(e2))
            total_ms.append(e0.elapsed_time(e2))
        else:
            w0 = time.perf_counter()
            latent = dec.enhance(x_hat, ctx)
            wm = time.perf_counter()
            dec.decode(latent)
            w1 = time.perf_counter()
            unet_ms.append((wm - w0) * 1e3)
            vae_ms.append((w1 - wm) * 1e3)
            total_ms.append((w1 - w0) * 1e3)
        wall_ms.append((w1 - w0) * 1e3)
    out.update(unet_ms=_stats(unet_ms), vae_decoder_ms=_stats(vae_ms), total_ms=_stats(total_ms),
               total_wall_ms=_stats(wall_ms), runs=runs, warmup=warmup,
               samples_total_ms=[round(x, 3) for x in total_ms])
    return out


def _graph_info(stages) -> dict | None:
    info = {}
    for s in stages:
        if hasattr(s, "graphs"):
            info[s.name] = sum(g is not None for g in s.graphs.values())
    return info or None


def _dynamo_counters() -> dict:
    try:
        from torch._dynamo.utils import counters
        return {"graph_breaks": sum(counters["graph_break"].values()),
                "unique_graphs": int(counters["stats"].get("unique_graphs", 0))}
    except Exception:
        return {}


def _error(e: Exception) -> str:
    msg = str(e).strip()
    return f"{type(e).__name__}: {msg.splitlines()[0][:500] if msg else ''}"


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def run(args: argparse.Namespace, save=None) -> dict:
    """The benchmark; `save(res)` (optional) is called with the partial results before and after each
    variant (`"partial": true` until the end), so a run killed mid-compile still leaves its numbers."""
    start = time.perf_counter()
    save = save or (lambda r: None)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    smoke = bool(args.smoke or not cuda)
    cfg = TINY if smoke else FULL
    names = args.variants or (["eager-fp32", "compiled-fp32"] if smoke else ["eager-fp16", "compiled-fp16"])
    parsed = [(n, *_variant(n)) for n in names]
    runs = args.runs if args.runs is not None else (5 if smoke else 50)
    warmup = args.warmup if args.warmup is not None else (1 if smoke else 3)
    dev_name = torch.cuda.get_device_name(device) if cuda else "cpu"
    res: dict = {
        "benchmark": "sd15-decode", "device": dev_name, "smoke": smoke,
        "what": ("one UNet step (K=1, DDIM) + VAE decoder, batch 1, "
                 f"{cfg['size']}x{cfg['size']} px ({cfg['size'] // 8}x{cfg['size'] // 8} latent), "
                 f"context {cfg['context_len']}x{cfg['unet']['cross_attention_dim']}, random weights"),
        "config": {"unet": cfg["unet"], "vae": cfg["vae"]}, "versions": _versions(),
        "torch_threads": torch.get_num_threads(), "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "runs": runs, "warmup": warmup, "budget_s": args.budget_s, "target_ms": TARGET_MS, "met": None,
        "partial": True, "variants": {},
    }
    if smoke:
        res["note"] = SMOKE_NOTE if not cuda else "smoke run: tiny SD-1.5-shaped nets, not a measurement"

    # group the variants by dtype: one set of modules (and one eager reference output) per dtype
    order = list(dict.fromkeys(dt for _, _, dt in parsed))
    over = lambda: time.perf_counter() - start > args.budget_s  # noqa: E731
    for dtype in order:
        group = [(n, k) for n, k, dt in parsed if dt == dtype]
        if over():
            for n, _ in group:
                res["variants"][n] = {"skipped": f"budget: {time.perf_counter() - start:.0f} s elapsed of {args.budget_s:.0f} s"}
            continue
        t = time.perf_counter()
        try:
            unet, vae = build(cfg, device, dtype, args.seed)
            if cuda:
                torch.cuda.synchronize(device)
            build_s = time.perf_counter() - t
            res.setdefault("params", param_counts(unet, vae))
            x_hat, ctx = make_inputs(cfg, device, dtype, args.seed)
            with torch.inference_mode():
                ref_latent, ref_img = Decode(*make_stages("eager", unet, vae, device), dtype)(x_hat, ctx)
        except Exception as e:  # building the nets or the eager reference failed: the whole dtype group
            err = _error(e)
            for n, _ in group:
                res["variants"][n] = {"error": f"setup: {err}", "traceback": traceback.format_exc(limit=8)[-4000:]}
            save(res)
            unet = vae = None
            _free(device)
            continue
        ref = {"latent": ref_latent, "image": ref_img}
        ref_info = {"image_max_abs": float(ref_img.abs().max()), "latent_max_abs": float(ref_latent.abs().max()),
                    "finite": bool(torch.isfinite(ref_img).all() and torch.isfinite(ref_latent).all())}
        for name, kind in sorted(group, key=lambda v: KINDS.index(v[1])):  # eager before compiled (channels-last)
            elapsed = time.perf_counter() - start
            if elapsed > args.budget_s:
                res["variants"][name] = {"skipped": f"budget: {elapsed:.0f} s elapsed of {args.budget_s:.0f} s"}
                continue
            v: dict = {"kind": kind, "dtype": str(dtype).removeprefix("torch."), "build_s": round(build_s, 3),
                       "reference": ref_info, "started_at_s": round(elapsed, 1)}
            res["variants"][name] = {**v, "running": True}  # what a killed run was doing
            save(res)
            stages = None
            _free(device)
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
                v["allocated_at_start_mib"] = round(torch.cuda.memory_allocated(device) / 2**20, 1)
            try:
                with warnings.catch_warnings(record=True) as caught, torch.inference_mode():
                    warnings.simplefilter("always")
                    dyn0 = _dynamo_counters() if kind == "compiled" else {}
                    stages = make_stages(kind, unet, vae, device, tuple(args.compile_stages))
                    v.update(time_variant(Decode(*stages, dtype), x_hat, ctx, ref, device, runs, warmup))
                if kind == "compiled":
                    v["compiled_stages"] = [n for n in STAGE_NAMES if n in args.compile_stages]
                    v["compile_s"] = v["first_call_s"]["total"]
                    v["cuda_graphs"] = _graph_info(stages)
                    v["dynamo"] = {k: n - dyn0.get(k, 0) for k, n in _dynamo_counters().items()}  # this variant's
                v["warnings"] = sorted({f"{w.category.__name__}: {(str(w.message).strip() or '-').splitlines()[0][:300]}"
                                        for w in caught})[:20]
                if cuda:
                    v["peak_mem_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
                    v["peak_reserved_mib"] = round(torch.cuda.max_memory_reserved(device) / 2**20, 1)
                v["met"] = None if smoke else v["total_ms"]["median"] <= TARGET_MS
            except Exception as e:  # one failing variant does not cost the others their numbers
                v["error"] = _error(e)
                v["traceback"] = traceback.format_exc(limit=8)[-4000:]
            v["variant_s"] = round(time.perf_counter() - start - elapsed, 1)
            res["variants"][name] = v
            save(res)
            print(f"sd15 {name}: " + (f"total {v['total_ms']['median']:.2f} ms median, first call "
                                      f"{v['first_call_s']['total']:.1f} s" if "total_ms" in v else v.get("error", "?")),
                  file=sys.stderr, flush=True)
            del stages
            if kind == "compiled":
                import torch._dynamo as dynamo  # (a plain `import torch._dynamo` would make `torch` local)
                dynamo.reset()
        del unet, vae, x_hat, ctx, ref, ref_latent, ref_img
        _free(device)

    compiled = [v for v in res["variants"].values() if v.get("kind") == "compiled" and "total_ms" in v]
    res["met"] = None if smoke else any(v["total_ms"]["median"] <= TARGET_MS for v in compiled)
    res["elapsed_s"] = round(time.perf_counter() - start, 1)
    res["partial"] = False
    save(res)
    return res


def markdown(res: dict) -> str:
    head = f"### SD-1.5 decode (K=1 UNet step + VAE decoder), {res['device']}" + (" - SMOKE" if res["smoke"] else "")
    lines = [head, "", res["what"] + (f"  \n_{res['note']}_" if res.get("note") else ""), "",
             "| variant | UNet ms (med/p99) | VAE dec ms (med/p99) | total ms (med/p99) | compile s | peak MiB | max abs diff | met |",
             "|---|---|---|---|---|---|---|---|"]
    for name, v in res["variants"].items():
        if "total_ms" not in v:
            lines.append(f"| {name} | {v.get('skipped') or v.get('error')} |  |  |  |  |  |  |")
            continue
        f = lambda s: f"{s['median']:.2f} / {s['p99']:.2f}"  # noqa: E731
        comp = f"{v['compile_s']:.1f}" if "compile_s" in v else "-"
        mem = f"{v['peak_mem_mib']:.0f}" if "peak_mem_mib" in v else "-"
        met = "-" if v.get("met") is None else ("yes" if v["met"] else "no")
        if v.get("compiled_stages") and len(v["compiled_stages"]) < len(STAGE_NAMES):
            name = f"{name} ({', '.join(v['compiled_stages'])} only)"
        lines.append(f"| {name} | {f(v['unet_ms'])} | {f(v['vae_decoder_ms'])} | {f(v['total_ms'])} | {comp} | "
                     f"{mem} | {v['max_abs_diff']:.3g} | {met} |")
    p = res.get("params") or {}
    lines += ["", f"target: total <= {res['target_ms']:g} ms compiled -> met: {res['met']}; params: UNet "
              f"{p.get('unet', 0) / 1e6:.4g} M, VAE decoder {p.get('vae_decoder', 0) / 1e6:.4g} M; "
              f"elapsed {res['elapsed_s']} s"]
    return "\n".join(lines)


def out_name(res: dict) -> str:
    dev = res["device"].replace(" ", "-")
    return f"sd15-{dev}{'-smoke' if res['smoke'] and dev != 'cpu' else ''}.json"


def main(argv=None) -> int:
    args = parse_args(argv)
    paths = []

    def save(res: dict) -> None:
        if not args.out:
            return
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / out_name(res)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(res, indent=2, default=str) + "\n")
        tmp.replace(path)
        paths[:] = [path]

    res = run(args, save)
    print(markdown(res), flush=True)
    if paths:
        print(f"wrote {paths[0]}")
    return 0


if __name__ == "__main__":
    ROOT = Path(__file__).resolve().parents[2]
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    sys.exit(main())
