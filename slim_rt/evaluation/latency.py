"""Latency benchmark: every backend of the runtime on one grid of sizes, batch sizes and K, one run.

    slim-rt bench latency [--model DIR] [--sizes 256 512 768x512] [--batch 1 8] [--steps 0 1 2]
        [--backends torch torch-fp16 compiled ort] [--repeats 50] [--device cuda]
    python benchmarks/latency.py [same options]

Backends: torch (eager fp32), torch-fp16, torch-bf16, compiled (torch.compile per stage + CUDA graphs
on a GPU, slim_rt.backends.compiled_backend), compiled-fp16, compiled-bf16, ort, trt (an export made on
the fly unless --export-dir), ort-int8 (an export with int8 stages: --int8-export-dir). Sizes are N (square) or WxH.

Per backend, size and batch: warm-up (compiles and captures the compiled backend's graphs for that
shape), then `repeats` timed encodes and, per K, `repeats` timed decodes with no GPU synchronisation
between stages (end-to-end: median, p99, images/s); then a few runs with per-stage synchronisation for
the stage split (pipeline timings). Runs are interleaved across backends run by run, so load from other
processes hits them alike. Peak CUDA memory (GPU) or process RSS (CPU) per backend and shape; on a GPU
the entropy-coding share of decode (CPU work; it cannot overlap the GPU stages it feeds) and the
overlap won by not synchronising (sum of synced stage times minus the unsynced wall time).
The model defaults to slim-tiny when bundled, else the tiny *random* model.
Writes <out>/latency-<device>.json and .md (--out, default `slim_rt.evaluation.results_dir()`:
benchmarks/results in a source checkout).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from slim_rt.errors import first_line
from slim_rt.evaluation import results_dir
from slim_rt.models.registry import MODEL_HELP, default_model


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PeakRSS:
    """Samples the process RSS every few ms in a thread; .peak is the max seen (MiB)."""

    def __init__(self, every_s: float = 0.002):
        self.every_s, self.peak, self._stop = every_s, 0.0, threading.Event()

    def __enter__(self):
        self.peak = _rss_mb()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_mb())
            time.sleep(self.every_s)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss_mb())


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device)).replace(" ", "-")
    return "cpu"


def cpu_model() -> str:
    """The CPU's model name (for result files)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _median_stages(runs: list[dict]) -> dict:
    keys = sorted({k for r in runs for k in r})
    return {k: round(statistics.median(r.get(k, 0.0) for r in runs), 3) for k in keys}


BACKEND_DTYPES = {"torch": ("torch", None), "torch-fp16": ("torch", torch.float16),
                  "torch-bf16": ("torch", torch.bfloat16), "compiled": ("compiled", None),
                  "compiled-fp16": ("compiled", torch.float16), "compiled-bf16": ("compiled", torch.bfloat16),
                  "ort": ("ort", None), "ort-int8": ("ort", None), "trt": ("trt", None)}
CAPTION = "a photo of a cat"


def parse_size(s: str) -> tuple[int, int]:
    """'512' -> (512, 512); '768x512' -> (H=512, W=768)."""
    w, _, h = s.lower().partition("x")
    return (int(h or w), int(w))


def _stats(times: list[float]) -> dict:
    ts = sorted(times)
    p99 = ts[min(len(ts) - 1, max(0, int(round(0.99 * (len(ts) - 1)))))]
    return {"median_ms": round(statistics.median(ts), 3), "p99_ms": round(p99, 3), "min_ms": round(ts[0], 3),
            "n": len(ts)}


class _Case:
    """One backend at one (size, batch): inputs, a bitstream batch, and the time lists."""

    def __init__(self, enc, dec, size, batch, steps_list, device):
        self.enc, self.dec, self.device = enc, dec, device
        g = torch.Generator().manual_seed(size[0] * 7919 + size[1] * 31 + batch)
        self.images = [torch.rand(3, *size, generator=g) for _ in range(batch)]
        self.caps = [CAPTION] * batch
        self.steps_list = steps_list
        self.datas = None
        self.times = {"encode": [], **{f"decode_k{k}": [] for k in steps_list}}
        self.stages = {w: [] for w in self.times}

    def _sync(self):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def run(self, what: str, synced: bool) -> float:
        pipe = self.enc.pipeline
        pipe.sync_timings = synced
        self._sync()
        t = time.perf_counter()
        if what == "encode":
            self.datas = self.enc.encode_batch(self.images, self.caps)
            timings = self.enc.timings
        else:
            self.dec.decode_batch(self.datas, steps=int(what[len("decode_k"):]), output="tensor")
            timings = self.dec.timings
        self._sync()
        ms = (time.perf_counter() - t) * 1e3
        pipe.sync_timings = True
        (self.stages if synced else self.times)[what].append(timings if synced else ms)
        return ms


