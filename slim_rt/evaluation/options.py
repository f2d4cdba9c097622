"""The options of `slim-rt eval` (and of benchmarks/eval.py); argparse only, so the CLI's parser stays light."""
from __future__ import annotations

import argparse

from slim_rt.models.registry import MODEL_HELP


def ints(tokens) -> list[int] | None:
    """["0,1", "2"] -> [0, 1, 2]; None for no tokens."""
    if not tokens:
        return None
    return [int(x) for t in tokens for x in str(t).split(",") if x.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `slim-rt eval` (and of benchmarks/eval.py)."""
    p.add_argument("--data", required=True, help="image folder with labels.csv")
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument("--out-dir", help="results folder (default: benchmarks/results in a source "
                                          "checkout, else ./slim-rt-results)")
    p.add_argument("--limit", type=int, help="first N images only")
    p.add_argument("--steps", nargs="+", help="enhancement steps K to decode with, e.g. 0 1 2 4 or 20 for a teacher "
                                              "(default: the model's)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    p.add_argument("--codecs", default="slim,jpeg,webp,avif", help="comma list (default: slim,jpeg,webp,avif)")
    p.add_argument("--caption-mode", default="auto", choices=["auto", "none", "label", "wrong"])
    p.add_argument("--quality", action="append", metavar="CODEC=Q,Q", help="override a baseline's quality grid")
    p.add_argument("--baseline-scales", nargs="+", default=["1"], help="also code baselines downscaled by s, e.g. 1 0.5")
    p.add_argument("--batch", type=int, default=16, help="SLIM encode/decode batch (default 16)")
    p.add_argument("--tag", help="suffix for the output file names")
    p.add_argument("--baselines-from", help="reuse the JPEG/WebP/AVIF settings of an earlier eval JSON (same images)")
    p.add_argument("--decoder-export", help="decode with ONNX Runtime on this exported directory (slim-rt export, "
                                            "e.g. with --int8 vae_decoder); default: the torch model")
    p.add_argument("--encoder-export", help="encode with ONNX Runtime on this exported directory (e.g. with --int8 "
                                            "vae_encoder); default: the torch model")
    p.add_argument("--machine", default="efficientnet-lite0",
                   help="the classifier that scores (default efficientnet-lite0; efficientnet-lite1/2 need their "
                        "optional weight packages); a comma list (lite0,lite2) scores the same encodes with each, "
                        "one results file per machine")
    from slim_rt.refine import add_arguments
    add_arguments(p, "SLIM encodes")
    p.add_argument("--rates", nargs="+", help="SLIM rate points to run (default: all)")
    p.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest on a busy shared CPU)")
    p.add_argument("--guidance", type=float, default=1.0,
                   help="classifier-free guidance of the decoder, e.g. for a many-step teacher (default 1: none)")
