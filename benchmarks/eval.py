"""Rate vs machine accuracy: SLIM against JPEG / WebP / AVIF on a labelled image folder.

    python benchmarks/eval.py --data DIR [--model M] [--steps 0 1] [--codecs slim,jpeg,webp,avif] [--limit N]

The same as `slim-rt eval`; the code is slim_rt.evaluation (runner.run_eval; options: --help).
"""
from __future__ import annotations

import sys

from slim_rt.evaluation.runner import main

if __name__ == "__main__":
    sys.exit(main(prog="python benchmarks/eval.py"))