def bench_grid(codecs: dict, sizes, batches, steps_list, repeats, warmup, stage_runs, device,
               deadline: float, log=print, on_case=lambda out: None) -> dict:
    """{backend: {"WxH/bB": {...}}}; configs past the deadline are skipped and say so. on_case(out) after
    each (size, batch): the caller writes partial results, so a run cut short keeps what it measured."""
    out: dict = {b: {} for b in codecs}
    # batch-major (every size at the first batch size before the next batch size): a run cut short by
    # its budget keeps the single-image latencies, the figures users read first
    for batch in batches:
        for (h, w) in sizes:
            key = f"{w}x{h}/b{batch}"
            if time.perf_counter() > deadline:
                for b in codecs:
                    out[b][key] = {"skipped": "time budget spent"}
                log(f"bench: {key}: skipped (time budget spent)")
                continue
            cases = {}
            for b, (enc, dec) in codecs.items():
                try:
                    if device.startswith("cuda"):
                        torch.cuda.reset_peak_memory_stats()
                    t = time.perf_counter()
                    case = _Case(enc, dec, (h, w), batch, steps_list, device)
                    with PeakRSS() as mem:
                        for _ in range(max(1, warmup)):
                            case.run("encode", False)
                            for k in steps_list:
                                case.run(f"decode_k{k}", False)
                        case.times = {wh: [] for wh in case.times}
                    case.warmup_s = time.perf_counter() - t
                    case.peak = mem.peak
                    if device.startswith("cuda"):  # this backend's warm-up (same shapes as its timed runs)
                        case.peak_cuda = torch.cuda.max_memory_allocated() / 2**20
                    cases[b] = case
                except Exception as e:  # one backend failing a shape must not stop the grid
                    msg = first_line(e)
                    out[b][key] = {"error": msg}
                    log(f"bench: {b} {key}: {msg}")
            whats = ["encode"] + [f"decode_k{k}" for k in steps_list]
            for i in range(repeats + stage_runs):
                for b, case in cases.items():
                    for wh in whats:
                        case.run(wh, synced=i >= repeats)
            for b, case in cases.items():
                r = {"warmup_s": round(case.warmup_s, 2), "bytes_per_image": sum(map(len, case.datas)) / batch}
                for wh in whats:
                    st = _stats(case.times[wh])
                    st["images_per_s"] = round(batch / (st["median_ms"] / 1e3), 1)
                    st["stages_ms"] = _median_stages(case.stages[wh])
                    synced_sum = sum(st["stages_ms"].values())
                    st["synced_total_ms"] = round(synced_sum, 3)
                    # CPU/GPU overlap won without per-stage syncs (~0 when every stage waits for the last)
                    st["overlap_ms"] = round(synced_sum - st["median_ms"], 3)
                    if wh.startswith("decode"):
                        ent = st["stages_ms"].get("entropy_decode", 0.0)
                        st["entropy_share"] = round(ent / synced_sum, 4) if synced_sum else None
                    r[wh] = st
                if device.startswith("cuda"):
                    r["peak_cuda_mb"] = round(case.peak_cuda, 1)
                else:
                    r["peak_rss_mb"] = round(case.peak, 1)
                out[b][key] = r
                dec = " ".join(f"K{k} {r[f'decode_k{k}']['median_ms']:.2f}" for k in steps_list)
                log(f"bench: {b:<14} {key:<12} encode {r['encode']['median_ms']:.2f} ms, decode {dec} ms")
            on_case(out)
    return out


