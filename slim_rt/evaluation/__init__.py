"""Evaluation and benchmarks as a library (`slim-rt eval`, `slim-rt bench`); benchmarks/*.py are thin
scripts over it.

    protocol   the 256x256 crops every codec compresses, captions per mode
    baselines  JPEG / WebP / AVIF through Pillow, the classical envelope
    metrics    classifier scoring, PSNR / MS-SSIM, BD-rate, per-setting aggregates
    report     CSV / JSON / Markdown / plot
    runner     run_eval, the `slim-rt eval` options
    latency    the latency benchmark (`slim-rt bench latency`)
    serve_load the closed-loop load test of `slim-rt serve` (`slim-rt bench serve`)
"""
from __future__ import annotations

from pathlib import Path


def results_dir() -> Path:
    """Default results folder: a source checkout's benchmarks/results, else ./slim-rt-results."""
    root = Path(__file__).resolve().parents[2]
    checkout = root / "benchmarks" / "results"
    if (root / "pyproject.toml").is_file() and checkout.is_dir():
        return checkout
    return Path.cwd() / "slim-rt-results"
