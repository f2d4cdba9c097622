"""Throughput of `slim-rt bulk` (Ray Data) on this machine, against one in-process codec as the baseline.

    python benchmarks/bulk.py [--model slim-tiny] [--n 128] [--size 256] [--data DIR] [--num-cpus 2]
        [--workers 2 1] [--batch-size 8] [--caption auto|none] [--out benchmarks/results/bulk-cpu]

Images: the first N photos of DIR (default ../shared/data/imagenet-sample/dev, else random pixels),
centre-cropped and resized to SIZE x SIZE, saved as PNG. For each worker count W (W actors of
num_cpus/W CPUs, torch threads to match) it runs `bulk compress` of the folder and `bulk decompress` of
the result on one local Ray, and reports:
  images/s end to end: what the summary line prints (job start to end: actor start, model load, coding);
  images/s steady: the workers' completion times of the items after each worker's first batch (the
  coding rate itself, which a long job approaches).
Baseline: one process, the same model and batch size, torch with num_cpus threads, encode_batch /
decode_batch over the same files (model load not counted). Writes OUT.json and OUT.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_images(dst: Path, n: int, size: int, data: Path | None) -> str:
    import numpy as np
    from PIL import Image, ImageOps
    dst.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in data.iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))[:n] \
        if data is not None and data.is_dir() else []
    rng = np.random.default_rng(0)
    for i in range(n):
        if i < len(files):
            img = ImageOps.fit(Image.open(files[i]).convert("RGB"), (size, size), Image.BICUBIC)
        else:
            img = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        img.save(dst / f"{i:04d}.png")
    return f"{len(files)} crops of {data}" + (f" + {n - len(files)} random" if n > len(files) else "") \
        if files else f"{n} random images"


def baseline(model: str, folder: Path, batch: int, threads: int, caption, size: int) -> dict:
    import torch

    import slim_rt
    torch.set_num_threads(threads)
    dec = slim_rt.Decoder.from_pretrained(model)
    enc = slim_rt.Encoder(dec.pipeline)
    files = sorted(folder.glob("*.png"))
    enc.encode_batch(files[:1], None if caption is None else [caption])  # first-call costs, captioner load
    t = time.perf_counter()
    datas = []
    for i in range(0, len(files), batch):
        part = files[i:i + batch]
        datas += enc.encode_batch(part, None if caption is None else [caption] * len(part))
    t_enc = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(0, len(datas), batch):
        dec.decode_batch(datas[i:i + batch])
    t_dec = time.perf_counter() - t
    return {"compress_images_per_s": len(files) / t_enc, "decompress_images_per_s": len(files) / t_dec,
            "mean_bpp": sum(8 * len(d) for d in datas) / len(datas) / (size * size) if datas else None}


def job(mode: str, src: Path, dst: Path, model: str, workers: int, cpus: int, batch: int, caption) -> dict:
    from slim_rt import bulk
    cfg = bulk.BulkConfig(mode, str(src), str(dst), model=model, workers=workers, cpus_per_worker=cpus / workers,
                          batch_size=batch, caption=caption, progress=False, device="cpu")
    s = bulk.run(cfg, say=lambda m: None)
    # steady: the workers' own completion times (manifest "time"), past each worker's first batch (which
    # also pays first-call costs such as the captioner's load); results reach the driver in bunches
    done = sorted(datetime.fromisoformat(r["time"]).timestamp()
                  for r in (json.loads(x) for x in (dst / bulk.MANIFEST).read_text().splitlines())
                  if r["status"] == "coded")
    skip = workers * batch
    steady = (len(done) - skip) / (done[-1] - done[skip - 1]) if len(done) > skip + 1 else None
    print(f"  {s.line(mode)}", file=sys.stderr)
    return {"workers": workers, "cpus_per_worker": cpus / workers, "images": s.coded, "failed": s.failed,
            "seconds": round(s.seconds, 2), "first_result_s": round(s.first_result_s or 0, 2),
            "images_per_s_end_to_end": round(s.images_per_s, 3),
            "images_per_s_steady": None if steady is None else round(steady, 3),
            "bytes": s.bytes, "mean_bpp": round(s.mean_bpp, 5)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="default: slim-tiny (or the tiny random model if not bundled)")
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "imagenet-sample" / "dev"))
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--workers", type=int, nargs="+", default=[2, 1])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--caption", choices=["auto", "none"], default="auto")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bulk-cpu"))
    args = ap.parse_args(argv)
    import ray
    import torch

    from slim_rt.api import default_model
    model = args.model or default_model()
    caption = None if args.caption == "auto" else ""
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="slim-bulk-bench-") as tmp:
        tmp = Path(tmp)
        images = make_images(tmp / "in", args.n, args.size, Path(args.data))
        print(f"images: {images}; baseline ...", file=sys.stderr)
        base = baseline(model, tmp / "in", args.batch_size, args.num_cpus, caption, args.size)
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, logging_level="WARNING")
        runs = []
        try:
            for w in args.workers:
                print(f"{w} worker(s) ...", file=sys.stderr)
                c = job("compress", tmp / "in", tmp / f"slim{w}", model, w, args.num_cpus, args.batch_size, caption)
                d = job("decompress", tmp / f"slim{w}", tmp / f"png{w}", model, w, args.num_cpus, args.batch_size, None)
                runs.append({"compress": c, "decompress": d})
        finally:
            ray.shutdown()
    res = {"model": model, "images": images, "n": args.n, "size": args.size, "batch_size": args.batch_size,
           "caption": args.caption, "num_cpus": args.num_cpus, "load_avg_before": [round(x, 2) for x in load],
           "cpu": platform.processor() or platform.machine(), "versions": {
               "ray": ray.__version__, "torch": torch.__version__, "python": platform.python_version()},
           "baseline_in_process": {k: round(v, 3) if isinstance(v, float) else v for k, v in base.items()},
           "bulk": runs}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    out.with_suffix(".md").write_text(report(res))
    print(report(res))
    return 0


def report(r: dict) -> str:
    b = r["baseline_in_process"]
    lines = [f"# Bulk coding on Ray Data: {r['num_cpus']} CPUs", "",
             f"Model `{Path(r['model']).name}`, {r['n']} images {r['size']}x{r['size']} ({r['images']}), batch "
             f"{r['batch_size']}, caption {r['caption']}; ray {r['versions']['ray']}, torch {r['versions']['torch']}; "
             f"load average before: {r['load_avg_before'][0]} (a shared machine: others' work adds noise).", "",
             "| run | workers x CPUs | compress img/s (steady) | decompress img/s (steady) | job s (compress / decompress) |",
             "|---|---|---|---|---|",
             f"| in-process baseline | 1 x {r['num_cpus']} | {b['compress_images_per_s']:.2f} | "
             f"{b['decompress_images_per_s']:.2f} | model load not counted |"]
    for run in r["bulk"]:
        c, d = run["compress"], run["decompress"]
        lines.append(f"| slim-rt bulk | {c['workers']} x {c['cpus_per_worker']:g} | {c['images_per_s_end_to_end']:.2f} "
                     f"({c['images_per_s_steady'] or 0:.2f}) | {d['images_per_s_end_to_end']:.2f} "
                     f"({d['images_per_s_steady'] or 0:.2f}) | {c['seconds']:.1f} / {d['seconds']:.1f} |")
    lines += ["", "img/s: the summary line's figure, images over the whole job (actor start and model load "
              "included); steady: the workers' completion times past each worker's first batch. Mean "
              f"{r['bulk'][0]['compress']['mean_bpp'] if r['bulk'] else 0:.4f} bpp.", "", NOTES]
    return "\n".join(lines)


NOTES = """Reading (the 2-CPU run of 2026-11-26): two 1-CPU workers beat one 2-thread process at compressing
(small convolutions and the per-image captioner scale poorly over threads); decompression is compute
bound, at the in-process rate. Every job first pays about 10 s (Ray's worker processes, torch import,
model load) before its first result, so on 128 images the end-to-end rate is well under the steady one;
on a large archive the steady rate is what counts.

One GPU node (expected, not measured): slim-tiny at 512x512 decodes K=1 in 24 ms eager / 6 ms compiled
fp16 at batch 1 on an H100 (latency-NVIDIA-H100-80GB-HBM3.md), 40-160 images/s per GPU actor before
batching; encoding takes 7-10 ms. The CPU work around the GPU then sets the pace: PNG encoding costs
about 110 ms per 512x512 image on one core here (20 ms at 256x256), which is why decompression with
GPU actors encodes and writes PNGs as CPU tasks after the actor stage. On a 16-core, 1-GPU node expect
about 40-80 images/s at 512x512 with the eager backend (one actor per GPU; batching helps) and 100-150
with the compiled one, where 16 cores of PNG encoding (about 9 images/s each) become the limit.
Measure with this script on the node.
"""


if __name__ == "__main__":
    sys.exit(main())
