"""The PyTorch backend: eager (`backend="torch"`) or `torch.compile`d (`"torch.compile"`)."""
from __future__ import annotations

import torch

from slim_rt.backends import FnStage, Stage, stage_networks
from slim_rt.models.slim import SlimModel


def torch_stages(model: SlimModel, compile: bool = False) -> dict[str, Stage]:
    wrap = (lambda f: torch.compile(f, dynamic=True)) if compile else (lambda f: f)
    # the text encoder runs once per caption (cached by the pipeline): never compiled
    return {k: FnStage(k, fn if k == "text_encoder" else wrap(fn)) for k, fn in stage_networks(model).items()}
