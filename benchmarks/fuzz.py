"""The long run of the decoder/image-reader fuzzer (tests/test_fuzz.py runs a bounded set in CI).

    python benchmarks/fuzz.py [--cases 20000] [--image-cases 2000] [--seed 1] [--out benchmarks/results]

Builds the tiny random test model, encodes valid files with it, mutates them (slim_rt.fuzzing) and
decodes every case in worker subprocesses. Writes fuzz-<cases>.json (outcome counts, per mutation
kind, and every case outside the allowed outcomes) and exits 1 if there is any.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=20000, help=".slim mutations")
    ap.add_argument("--image-cases", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per case before it counts as a hang")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)
    import slim_rt
    from slim_rt import fuzzing
    from slim_rt.captions import FixedCaptioner
    from slim_rt.testing import build_tiny_random
    model = build_tiny_random(Path(tempfile.mkdtemp()) / "model", seed=0, rates=2)
    enc = slim_rt.Encoder.from_pretrained(str(model), captioner=FixedCaptioner(""))
    g = torch.Generator().manual_seed(args.seed)
    valid = [enc.encode(torch.rand(3, h, w, generator=g), cap, rate=r)
             for (h, w), cap, r in (((64, 64), "a cat", 0), ((70, 90), "", 1), ((128, 64), "ü photo", 1),
                                    ((200, 136), "a photo of a dog", 0))]
    cases = fuzzing.slim_cases(valid, args.cases, args.seed) + fuzzing.image_cases(args.image_cases, args.seed)
    t = time.perf_counter()
    results = fuzzing.run_cases(cases, model, timeout_s=args.timeout)
    secs = time.perf_counter() - t
    bad = [r for r in results if r["outcome"] not in fuzzing.ALLOWED]
    by_kind = Counter(f"{r['kind']}:{r['name'].split('-')[0]} -> {r['outcome']}" for r in results)
    report = {"cases": len(cases), "slim_cases": sum(r["kind"] == "slim" for r in results),
              "image_cases": sum(r["kind"] == "image" for r in results), "seed": args.seed,
              "seconds": round(secs, 1), "outcomes": fuzzing.summary(results),
              "by_mutation": dict(sorted(by_kind.items())), "findings": bad}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"fuzz-{args.cases}.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    print(f"{len(cases)} cases in {secs:.0f} s: {report['outcomes']}; {len(bad)} findings")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
