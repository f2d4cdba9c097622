"""Latency benchmark: every backend of the runtime on one grid of sizes, batch sizes and K, one run.

    python benchmarks/latency.py [--model DIR] [--sizes 256 512 768x512] [--batch 1 8] [--steps 0 1 2]
        [--backends torch torch-fp16 compiled ort] [--repeats 50] [--device cuda] [--out DIR]

The same as `slim-rt bench latency`; the code is slim_rt.evaluation.latency (options: --help).
"""
from __future__ import annotations

import sys

from slim_rt.evaluation.latency import main

if __name__ == "__main__":
    sys.exit(main())
