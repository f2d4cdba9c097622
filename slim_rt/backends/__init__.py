"""Backends: each turns a SlimModel into named stages with one calling convention.

A stage is a callable `stage(**inputs) -> dict[str, Tensor]` (named tensors in and out);
`STAGES` lists every stage's input and output names. The pipeline calls stages only through
this interface, so it has no per-backend branches, and stages of different backends can be
mixed (e.g. `{**torch_stages(m), "unet": trt_stage}`).
"""
from __future__ import annotations

import types
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
# The per-rate stages and the network of a SlimCompressor each one runs: one table for every backend,
# the exporter and the engines' torch fallback.
COMPRESSOR_NETS = {"latent_analysis": "g_a", "hyper_analysis": "h_a", "hyper_synthesis": "h_s_mean",
                   "latent_synthesis": "g_s"}
PER_RATE = tuple(COMPRESSOR_NETS)


class Stage(Protocol):
    def __call__(self, **inputs: Tensor) -> dict[str, Tensor]: ...


def stage_key(name: str, rate: int | None = None) -> str:
    return f"{name}/r{rate}" if name in PER_RATE else name


def unet_call(unet) -> Callable[..., Tensor]:
    """The UNet as the "unet" stage computes it: (sample, timestep, context) -> model output. The
    torch backends run it and the ONNX export traces it, so the two agree by construction."""
    def call(sample: Tensor, timestep: Tensor, context: Tensor) -> Tensor:
        return unet(sample, timestep, encoder_hidden_states=context, return_dict=False)[0]
    return call


def stage_networks(model) -> dict[str, Callable[..., Tensor]]:
    """Stage key -> the tensor function of a SlimModel's stage (positional inputs in `STAGES` order,
    one tensor out): the base's VAE encoder/decoder, every rate's compressor networks
    (COMPRESSOR_NETS; nn.Modules), and the text encoder and UNet when the base has them."""
    base = model.base
    nets: dict[str, Callable[..., Tensor]] = {"vae_encoder": base.encode_latent, "vae_decoder": base.decode_latent}
    for i, comp in enumerate(model.compressors):
        for name, attr in COMPRESSOR_NETS.items():
            nets[stage_key(name, i)] = getattr(comp, attr)
    if base.unet is not None and base.text_encoder is not None:
        nets["text_encoder"] = base.text_states
        nets["unet"] = unet_call(base.unet)
    return nets


def own_code(fn: Callable[..., Tensor], name: str) -> Callable[..., Tensor]:
    """`fn` behind a code object of its own. Dynamo caches compiled code per code object, and every
    nn.Sequential (or bound method wrapper) shares one, so without this all compressor stages would
    share one cache and exhaust its recompile limit (8)."""
    def call(*args):
        return fn(*args)
    code = call.__code__.replace(co_name=f"stage_{name.replace('/', '_')}")
    return types.FunctionType(code, call.__globals__, code.co_name, None, call.__closure__)


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
