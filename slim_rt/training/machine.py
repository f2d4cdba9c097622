"""The `machine` stage of `slim-rt train`: fine-tune trained compressors for the machine.

Starts from a SLIM model directory (the `compressor` stage's output) and trains each rate point's
compressor end to end through the *frozen* VAE decoder and the *frozen* classifier:

    L = bpp + lambda * [ mean(M (x - x_hat)^2) + eps * mean((1 - M)(x - x_hat)^2)
                         + task_weight * KL(clf(original crop) || clf(D(x_hat))) ]

The SLIM loss is kept as the floor (same lambda as the rate point was trained with, so the rate
stays where it was); the machine term is a distortion measured where the machine looks: the
classifier's output distribution on the decoded pixels against its output on the original (no
labels needed, so unlabelled photos train it too). The classifier sees each crop at its own size.
Writes OUT as a SLIM model directory (the input model's base, the fine-tuned compressors).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from slim_rt.training.config import TrainConfig
from slim_rt.training.enhance import machine_kl
from slim_rt.training.stages import CompressorTraining, encode_dataset
from slim_rt.training.trainer import train


class MachineStage(CompressorTraining):
    name = "machine"

    def __init__(self, cfg: TrainConfig, model, rate: int, masks, latents: list[torch.Tensor]):
        from slim_rt.classifier import load_efficientnet_lite0
        self.cfg, self.masks, self.latents = cfg, masks, latents
        self.base = model.base
        lambdas = model.config.lambdas or cfg.lambdas  # the rate point's training lambda, else the preset's
        if rate >= len(lambdas):
            raise ValueError(f"no lambda for rate {rate}: the model records none, pass --set lambdas=...")
        self.lmbda = float(lambdas[rate])
        self.comp = model.compressors[rate].train().requires_grad_(True)
        self.clf = load_efficientnet_lite0()

    def loss(self, batch, step):
        out, bpp, d_roi, d_bg = self.rd_terms(batch)
        rec = ((self.base.decode_latent(out["x_hat"]) + 1) / 2).clamp(0, 1)
        kl = machine_kl(self.clf, rec, batch["image"])
        rd = bpp + self.lmbda * (d_roi + self.cfg.background_weight * d_bg + self.cfg.task_weight * kl)
        aux = getattr(self.comp, "module", self.comp).aux_loss()
        logs = {"loss": rd.item(), "bpp": bpp.item(), "mse_roi": d_roi.item(), "kl": kl.item(), "aux": aux.item()}
        return rd + aux, logs


def run_machine(cfg: TrainConfig, ds, model_dir: str | Path, out: Path, masks, progress: bool = True) -> dict:
    """Fine-tune every rate point (or cfg.rate) of the model at `model_dir`; OUT becomes a SLIM model
    directory with the same base (referenced by absolute path) and the fine-tuned compressors."""
    from safetensors.torch import load_file

    from slim_rt.models.slim import SlimModel, load_compressor
    if cfg.task_weight <= 0:
        raise ValueError("the machine stage needs task_weight > 0 (the weight of the classifier term)")
    model = SlimModel.from_pretrained(model_dir, need_unet=False)
    latents = encode_dataset(model.base, ds, out / "latents.pt")
    rates = range(model.num_rates) if cfg.rate < 0 else [cfg.rate]
    logs = {}
    for r in rates:
        logs[f"rate{r}"] = train(MachineStage(cfg, model, r, masks, latents), ds, cfg, out / f"rate{r}",
                                 progress=progress)
    comps = []
    for r in range(model.num_rates):  # rate points not fine-tuned (yet) keep their weights
        f = out / f"rate{r}" / "compressor.safetensors"
        comps.append(load_compressor(model.config.compressor, load_file(str(f))) if f.is_file()
                     else model.compressors[r].eval().requires_grad_(False))
    base = Path(model.base.source).resolve()
    scfg = dataclasses.replace(model.config, base=str(base), rates=())
    SlimModel.save_compressors(out, scfg, comps)
    return logs


__all__ = ["MachineStage", "run_machine"]
