"""One report for the enhancement study, from the JSON files `slim-rt eval` wrote.

    python benchmarks/enhance_report.py --main eval-slim-tiny-dev.json --teacher eval-teacher-dev-teacher.json \
        --ablation none=eval-slim-tiny-dev-cap-none.json --ablation wrong=eval-slim-tiny-dev-cap-wrong.json \
        --out benchmarks/results/eval-enhance-dev

main:     the student model, K = 0, 1, 2, 4 (and the baselines with their BD-rates)
teacher:  the many-step guided teacher on the same bitstreams (encoding does not depend on the UNet)
ablation: the student with other captions (`--caption-mode none|wrong|label`), same images
Writes OUT.md (tables, targets checked) and OUT.png (top-1 vs bpp).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _load(p: str | Path) -> dict:
    p = Path(p)
    return json.loads((p if p.is_file() else RESULTS / p).read_text())


def _by_rate(res: dict, curve_prefix: str = "slim-k") -> dict[tuple[int, int], dict]:
    return {(a["rate"], a["steps"]): a for a in res["settings"] if a["curve"].startswith(curve_prefix)}


def report(main: dict, teacher: dict | None, ablations: dict[str, dict]) -> tuple[str, dict]:
    st = _by_rate(main)
    rates = sorted({r for r, _ in st})
    ks = sorted({k for _, k in st})
    te = _by_rate(teacher) if teacher else {}
    t_steps = teacher["steps"][0] if teacher else None
    t_g = teacher.get("guidance", 1.0) if teacher else None
    lines = [f"# Enhancement study: {main['model']} on {main['n_images']} images of `{main['split']}`", "",
             f"Same bitstreams for every column (the UNet does not change encoding). Caption: `{main['caption_mode']}` "
             f"(the encoder's classifier top-1 on the original, in the bitstream, its bytes counted). "
             f"Uncompressed crops: top-1 {main['reference']['top1']:.3f}. CPU, {main['device']}.", "",
             "## Top-1 per rate point", "",
             "| rate | bpp | " + " | ".join(f"K={k}" for k in ks) + (f" | teacher ({t_steps} steps, CFG {t_g:g})" if te else "")
             + " |", "|---|---:|" + "---:|" * (len(ks) + bool(te))]
    summary: dict = {"rates": {}}
    for r in rates:
        row = [f"r{r}", f"{st[(r, ks[0])]['bpp']:.4f}"] + [f"{st[(r, k)]['top1']:.3f}" for k in ks]
        if te:
            row.append(f"{te[(r, t_steps)]['top1']:.3f}")
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Time per 256x256 image (ms, decode total / of which UNet)", "",
              "| rate | " + " | ".join(f"K={k}" for k in ks) + (" | teacher" if te else "") + " |",
              "|---|" + "---:|" * (len(ks) + bool(te))]
    for r in rates:
        row = [f"r{r}"] + [f"{st[(r, k)]['dec_ms']:.0f} / {st[(r, k)].get('unet_ms', 0):.0f}" for k in ks]
        if te:
            row.append(f"{te[(r, t_steps)]['dec_ms']:.0f} / {te[(r, t_steps)].get('unet_ms', 0):.0f}")
        lines.append("| " + " | ".join(row) + " |")

    few = [k for k in ks if 1 <= k <= 2]
    lines += ["", "## Targets", "", "| rate | K=0 | best K<=2 | gain over K=0 (pt) | teacher | best K<=2 - teacher (pt) | "
              "UNet time teacher / best K |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rates:
        k0 = st[(r, 0)]["top1"] if (r, 0) in st else float("nan")
        kb = max(few, key=lambda k: st[(r, k)]["top1"]) if few else None
        b = st[(r, kb)] if kb is not None else None
        t = te.get((r, t_steps)) if te else None
        ratio = (t["unet_ms"] / b["unet_ms"]) if (t and b and b.get("unet_ms")) else float("nan")
        summary["rates"][r] = {"k0": k0, "best_k": kb, "best": b["top1"] if b else None,
                               "teacher": t["top1"] if t else None, "unet_ratio": ratio}
        lines.append(f"| r{r} | {k0:.3f} | " + (f"{b['top1']:.3f} (K={kb})" if b else "-") + " | "
                     + (f"{100 * (b['top1'] - k0):+.1f}" if b else "-") + " | "
                     + (f"{t['top1']:.3f}" if t else "-") + " | "
                     + (f"{100 * (b['top1'] - t['top1']):+.1f}" if (b and t) else "-") + " | "
                     + (f"{ratio:.1f}x" if ratio == ratio else "-") + " |")

    if ablations:
        names = list(ablations)
        ab = {n: _by_rate(a) for n, a in ablations.items()}
        common = sorted({k for n in names for _, k in ab[n]} & set(ks))
        lines += ["", "## Caption ablation (same bitstreams except the caption bytes)", "",
                  "| rate | K | auto caption | " + " | ".join(f"{n} caption" for n in names) + " |",
                  "|---|---:|---:|" + "---:|" * len(names)]
        for r in rates:
            for k in common:
                cells = [f"{ab[n][(r, k)]['top1']:.3f} ({ab[n][(r, k)]['bpp']:.4f} bpp)" if (r, k) in ab[n] else "-"
                         for n in names]
                lines.append(f"| r{r} | {k} | {st[(r, k)]['top1']:.3f} ({st[(r, k)]['bpp']:.4f} bpp) | "
                             + " | ".join(cells) + " |")
    if main.get("bd_rate_pct"):
        lines += ["", "## BD-rate at equal top-1 (negative: SLIM needs fewer bits)", "",
                  "| SLIM curve | " + " | ".join(next(iter(main["bd_rate_pct"].values()))) + " |",
                  "|---|" + "---:|" * len(next(iter(main["bd_rate_pct"].values())))]
        for sc, d in main["bd_rate_pct"].items():
            f = lambda v: v if isinstance(v, str) else f"{v:+.1f}%"  # noqa: E731
            lines.append(f"| {sc} | " + " | ".join(f(e["top1"]) for e in d.values()) + " |")
        summary["bd_rate_pct"] = main["bd_rate_pct"]
    return "\n".join(lines) + "\n", summary


def plot(main: dict, teacher: dict | None, path) -> None:
    """The eval's top-1 vs bpp plot over the student's curves, the teacher's and the baselines."""
    from slim_rt.evaluation.report import plot as eval_plot
    label = f"slim teacher ({teacher['steps'][0]} steps, CFG {teacher.get('guidance', 1):g})" if teacher else ""
    extra = [dict(a, curve=label) for a in teacher["settings"]] if teacher else []
    eval_plot(dict(main, settings=extra + main["settings"], name=f"{main['model']}: enhancement K vs teacher"), path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--main", required=True)
    ap.add_argument("--teacher")
    ap.add_argument("--ablation", action="append", default=[], metavar="NAME=JSON")
    ap.add_argument("--out", required=True, help="output path without extension")
    a = ap.parse_args(argv)
    m = _load(a.main)
    t = _load(a.teacher) if a.teacher else None
    abl = {}
    for spec in a.ablation:
        name, _, p = spec.partition("=")
        abl[name] = _load(p)
    md, summary = report(m, t, abl)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(md)
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    plot(m, t, out.with_suffix(".png"))
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