def _load_codecs(args, model, device) -> tuple[dict, object]:
    import slim_rt
    from slim_rt.captions import FixedCaptioner

    cap = FixedCaptioner(CAPTION)
    codecs, tmp, export_dir = {}, None, args.export_dir
    for name in args.backends:
        kind, dtype = BACKEND_DTYPES[name]
        if kind in ("torch", "compiled"):
            opts = None
            if kind == "compiled":
                from slim_rt.backends.compiled_backend import CompileOptions
                opts = CompileOptions(mode=args.compile_mode, dynamic={"dynamic": True, "static": False}.get(
                    args.compile_shapes))
            enc = slim_rt.Encoder.from_pretrained(model, rate=args.rate, device=device, backend=kind, dtype=dtype,
                                                  captioner=cap, steps=max(args.steps), text_encoder=args.text_encoder,
                                                  compile_options=opts)
        elif name == "ort-int8":  # an export with int8 stages: calibration needs images, so it is given
            enc = slim_rt.Encoder.from_engines(args.int8_export_dir, kind, rate=args.rate, device=device,
                                               captioner=cap, steps=max(args.steps))
        else:
            if export_dir is None:
                from slim_rt.export import export_model
                tmp = tempfile.TemporaryDirectory(prefix="slim-bench-")
                export_dir = str(Path(tmp.name) / "export")
                big = max(args.sizes, key=lambda s: s[0] * s[1])
                small = min(args.sizes, key=lambda s: s[0] * s[1])
                print(f"bench: exporting {model} to ONNX (profile up to {big[1]}x{big[0]})", file=sys.stderr)
                export_model(model, export_dir, size=small, max_size=big, batch=max(args.batch),
                             progress=lambda s: None)
            enc = slim_rt.Encoder.from_engines(export_dir, kind, rate=args.rate, device=device, captioner=cap,
                                               steps=max(args.steps))
        codecs[name] = (enc, slim_rt.Decoder(enc.pipeline, max_pixels=enc.max_pixels * max(args.batch)))
        enc.max_pixels *= max(args.batch)
    return codecs, tmp


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="slim-rt bench latency", description=__doc__.split("\n")[0])
    ap.add_argument("--model", help=MODEL_HELP + "; else the tiny random model")
    ap.add_argument("--text-encoder", help="a context-table folder in place of the model's text encoder")
    ap.add_argument("--sizes", type=parse_size, nargs="+", default=[parse_size("256"), parse_size("512")])
    ap.add_argument("--batch", type=int, nargs="+", default=[1])
    ap.add_argument("--steps", type=int, nargs="+", default=None, help="K values to decode with (default: the model's)")
    ap.add_argument("--rate", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--stage-runs", type=int, default=None, help="synchronised runs for the stage split (default min(repeats, 10))")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backends", nargs="+", default=["torch", "ort"], choices=list(BACKEND_DTYPES))
    ap.add_argument("--export-dir", help="an existing `slim-rt export` dir for ort/trt (default: export now)")
    ap.add_argument("--int8-export-dir", help="an export with int8 stages (slim-rt export --int8) for ort-int8")
    ap.add_argument("--compile-mode", default="default", help="torch.compile mode of the compiled backends")
    ap.add_argument("--compile-shapes", choices=["auto", "dynamic", "static"], default="auto",
                    help="dynamic: symbolic sizes from the start (one compile per stage for all shapes); static: "
                         "one compile per shape (fastest code and compile for one shape); auto: dynamo's default")
    ap.add_argument("--time-budget-s", type=float, default=None, help="skip configs that start after this")
    ap.add_argument("--out", default=None, help="results folder (default: benchmarks/results in a source checkout, "
                                                 "else ./slim-rt-results)")
    args = ap.parse_args(argv)
    if "ort-int8" in args.backends and not args.int8_export_dir:
        ap.error("backend ort-int8 needs --int8-export-dir (slim-rt export --int8 vae_decoder ...)")
    t0 = time.perf_counter()
    deadline = t0 + args.time_budget_s if args.time_budget_s else float("inf")

    import slim_rt

    model = args.model or default_model(lambda msg: print(f"bench: {msg}", file=sys.stderr))
    if args.steps is None:
        args.steps = [slim_rt.Encoder.from_pretrained(model, text_encoder=args.text_encoder).steps]
    stage_runs = min(args.repeats, 10) if args.stage_runs is None else args.stage_runs
    from slim_rt.export.onnx_export import versions
    results: dict = {
        "model": model, "device": args.device, "device_name": _device_name(args.device), "cpu": cpu_model(),
        "threads": torch.get_num_threads(), "sizes": [f"{w}x{h}" for h, w in args.sizes], "batch": args.batch,
        "steps": args.steps, "rate": args.rate, "repeats": args.repeats, "warmup": args.warmup,
        "stage_runs": stage_runs, "versions": versions(), "backends": {},
        "compile": {"mode": args.compile_mode, "shapes": args.compile_shapes},
    }
    codecs, tmp = _load_codecs(args, model, args.device)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    out = Path(args.out) if args.out else results_dir()
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"latency-{results['device_name']}"

    def write_partial(backends: dict) -> None:
        results.update(backends=backends, partial=True, wall_s=round(time.perf_counter() - t0, 1))
        stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
        stem.with_suffix(".md").write_text(render_md(results))  # a run killed at its limit keeps both

    results["backends"] = bench_grid(codecs, args.sizes, args.batch, args.steps, args.repeats, args.warmup,
                                     stage_runs, args.device, deadline, log, write_partial)
    results["partial"] = False
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    base = results["backends"].get("torch", {})
    results["speedup_vs_torch"] = {
        b: {key: {wh: round(base[key][wh]["median_ms"] / r[wh]["median_ms"], 3)
                  for wh in r if isinstance(r[wh], dict) and "median_ms" in r[wh] and wh in base.get(key, {})}
            for key, r in per.items() if "error" not in r and "skipped" not in r}
        for b, per in results["backends"].items() if b != "torch" and base}
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    stem.with_suffix(".md").write_text(render_md(results))
    log(f"bench: wrote {stem}.json and {stem}.md")
    if tmp is not None:
        tmp.cleanup()
    return 0


