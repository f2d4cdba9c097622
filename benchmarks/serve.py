"""Closed-loop load test of `slim-rt serve` on loopback: throughput and latency, with and without
Triton's dynamic batching, against in-process decoding as the baseline.

    python benchmarks/serve.py [--model slim-tiny] [--size 256 256] [--clients 4] [--requests 16]
        [--max-batch 8] [--max-queue-delay-us 5000] [--budget-s 60] [--device cpu] [--backend torch]

The same as `slim-rt bench serve`; the code is slim_rt.evaluation.serve_load (options: --help).
"""
from __future__ import annotations

import sys

from slim_rt.evaluation.serve_load import main

if __name__ == "__main__":
    sys.exit(main())
