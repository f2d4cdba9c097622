"""Stage specs: the single source of truth for the shapes of every exported stage.

One `StageSpec` per stage key ("vae_encoder", "latent_analysis/r0", ..., "unet", "vae_decoder"):
input/output names (exactly `slim_rt.backends.STAGES`), dtypes, symbolic dims, ONNX dynamic axes,
min/opt/max shape profiles (TensorRT optimization profiles) and a sample-input factory. ONNX export,
the TensorRT builder and the runtimes (ORT IO binding, TRT buffers) all read shapes from here.

Dims are written in three symbols of the *padded* pixel image: `batch`, `height`, `width`, each
with a divisor (`height/8` is the latent height). A concrete shape is `spec.shape(name, b, H, W)`.
This module imports only torch (no onnx): runtimes use it too.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from slim_rt.backends import PER_RATE, STAGES, stage_key
from slim_rt.models.base import MAX_TOKENS

SIZE_SYMS = ("batch", "height", "width")


@dataclass(frozen=True)
class Dim:
    """A symbolic dim: `sym // div` (sym in batch/height/width), or a fixed size when sym is None."""
    sym: str | None
    div: int = 1
    size: int = 0

    @property
    def name(self) -> str:  # the ONNX dim_param
        return self.sym if self.div == 1 else f"{self.sym}_div{self.div}"

    def resolve(self, b: int, h: int, w: int) -> int:
        if self.sym is None:
            return self.size
        return {"batch": b, "height": h, "width": w}[self.sym] // self.div


def fixed(n: int) -> Dim:
    return Dim(None, 1, n)


B = Dim("batch")


def hw(div: int) -> tuple[Dim, Dim]:
    return Dim("height", div), Dim("width", div)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str          # "float" (the export precision), "float32" (always fp32), "int64"
    dims: tuple[Dim, ...]

    def shape(self, b: int, h: int, w: int) -> tuple[int, ...]:
        return tuple(d.resolve(b, h, w) for d in self.dims)

    def torch_dtype(self, precision: str) -> torch.dtype:
        if self.dtype == "int64":
            return torch.int64
        if self.dtype == "float32":
            return torch.float32
        return PRECISIONS[precision]


PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Geometry:
    """What the specs need to know about a model (read from a loaded SlimModel or a manifest)."""
    pixel_multiple: int            # padded image sizes are multiples of this
    vae_factor: int                # pixels per latent pixel (8 for SD)
    latent_channels: int           # C
    N: int                         # z channels
    M: int                         # y channels
    rates: int
    text_len: int = 0              # tokens per caption (0: no text encoder / UNet)
    text_dim: int = 0              # UNet cross-attention width
    vocab_size: int = 0

    @classmethod
    def from_model(cls, model) -> "Geometry":
        base, cc = model.base, model.config.compressor
        vae_factor = base.vae_factor
        text_len = text_dim = vocab = 0
        if base.unet is not None and base.text_encoder is not None and base.tokenizer is not None:
            text_len = min(int(base.tokenizer.model_max_length), MAX_TOKENS)
            text_dim = int(base.text_encoder.config.hidden_size)
            vocab = int(base.text_encoder.config.vocab_size)
        return cls(model.pixel_multiple, vae_factor, base.latent_channels, cc.N, cc.M,
                   model.num_rates, text_len, text_dim, vocab)


@dataclass(frozen=True)
class Profile:
    """min/opt/max (batch, height, width) of the padded image; every stage's shapes derive from it."""
    min: tuple[int, int, int]
    opt: tuple[int, int, int]
    max: tuple[int, int, int]

    @classmethod
    def make(cls, geom: Geometry, size: tuple[int, int] = (256, 256), batch: int = 1,
             min_size: tuple[int, int] | None = None, max_size: tuple[int, int] | None = None) -> "Profile":
        m = geom.pixel_multiple
        up = lambda v: max(m, -(-int(v) // m) * m)  # noqa: E731
        opt = (up(size[0]), up(size[1]))
        lo = (up(min_size[0]), up(min_size[1])) if min_size else (m, m)
        hi = (up(max_size[0]), up(max_size[1])) if max_size else opt
        if not (lo[0] <= opt[0] <= hi[0] and lo[1] <= opt[1] <= hi[1]):
            raise ValueError(f"size range must satisfy min <= opt <= max, got {lo} {opt} {hi}")
        if batch < 1:
            raise ValueError("batch must be >= 1")
        return cls((1, *lo), (batch, *opt), (batch, *hi))

    def to_json(self) -> dict:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_json(cls, d: dict) -> "Profile":
        return cls(tuple(d["min"]), tuple(d["opt"]), tuple(d["max"]))

    def contains(self, b: int, h: int, w: int) -> bool:
        return all(lo <= v <= hi for lo, v, hi in zip(self.min, (b, h, w), self.max))


@dataclass(frozen=True)
class StageSpec:
    key: str                        # "unet", "latent_analysis/r0", ...
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    kind: str                       # "base" (runs at the export precision) or "compressor" (fp32)
    extra: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def name(self) -> str:
        return self.key.split("/")[0]

    @property
    def rate(self) -> int | None:
        return int(self.key.split("/r")[1]) if "/" in self.key else None

    @property
    def filename(self) -> str:
        return self.key.replace("/", "_") + ".onnx"

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {t.name: {i: d.name for i, d in enumerate(t.dims) if d.sym is not None}
                for t in (*self.inputs, *self.outputs)}

    def shapes(self, b: int, h: int, w: int) -> dict[str, tuple[int, ...]]:
        return {t.name: t.shape(b, h, w) for t in (*self.inputs, *self.outputs)}

    def profile_shapes(self, profile: Profile) -> dict[str, tuple[tuple[int, ...], ...]]:
        """input name -> (min, opt, max) shapes: a TensorRT optimization profile."""
        return {t.name: (t.shape(*profile.min), t.shape(*profile.opt), t.shape(*profile.max))
                for t in self.inputs}

    def resolve_syms(self, shapes: dict[str, tuple[int, ...]]) -> tuple[int, int, int]:
        """Concrete (batch, height, width) from input shapes (for output preallocation)."""
        vals: dict[str, int] = {}
        for t in self.inputs:
            for d, n in zip(t.dims, shapes[t.name]):
                if d.sym is not None and d.sym not in vals:
                    vals[d.sym] = n * d.div
        return vals.get("batch", 1), vals.get("height", 0), vals.get("width", 0)

    def output_shapes(self, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        b, h, w = self.resolve_syms(shapes)
        return {t.name: t.shape(b, h, w) for t in self.outputs}

    def sample_inputs(self, b: int, h: int, w: int, precision: str = "fp32", seed: int = 0,
                      device="cpu") -> dict[str, Tensor]:
        """Fresh random inputs of the right shapes, dtypes and value ranges."""
        g = torch.Generator().manual_seed(seed)
        out = {}
        for t in self.inputs:
            shape, dt = t.shape(b, h, w), t.torch_dtype(precision)
            if t.name == "input_ids":
                x = torch.randint(0, max(int(self.extra.get("vocab_size", 2)), 2), shape, generator=g)
            elif t.name == "attention_mask":
                x = torch.ones(shape, dtype=torch.int64)
                n = torch.randint(1, shape[1] + 1, (shape[0],), generator=g)
                for i, k in enumerate(n.tolist()):
                    x[i, k:] = 0
            elif t.name == "timestep":
                x = torch.randint(1, 1000, shape, generator=g)
            elif t.name == "image":
                x = torch.rand(shape, generator=g) * 2 - 1
            elif t.name == "z_hat":
                x = torch.round(torch.randn(shape, generator=g) * 3)
            elif t.name in ("y", "y_hat"):
                x = torch.randn(shape, generator=g) * 4
            else:
                x = torch.randn(shape, generator=g)
            out[t.name] = x.to(device=device, dtype=dt)
        return out

    def to_json(self) -> dict:
        return {"key": self.key, "kind": self.kind,
                "inputs": [{"name": t.name, "dtype": t.dtype, "dims": [asdict(d) for d in t.dims]}
                           for t in self.inputs],
                "outputs": [{"name": t.name, "dtype": t.dtype, "dims": [asdict(d) for d in t.dims]}
                            for t in self.outputs]}


def _t(name: str, dtype: str, *dims: Dim) -> TensorSpec:
    return TensorSpec(name, dtype, tuple(dims))


def stage_specs(geom: Geometry, include_unet: bool = True) -> dict[str, StageSpec]:
    """Every stage of a model, keyed as the backends key them."""
    f, C, M, N = geom.vae_factor, geom.latent_channels, geom.M, geom.N
    lat, y, z = hw(f), hw(2 * f), hw(8 * f)
    px = hw(1)
    specs = {
        "vae_encoder": StageSpec("vae_encoder", (_t("image", "float", B, fixed(3), *px),),
                                 (_t("latent", "float", B, fixed(C), *lat),), "base"),
        "vae_decoder": StageSpec("vae_decoder", (_t("latent", "float", B, fixed(C), *lat),),
                                 (_t("image", "float", B, fixed(3), *px),), "base"),
    }
    per_rate = {  # per-rate stage -> (channels, spatial) of its input and of its output (names: STAGES)
        "latent_analysis": ((C, lat), (M, y)),
        "hyper_analysis": ((M, y), (N, z)),
        "hyper_synthesis": ((N, z), (M, y)),
        "latent_synthesis": ((M, y), (C, lat)),
    }
    for r in range(geom.rates):
        for name in PER_RATE:
            ((ci, si), (co, so)), ((i,), (o,)) = per_rate[name], STAGES[name]
            key = stage_key(name, r)
            specs[key] = StageSpec(key, (_t(i, "float32", B, fixed(ci), *si),),
                                   (_t(o, "float32", B, fixed(co), *so),), "compressor")
    if include_unet and geom.text_len:
        T, D = fixed(geom.text_len), fixed(geom.text_dim)
        specs["text_encoder"] = StageSpec(
            "text_encoder", (_t("input_ids", "int64", B, T), _t("attention_mask", "int64", B, T)),
            (_t("context", "float", B, T, D),), "base", {"vocab_size": geom.vocab_size})
        specs["unet"] = StageSpec(
            "unet", (_t("sample", "float", B, fixed(C), *lat), _t("timestep", "int64", B),
                     _t("context", "float", B, T, D)),
            (_t("model_out", "float", B, fixed(C), *lat),), "base")
    for key, s in specs.items():  # the named-tensor interface is defined once, in STAGES
        assert (tuple(s.input_names), tuple(s.output_names)) == STAGES[s.name], key
        assert (s.name in PER_RATE) == (s.rate is not None), key
    return specs


def specs_json(specs: dict[str, StageSpec]) -> str:
    return json.dumps({k: s.to_json() for k, s in sorted(specs.items())}, sort_keys=True)


__all__ = ["Dim", "TensorSpec", "StageSpec", "Geometry", "Profile", "PRECISIONS", "stage_specs", "specs_json"]
