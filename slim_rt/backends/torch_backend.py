"""The PyTorch backend: eager (`backend="torch"`) or `torch.compile`d (`"torch.compile"`)."""
from __future__ import annotations

import torch

from slim_rt.backends import FnStage, Stage
from slim_rt.models.slim import SlimModel


def unet_call(unet):
    """The UNet as the "unet" stage computes it: (sample, timestep, context) -> model output."""
    return lambda s, t, c: unet(s, t, encoder_hidden_states=c).sample


def torch_stages(model: SlimModel, compile: bool = False) -> dict[str, Stage]:
    base = model.base
    wrap = (lambda f: torch.compile(f, dynamic=True)) if compile else (lambda f: f)
    stages: dict[str, Stage] = {
        "vae_encoder": FnStage("vae_encoder", wrap(base.encode_latent)),
        "vae_decoder": FnStage("vae_decoder", wrap(base.decode_latent)),
    }
    for i, comp in enumerate(model.compressors):
        stages[f"latent_analysis/r{i}"] = FnStage(f"latent_analysis/r{i}", wrap(comp.g_a))
        stages[f"hyper_analysis/r{i}"] = FnStage(f"hyper_analysis/r{i}", wrap(comp.h_a))
        stages[f"hyper_synthesis/r{i}"] = FnStage(f"hyper_synthesis/r{i}", wrap(comp.h_s_mean))
        stages[f"latent_synthesis/r{i}"] = FnStage(f"latent_synthesis/r{i}", wrap(comp.g_s))
    if base.unet is not None and base.text_encoder is not None:
        stages["text_encoder"] = FnStage("text_encoder", base.text_states)
        stages["unet"] = FnStage("unet", wrap(unet_call(base.unet)))
    return stages
