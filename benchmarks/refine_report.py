"""Refined vs plain SLIM encodes, paired per image, from `slim-rt eval` CSVs of the same images.

    python benchmarks/refine_report.py --plain eval-...-dev-first60.csv --refined eval-...-refine20.csv \
        [--plain eval-...-lite2.csv --refined eval-...-refine20-lite2.csv ...]

Pairs are given in order (one plain and one refined CSV per machine). For each pair and rate point:
bpp and top-1 of both, and refined minus plain per image (top-1 points and bpp) with its standard
error. Prints markdown.
"""
from __future__ import annotations

import argparse
import csv
import math
from collections import defaultdict


def _rows(path: str) -> dict[tuple[str, int], dict]:
    with open(path, newline="") as f:
        return {(r["file"], int(r["rate"])): r for r in csv.DictReader(f) if r["codec"] == "slim" and r["steps"] == "0"}


def _mean_se(xs: list[float]) -> tuple[float, float]:
    n = len(xs)
    m = sum(xs) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
    return m, sd / math.sqrt(n)


def report(pairs: list[tuple[str, str]], names: list[str] | None = None) -> str:
    lines = ["| machine | rate | n | plain bpp | plain top-1 | refined bpp | refined top-1 | "
             "top-1 difference (points ± se) | bpp difference |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for i, (plain, refined) in enumerate(pairs):
        a, b = _rows(plain), _rows(refined)
        by_rate = defaultdict(list)
        for key in sorted(a.keys() & b.keys()):
            by_rate[key[1]].append((a[key], b[key]))
        name = names[i] if names else f"pair {i}"
        for rate, rs in sorted(by_rate.items()):
            n = len(rs)
            pb, rb = (sum(float(x[j]["bpp"]) for x in rs) / n for j in (0, 1))
            pt, rt = (100 * sum(int(x[j]["top1"]) for x in rs) / n for j in (0, 1))
            dt, se = _mean_se([100 * (int(y["top1"]) - int(x["top1"])) for x, y in rs])
            db, _ = _mean_se([float(y["bpp"]) - float(x["bpp"]) for x, y in rs])
            lines.append(f"| {name} | {rate} | {n} | {pb:.4f} | {pt:.1f}% | {rb:.4f} | {rt:.1f}% | "
                         f"{dt:+.1f} ± {se:.1f} | {db:+.4f} ({100 * db / pb:+.0f}%) |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plain", action="append", required=True)
    ap.add_argument("--refined", action="append", required=True)
    ap.add_argument("--name", action="append", help="a label per pair (e.g. the machine)")
    a = ap.parse_args(argv)
    if len(a.plain) != len(a.refined):
        ap.error("give one --refined per --plain")
    print(report(list(zip(a.plain, a.refined)), a.name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
