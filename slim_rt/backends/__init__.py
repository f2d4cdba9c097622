"""Backends: each turns a SlimModel into named stages with one calling convention.

A stage is a callable `stage(**inputs) -> dict[str, Tensor]` (named tensors in and out);
`STAGES` lists every stage's input and output names. The pipeline calls stages only through
this interface, so it has no per-backend branches, and stages of different backends can be
mixed (e.g. `{**torch_stages(m), "unet": trt_stage}`).
"""
from __future__ import annotations

from typing import Callable, Protocol

from torch import Tensor

# name -> (input names, output names). Compressor stages exist once per rate point, as "name/r{i}".
STAGES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "vae_encoder": (("image",), ("latent",)),
    "latent_analysis": (("latent",), ("y",)),
    "hyper_analysis": (("y",), ("z",)),
    "hyper_synthesis": (("z_hat",), ("means",)),
    "latent_synthesis": (("y_hat",), ("latent_hat",)),
    "text_encoder": (("input_ids", "attention_mask"), ("context",)),
    "unet": (("sample", "timestep", "context"), ("model_out",)),
    "vae_decoder": (("latent",), ("image",)),
}
PER_RATE = ("latent_analysis", "hyper_analysis", "hyper_synthesis", "latent_synthesis")


class Stage(Protocol):
    def __call__(self, **inputs: Tensor) -> dict[str, Tensor]: ...


def stage_key(name: str, rate: int | None = None) -> str:
    return f"{name}/r{rate}" if name in PER_RATE else name


class FnStage:
    """Wraps a positional tensor function as a named-tensor stage."""

    def __init__(self, name: str, fn: Callable[..., Tensor]):
        self.name = name
        self.fn = fn
        self.inputs, self.outputs = STAGES[name.split("/")[0]]

    def __call__(self, **inputs: Tensor) -> dict[str, Tensor]:
        return {self.outputs[0]: self.fn(*(inputs[n] for n in self.inputs))}

    def __repr__(self) -> str:
        return f"FnStage({self.name})"
