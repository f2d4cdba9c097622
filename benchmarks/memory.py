"""Peak memory of encode and decode per megapixel, each size in a fresh subprocess (CPU).

    python benchmarks/memory.py [--model slim-tiny|DIR|tiny-random] [--sizes 512 1024 2048] [--out DIR]

The child loads the model, runs a 64x64 encode+decode (first-call costs), reads its peak RSS
(VmHWM), then encodes or decodes one HxW image and reads the peak again; the difference is the
call's own peak memory. Writes memory-<model>.json to --out (default benchmarks/results).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, torch
import slim_rt
from slim_rt.captions import FixedCaptioner

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

model, op, side, steps, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
steps = None if steps == "none" else int(steps)
enc = slim_rt.Encoder.from_pretrained(model, captioner=FixedCaptioner("a photo of a cat"), steps=steps,
                                      max_pixels=side * side)
dec = slim_rt.Decoder(enc.pipeline, max_pixels=side * side)
g = torch.Generator().manual_seed(0)
dec.decode(enc.encode(torch.rand(3, 64, 64, generator=g)), output="tensor")
img = torch.rand(3, side, side, generator=g) if op == "encode" else None
data = open(path, "rb").read() if op == "decode" else None
base = hwm()
if op == "encode":  # writes the file the decode run reads
    open(path, "wb").write(enc.encode(img))
else:
    dec.decode(data, output="tensor")
print(json.dumps({"base": base, "peak": hwm()}))
"""


def measure(model: str, op: str, side: int, path: str, steps: str = "none", timeout: float = 1800) -> dict:
    """One call in a fresh process: encode writes `path`, decode reads it."""
    r = subprocess.run([sys.executable, "-c", CHILD, model, op, str(side), steps, path], capture_output=True,
                       text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{op} {side}: exit {r.returncode}: {r.stderr.strip().splitlines()[-1:]}")
    m = json.loads(r.stdout.strip().splitlines()[-1])
    mp = side * side / 1e6
    return {"op": op, "side": side, "mp": mp, "base_mib": m["base"] / 2**20, "peak_mib": m["peak"] / 2**20,
            "call_mib": (m["peak"] - m["base"]) / 2**20, "call_mib_per_mp": (m["peak"] - m["base"]) / 2**20 / mp}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="slim-tiny", help="model name or dir, or tiny-random (the test model)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    ap.add_argument("--steps", default="none", help="enhancement steps K (default: the model's)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)
    model, tag = args.model, Path(args.model).name
    if model == "tiny-random":
        from slim_rt.testing import build_tiny_random
        model = str(build_tiny_random(Path(tempfile.mkdtemp()) / "model", seed=0, rates=2))
    rows = []
    tmp = tempfile.mkdtemp()
    for side in args.sizes:
        for op in ("encode", "decode"):
            rows.append(measure(model, op, side, f"{tmp}/{side}.slim", args.steps))
            r = rows[-1]
            print(f"{op:6} {side}x{side} ({r['mp']:.2f} MP): peak RSS {r['peak_mib']:.0f} MiB, "
                  f"call {r['call_mib']:.0f} MiB = {r['call_mib_per_mp']:.0f} MiB/MP", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"memory-{tag}.json").write_text(json.dumps({"model": tag, "steps": args.steps, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
