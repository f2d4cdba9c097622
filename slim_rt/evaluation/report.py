"""Result files of an evaluation: per-image CSV, per-setting JSON, Markdown table, top-1 vs bpp plot."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from slim_rt.evaluation.baselines import ENVELOPE, classical_settings
from slim_rt.evaluation.metrics import frontier
from slim_rt.evaluation.protocol import SIZE

CSV_FIELDS = ["file", "label", "codec", "curve", "setting", "quality", "scale", "rate", "steps", "caption",
              "bytes", "bpp", "pred", "top1", "top5", "psnr", "msssim", "enc_ms", "dec_ms", "unet_ms"]


def ref_scores_rows(images: list, scores: list[dict]) -> list[dict]:
    return [{"file": im.file, "label": im.label, "codec": "original", "curve": "original", "setting": "uncompressed",
             "bytes": SIZE * SIZE * 3, "bpp": 24.0, "pred": s["pred"], "top1": s["top1"], "top5": s["top5"],
             "psnr": "", "msssim": 1.0} for im, s in zip(images, scores)]


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else v


def _json_safe(o):
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_json_safe(v) for v in o]
    return o


def markdown(res: dict) -> str:
    ref = res["reference"]
    lines = [f"# {res['name']}", "",
             f"{res['n_images']} images of `{res['data']}`, model `{res['model']}`, caption mode "
             f"`{res['caption_mode']}`, classifier {res['classifier']}, {res['size']}x{res['size']} crops "
             f"(docs/eval.md). Uncompressed crops: top-1 {ref['top1']:.3f}, top-5 {ref['top5']:.3f}.", "",
             "| codec | setting | bpp | top-1 | top-5 | PSNR (dB) | MS-SSIM | enc ms/img | dec ms/img | UNet ms/img |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for a in res["settings"]:
        lines.append(f"| {a['curve']} | {a['setting']} | {a['bpp']:.4f} | {a['top1']:.3f} | {a['top5']:.3f} | "
                     f"{a['psnr']:.2f} | {a['msssim']:.4f} | {a['enc_ms']:.1f} | {a['dec_ms']:.1f} | "
                     f"{a.get('unet_ms', 0.0):.1f} |")
    if res["bd_rate_pct"]:
        lines += ["", f"BD-rate of SLIM vs each baseline at equal accuracy ({res['bd_rate_method']}; negative = "
                      "SLIM needs fewer bits):", "", "| SLIM | baseline | top-1 | top-5 |", "|---|---|---:|---:|"]
        for sc, d in res["bd_rate_pct"].items():
            for base, e in d.items():
                f = lambda v: v if isinstance(v, str) else f"{v:+.1f}%"  # noqa: E731
                lines.append(f"| {sc} | {base} | {f(e['top1'])} | {f(e['top5'])} |")
    for c, why in res["skipped"].items():
        lines += ["", f"Skipped {c}: {why}"]
    return "\n".join(lines) + "\n"


def plot(res: dict, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    curves: dict[str, list[dict]] = {}
    for a in res["settings"]:
        curves.setdefault(a["curve"], []).append(a)
    classical = classical_settings(curves)
    if classical:
        acc, logr = frontier([a["bpp"] for a in classical], [a["top1"] for a in classical])
        ax.plot(np.exp(logr), acc, "-", color="black", alpha=0.35, lw=6, label=ENVELOPE)
    for name, pts in curves.items():
        pts = sorted(pts, key=lambda a: a["bpp"])
        ax.plot([a["bpp"] for a in pts], [a["top1"] for a in pts], "o-" if name.startswith("slim") else ".--",
                label=name, lw=2 if name.startswith("slim") else 1)
    ax.axhline(res["reference"]["top1"], color="gray", ls=":", label="uncompressed")
    ax.set_xscale("log")
    ax.set_xlabel("bits per pixel (256x256, whole file)")
    ax.set_ylabel("top-1 accuracy")
    ax.set_ylim(0, 1)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(f"{res['name']} ({res['n_images']} images)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)



def write_results(result: dict, rows: list[dict], ref_rows: list[dict], out_dir) -> dict[str, Path]:
    """OUT_DIR/<name>.csv (per image, the uncompressed reference first), .json, .md and .png."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: out_dir / f"{result['name']}.{ext}" for ext in ("csv", "json", "md", "png")}
    with paths["csv"].open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in ref_rows:
            w.writerow(r)
        for r in rows:
            w.writerow({k: _fmt(r[k]) for k in CSV_FIELDS})
    paths["json"].write_text(json.dumps(_json_safe(result), indent=2) + "\n")
    paths["md"].write_text(markdown(result))
    plot(result, paths["png"])
    return paths
