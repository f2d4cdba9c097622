"""Entropy coder speed: CompressAI's C++ rANS (format 1, before) vs slim_rt.entropy.coder (format 2).

Both code the same symbols with the same integer CDF tables (a 64-level Gaussian conditional),
including the list/array conversions each path does per call. Prints and writes ns/symbol and
stream bytes:
    python benchmarks/entropy_coder.py [--symbols 131072 2097152] [--repeats 5] [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import torch


def _data(n: int, gc, seed: int = 0):
    rng = np.random.default_rng(seed)
    idx = np.minimum(rng.geometric(0.08, n) - 1, 63).astype(np.int32)     # mostly small scales
    scale = gc.scale_table.numpy()[idx]
    sym = np.round(rng.standard_normal(n) * scale).astype(np.int32)
    return sym, idx


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def run(sizes: list[int], repeats: int) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from compressai.ans import RansDecoder, RansEncoder
    from slim_rt.entropy import ExactGaussianConditional, coder
    torch.set_num_threads(1)
    gc = ExactGaussianConditional(64, 0.11, 64.0)
    gc.update()
    lists = (gc._quantized_cdf.tolist(), gc._cdf_length.reshape(-1).int().tolist(),
             gc._offset.reshape(-1).int().tolist())
    tables = coder.Tables(gc._quantized_cdf.numpy(), gc._cdf_length.numpy(), gc._offset.numpy())
    rows = []
    for n in sizes:
        sym, idx = _data(n, gc)
        st, it = torch.from_numpy(sym), torch.from_numpy(idx)

        def old_enc():
            return RansEncoder().encode_with_indexes(st.tolist(), it.tolist(), *lists)

        old = old_enc()

        def old_dec():
            return torch.tensor(RansDecoder().decode_with_indexes(old, it.tolist(), *lists), dtype=torch.int32)

        new = coder.encode(sym, idx, tables)
        assert torch.equal(old_dec(), st) and np.array_equal(coder.decode(new, idx, tables), sym)
        r = {"symbols": n,
             "compressai_rans": {"encode_ns": _best(old_enc, repeats) / n * 1e9,
                                 "decode_ns": _best(old_dec, repeats) / n * 1e9, "bytes": len(old)},
             "constriction_ans": {"encode_ns": _best(lambda: coder.encode(sym, idx, tables), repeats) / n * 1e9,
                                  "decode_ns": _best(lambda: coder.decode(new, idx, tables), repeats) / n * 1e9,
                                  "bytes": len(new)}}
        rows.append(r)
        print(f"{n:>9} symbols  compressai enc {r['compressai_rans']['encode_ns']:6.1f} dec "
              f"{r['compressai_rans']['decode_ns']:6.1f} ns/sym {len(old):>8} B | constriction enc "
              f"{r['constriction_ans']['encode_ns']:6.1f} dec {r['constriction_ans']['decode_ns']:6.1f} ns/sym "
              f"{len(new):>8} B")
    return {"machine": platform.processor() or platform.machine(), "threads": 1, "repeats": repeats,
            "distribution": "64-level Gaussian conditional, index ~ geometric(0.08), symbol ~ round(N(0, scale))",
            "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--symbols", type=int, nargs="+", default=[131072, 2097152])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)
    result = run(args.symbols, args.repeats)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "entropy-coder-cpu.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
