"""The PyTorch backend: eager (`backend="torch"`) or `torch.compile`d (`"torch.compile"`)."""
from __future__ import annotations

import torch

from slim_rt.backends import FnStage, Stage, own_code, stage_networks
from slim_rt.models.slim import SlimModel


def torch_stages(model: SlimModel, compile: bool = False) -> dict[str, Stage]:
    # each stage compiled behind its own code object (see own_code); the text encoder runs once per
    # caption (cached by the pipeline): never compiled
    wrap = (lambda k, f: torch.compile(own_code(f, k), dynamic=True)) if compile else (lambda k, f: f)
    return {k: FnStage(k, fn if k == "text_encoder" else wrap(k, fn)) for k, fn in stage_networks(model).items()}
