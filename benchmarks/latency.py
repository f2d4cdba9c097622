"""Latency benchmark: torch eager vs ONNX Runtime (vs TensorRT on a GPU with tensorrt), one run.

    python benchmarks/latency.py [--model DIR] [--sizes 256 512] [--repeats 5] [--device cpu]
    slim-rt bench latency [same options]

Per size and backend: end-to-end encode and decode medians (after warm-up; backends interleaved run
by run so that load from other processes hits them alike), per-stage medians (the pipeline's own
timings), and peak process RSS during that backend's runs (all backends are loaded in one process,
so RSS includes the others' weights; peak CUDA memory on GPU).
The model defaults to slim-tiny when bundled, else the tiny *random* model (architecture-wise tiny:
the numbers then measure runtime overheads more than network compute). The ORT side uses an export
made on the fly (fp32, profile covering the sizes) unless --export-dir is given.
Writes benchmarks/results/latency-<device>.json and .md.
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

RESULTS = Path(__file__).resolve().parent / "results"


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


def _cpu_model() -> str:
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


def bench_codec(enc, dec, size: int, repeats: int, warmup: int, device: str) -> dict:
    img = torch.rand(3, size, size, generator=torch.Generator().manual_seed(size))
    sync = (lambda: torch.cuda.synchronize()) if device.startswith("cuda") else (lambda: None)
    out = {}
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as mem:
        data = enc.encode(img, caption="a photo of a cat")
        for _ in range(warmup):
            dec.decode(enc.encode(img, caption="a photo of a cat"), output="tensor")
        for what, fn in (("encode", lambda: enc.encode(img, caption="a photo of a cat")),
                         ("decode", lambda: dec.decode(data, output="tensor"))):
            times, stages = [], []
            for _ in range(repeats):
                sync()
                t = time.perf_counter()
                fn()
                sync()
                times.append((time.perf_counter() - t) * 1e3)
                stages.append((enc if what == "encode" else dec).timings)
            out[what] = {"median_ms": round(statistics.median(times), 3), "min_ms": round(min(times), 3),
                         "stages_ms": _median_stages(stages)}
    out["peak_rss_mb"] = round(mem.peak, 1)
    if device.startswith("cuda"):
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    out["bytes"] = len(data)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="slim-rt bench latency", description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="SLIM model dir or name (default: slim-tiny, else the tiny random model)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backends", nargs="+", default=["torch", "ort"], choices=["torch", "ort", "trt"])
    ap.add_argument("--export-dir", help="an existing `slim-rt export` dir for ort/trt (default: export now)")
    ap.add_argument("--steps", type=int, default=None, help="enhancement steps (default: the model's)")
    ap.add_argument("--out", default=str(RESULTS), help="results folder")
    args = ap.parse_args(argv)

    import slim_rt
    from slim_rt.captions import FixedCaptioner
    from slim_rt.models.slim import bundled_dir

    if args.model:
        model = args.model
    elif bundled_dir("slim-tiny") is not None:
        model = "slim-tiny"
    else:
        from slim_rt.testing import tiny_random_cache_dir
        model = str(tiny_random_cache_dir())
        print("bench: slim-tiny is not bundled; using the tiny random model", file=sys.stderr)
    cap = FixedCaptioner("a photo of a cat")
    results: dict = {
        "model": model, "device": args.device, "device_name": _device_name(args.device), "cpu": _cpu_model(),
        "threads": torch.get_num_threads(), "sizes": args.sizes, "repeats": args.repeats, "warmup": args.warmup,
        "versions": {}, "backends": {},
    }
    from slim_rt.export.onnx_export import versions
    results["versions"] = versions()
    tmp = None
    export_dir = args.export_dir
    codecs = {}
    for backend in args.backends:
        if backend == "torch":
            enc = slim_rt.Encoder.from_pretrained(model, device=args.device, captioner=cap, steps=args.steps)
        else:
            if export_dir is None:
                from slim_rt.export import export_model
                tmp = tempfile.TemporaryDirectory(prefix="slim-bench-")
                export_dir = str(Path(tmp.name) / "export")
                big = max(args.sizes)
                print(f"bench: exporting {model} to ONNX (profile up to {big}x{big})", file=sys.stderr)
                export_model(model, export_dir, size=(min(args.sizes),) * 2, max_size=(big, big),
                             progress=lambda s: None)
            enc = slim_rt.Encoder.from_engines(export_dir, backend, device=args.device, captioner=cap,
                                               steps=args.steps)
        codecs[backend] = (enc, slim_rt.Decoder(enc.pipeline))
    # backends interleaved run by run, so that load from other processes hits them alike
    for size in args.sizes:
        runs: dict[str, list[dict]] = {b: [] for b in codecs}
        for i in range(args.repeats):
            for b, (enc, dec) in codecs.items():
                runs[b].append(bench_codec(enc, dec, size, 1, args.warmup if i == 0 else 0, args.device))
        for b, rs in runs.items():
            r = {w: {"median_ms": round(statistics.median(x[w]["median_ms"] for x in rs), 3),
                     "min_ms": round(min(x[w]["min_ms"] for x in rs), 3),
                     "stages_ms": _median_stages([x[w]["stages_ms"] for x in rs])} for w in ("encode", "decode")}
            r["peak_rss_mb"] = max(x["peak_rss_mb"] for x in rs)
            if "peak_cuda_mb" in rs[0]:
                r["peak_cuda_mb"] = max(x["peak_cuda_mb"] for x in rs)
            r["bytes"] = rs[0]["bytes"]
            results["backends"].setdefault(b, {})[str(size)] = r
            print(f"bench: {b:<6} {size}x{size}: encode {r['encode']['median_ms']:.1f} ms, "
                  f"decode {r['decode']['median_ms']:.1f} ms, peak RSS {r['peak_rss_mb']:.0f} MiB", file=sys.stderr)
    per = {str(s): None for s in args.sizes}
    if "torch" in results["backends"]:
        results["ratios_vs_torch"] = {
            b: {s: {w: round(results["backends"][b][s][w]["median_ms"] /
                             results["backends"]["torch"][s][w]["median_ms"], 3) for w in ("encode", "decode")}
                for s in per} for b in results["backends"] if b != "torch"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"latency-{results['device_name']}"
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    stem.with_suffix(".md").write_text(render_md(results))
    print(f"bench: wrote {stem}.json and {stem}.md", file=sys.stderr)
    if tmp is not None:
        tmp.cleanup()
    return 0


def render_md(r: dict) -> str:
    lines = [f"# Latency: {r['device_name']} ({r['cpu'] if r['device'] == 'cpu' else r['device']})", "",
             f"Model `{r['model']}`, {r['threads']} torch threads, median of {r['repeats']} runs after "
             f"{r['warmup']} warm-up; versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()), "",
             "| backend | size | encode ms | decode ms | peak RSS MiB | decode vs torch |",
             "|---|---|---|---|---|---|"]
    for b, per in r["backends"].items():
        for s, x in per.items():
            ratio = r.get("ratios_vs_torch", {}).get(b, {}).get(s, {}).get("decode", 1.0 if b == "torch" else None)
            lines.append(f"| {b} | {s}x{s} | {x['encode']['median_ms']:.1f} | {x['decode']['median_ms']:.1f} | "
                         f"{x['peak_rss_mb']:.0f} | {'' if ratio is None else f'{ratio:.2f}x'} |")
    if r["device"] == "cpu":
        lines += ["", "Caveat: on CPU both runtimes share one process and its cores (torch's OpenMP pool and ORT's "
                  "thread pool interfere), and a shared machine adds noise: compare per-stage medians too."]
    lines += ["", "Per-stage medians (ms):", ""]
    for b, per in r["backends"].items():
        for s, x in per.items():
            for w in ("encode", "decode"):
                st = ", ".join(f"{k} {v:.2f}" for k, v in x[w]["stages_ms"].items())
                lines.append(f"- {b} {s}x{s} {w}: {st}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