def render_md(r: dict) -> str:
    dev = r["device_name"] if r["device"] == "cpu" else f"{r['device_name']} ({r['device']})"
    lines = [f"# Latency: {dev}", "",
             f"Model `{r['model']}`, rate {r['rate']}, {r['threads']} torch threads (CPU: {r['cpu']}). "
             f"End-to-end: median and p99 of {r['repeats']} runs after {r['warmup']} warm-up, no synchronisation "
             f"between stages; stage split from {r['stage_runs']} synchronised runs. Versions: "
             + ", ".join(f"{k} {v}" for k, v in r["versions"].items()), "",
             "| backend | size/batch | encode ms (p99) | " + " | ".join(f"decode K={k} ms (p99)" for k in r["steps"])
             + " | img/s decode K=" + str(r["steps"][-1]) + " | entropy share | peak MiB* |",
             "|---|---|---|" + "---|" * len(r["steps"]) + "---|---|---|"]
    for b, per in r["backends"].items():
        for key, x in per.items():
            if "error" in x or "skipped" in x:
                lines.append(f"| {b} | {key} | {x.get('error') or x.get('skipped')} |" + " |" * (len(r["steps"]) + 3))
                continue
            last = x[f"decode_k{r['steps'][-1]}"]
            decs = " | ".join(f"{x[f'decode_k{k}']['median_ms']:.2f} ({x[f'decode_k{k}']['p99_ms']:.2f})"
                              for k in r["steps"])
            share = last.get("entropy_share")
            peak = x.get("peak_cuda_mb", x.get("peak_rss_mb"))
            lines.append(f"| {b} | {key} | {x['encode']['median_ms']:.2f} ({x['encode']['p99_ms']:.2f}) | {decs} | "
                         f"{last['images_per_s']:.0f} | {'' if share is None else f'{100 * share:.1f}%'} | {peak:.0f} |")
    if r.get("partial"):
        lines += ["", f"**Partial run**: it stopped (time limit) before the whole grid (sizes {', '.join(r['sizes'])}, "
                  f"batch {', '.join(map(str, r['batch']))}) was measured; only the rows above were."]
    lines += ["", "*Peak MiB: on a GPU, CUDA memory allocated at the peak of this backend's warm-up at that shape "
              "(all backends are loaded in one process, so every loaded backend's weights are included; runs "
              "before 2026-11-26 13:00 read it after all backends' runs: the same figure for each); on a CPU, "
              "the process RSS.",
              "", "Per-stage medians (ms, synchronised runs):", ""]
    for b, per in r["backends"].items():
        for key, x in per.items():
            for wh, st in x.items():
                if isinstance(st, dict) and "stages_ms" in st:
                    lines.append(f"- {b} {key} {wh}: " + ", ".join(f"{k} {v:.3f}" for k, v in st["stages_ms"].items()))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
