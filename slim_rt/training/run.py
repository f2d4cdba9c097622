"""`slim-rt train`: one entry point that picks the stage and runs it (`run`), and `assemble`, which
collects trained rate points into a SLIM model directory.

Stages live in `stages.py` (base VAE/UNet, compressor), `machine.py` and `enhance.py`; this module is the
only one that imports them all, so the stage modules import each other in one direction only.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from slim_rt.config import COMPRESSOR_PRESETS, ENHANCE_PRESETS, SlimConfig
from slim_rt.training.config import TrainConfig
from slim_rt.training.stages import CompressorStage, UnetStage, VaeStage
from slim_rt.training.trainer import train


def run(cfg: TrainConfig, data: str | Path, out: str | Path, base: str | Path | None = None,
        name: str = "slim-custom", progress: bool = True) -> dict:
    """Entry point of `slim-rt train`. Returns {stage: last log line}."""
    from slim_rt.training.data import ImageFolder
    out = Path(out)
    torch.manual_seed(cfg.seed)
    resize = cfg.resize
    if cfg.stage == "compressor" and any(v != 1.0 for v in cfg.scales):
        if cfg.rate < 0 or len(cfg.scales) != len(cfg.lambdas):
            raise ValueError("with scales, give one per lambda and train one rate point at a time (--set rate=R)")
        resize = round(cfg.resize * cfg.scales[cfg.rate])  # the image the rate point codes, at its scale
        if cfg.crop > resize:
            raise ValueError(f"crop {cfg.crop} is larger than the scaled images ({resize}): --set crop=...")
    ds = ImageFolder(data, cfg.crop, resize, align=1 if cfg.stage.startswith("base-") else 8)
    if cfg.stage == "base-vae":
        return {"base-vae": train(VaeStage(cfg), ds, cfg, out, progress=progress)}
    if base is None:
        raise ValueError(f"stage {cfg.stage} needs --base (a diffusers base directory)")
    if cfg.stage == "base-unet":
        return {"base-unet": train(UnetStage(cfg, base), ds, cfg, out, progress=progress)}
    from slim_rt.training.masks import MaskProvider
    if cfg.stage in ("enhancer", "distill"):  # --base is a SLIM model directory here
        from slim_rt.training.enhance import DistillStage, EnhancerStage
        masks = MaskProvider(cfg.roi, ds, cache_dir=out / "roi-cache")
        if cfg.stage == "enhancer":
            stage = EnhancerStage(cfg, base, masks, ds, latent_cache=out / "latents.pt")
        else:  # teacher targets are computed once and kept in OUT (resume, or copy to a sibling run)
            stage = DistillStage(cfg, base, masks, ds, cache_path=out / "teacher-cache.pt")
        return {cfg.stage: train(stage, ds, cfg, out, progress=progress)}
    if cfg.stage == "machine":  # --base is a SLIM model directory here
        from slim_rt.training.machine import run_machine
        return run_machine(cfg, ds, base, out, MaskProvider(cfg.roi, ds, cache_dir=out / "roi-cache"), progress)
    if cfg.stage != "compressor":
        raise ValueError(f"unknown stage {cfg.stage!r} (base-vae, base-unet, compressor, machine, enhancer, distill)")
    masks = MaskProvider(cfg.roi, ds, cache_dir=out / "roi-cache")
    rates = range(len(cfg.lambdas)) if cfg.rate < 0 else [cfg.rate]
    latent_cache = out / ("latents.pt" if resize == cfg.resize else f"latents-{resize}.pt")
    logs, latents = {}, None
    for r in rates:
        rdir = out / f"rate{r}"
        stage = CompressorStage(cfg, base, cfg.lambdas[r], masks, ds, latents=latents, latent_cache=latent_cache)
        latents = stage.latents
        logs[f"rate{r}"] = train(stage, ds, cfg, rdir, progress=progress)
    assemble(out, base, cfg, name)
    return logs


def assemble(out: Path, base: str | Path, cfg: TrainConfig, name: str) -> Path:
    """Collect trained rate points into a SLIM model directory at `out` (base referenced by path)."""
    from safetensors.torch import load_file

    from slim_rt.models.slim import SlimModel, load_compressor
    comps, lambdas, scales = [], [], []
    for r in range(len(cfg.lambdas)):  # the rate points trained so far, lowest rate first
        f = out / f"rate{r}" / "compressor.safetensors"
        if f.is_file():
            comps.append(load_compressor(COMPRESSOR_PRESETS[cfg.compressor_preset], load_file(str(f))))
            lambdas.append(cfg.lambdas[r])
            scales.append(cfg.scales[r] if cfg.scales else 1.0)
    if not comps:
        raise ValueError(f"no trained rate points under {out}")
    base_p = Path(base).resolve()
    if cfg.enhance_preset not in ENHANCE_PRESETS:
        raise ValueError(f"unknown enhance_preset {cfg.enhance_preset!r} ({', '.join(ENHANCE_PRESETS)})")
    from slim_rt.models.base import autoencoder_kind
    scfg = SlimConfig(name=name, base=str(base_p), autoencoder=autoencoder_kind(base_p),
                      compressor=COMPRESSOR_PRESETS[cfg.compressor_preset],
                      lambdas=tuple(lambdas), enhance=ENHANCE_PRESETS[cfg.enhance_preset])
    scfg = dataclasses.replace(scfg, scales=tuple(scales) if any(v != 1.0 for v in scales) else ())
    SlimModel.save_compressors(out, scfg, comps)
    return out


__all__ = ["run", "assemble"]
