"""Entropy coder speed: CompressAI's C++ rANS (format 1, before) vs slim_rt.entropy.coder (format 2).

Both code the same symbols with the same integer CDF tables (a 64-level Gaussian conditional),
including the list/array conversions each path does per call. Prints and writes ns/symbol and
stream bytes:
    python benchmarks/entropy_coder.py [--symbols 131072 2097152] [--repeats 5] [--out benchmarks/results]
                                       [--share-model slim-tiny] [--share-size 512]

--share-model also decodes a --share-size image with that model (CPU, its default K) and reports the
entropy coder's share of the decode time (stage "entropy_decode", which excludes the nested
hyper-synthesis network).
"""
from __future__ import annotations

import argparse
import json
import os
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


def decode_share(model: str, side: int, repeats: int) -> dict:
    import slim_rt
    from slim_rt.captions import FixedCaptioner
    enc = slim_rt.Encoder.from_pretrained(model, captioner=FixedCaptioner("a photo of a cat"))
    dec = slim_rt.Decoder(enc.pipeline)
    data = enc.encode(torch.rand(3, side, side, generator=torch.Generator().manual_seed(0)),
                      rate=enc.model.num_rates - 1)
    dec.decode(data)
    runs = []
    for _ in range(repeats):
        dec.decode(data)
        runs.append(dec.timings)
    best = min(runs, key=lambda t: sum(t.values()))
    total = sum(best.values())
    share = best["entropy_decode"] / total
    print(f"{model} {side}x{side} decode: entropy_decode {best['entropy_decode']:.1f} ms of {total:.0f} ms "
          f"= {100 * share:.2f}%")
    return {"model": model, "side": side, "bytes": len(data), "entropy_decode_ms": best["entropy_decode"],
            "decode_ms": total, "share": share, "timings": best}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--symbols", type=int, nargs="+", default=[131072, 2097152])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--share-model", help="also measure the coder's share of a full decode with this model")
    ap.add_argument("--share-size", type=int, default=512)
    args = ap.parse_args(argv)
    result = run(args.symbols, args.repeats)
    if args.share_model:
        torch.set_num_threads(os.cpu_count() or 1)  # all cores: the networks at their fastest
        result["decode_share"] = decode_share(args.share_model, args.share_size, args.repeats)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "entropy-coder-cpu.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
