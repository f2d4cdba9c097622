"""Frozen configs with named presets (gpt-fast style).

`CompressorConfig` shapes the learned latent compressor; `EnhanceConfig` the few-step
enhancement; `SlimConfig` is what `slim_config.json` in a model directory holds.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

FORMAT = "slim-rt/1"
CONFIG_NAME = "slim_config.json"


@dataclass(frozen=True)
class CompressorConfig:
    latent_channels: int = 4   # C of the VAE latent (4 for Stable Diffusion)
    N: int = 64                # hidden channels of g_a/g_s and of the hyperprior (z channels)
    M: int = 32                # channels of y
    scale_hidden: int = 32     # channels of the integer scale network
    scale_min: float = 0.11    # scale table: `scale_levels` log-spaced values in [scale_min, scale_max]
    scale_max: float = 64.0
    scale_levels: int = 64

    # spatial strides: x (latent) -> y is /2, y -> z is /4. A latent must be a multiple of 8.
    @property
    def latent_multiple(self) -> int:
        return 8


COMPRESSOR_PRESETS: dict[str, CompressorConfig] = {
    "test": CompressorConfig(N=16, M=8, scale_hidden=8),
    "tiny": CompressorConfig(N=64, M=32, scale_hidden=32),
    # TAEF2's 32-channel latent: y (at /2) needs M >= 4 * 32 channels, or g_a is a dimensionality bottleneck
    # (M=48 capped the latent MSE near 0.16 whatever the rate: top-1 ~24% at 0.12 and at 0.55 bpp)
    "tae": CompressorConfig(latent_channels=32, N=64, M=128, scale_hidden=32),
    "sd": CompressorConfig(N=128, M=64, scale_hidden=64),
}

# The autoencoder kinds a SLIM base may have (the frozen VAE of stage 1 and 4):
#   kl    diffusers AutoencoderKL (Stable Diffusion 1.x/2.x, SD-Turbo, slim-tiny v1)
#   tiny  diffusers AutoencoderTiny (TAESD / TAESDXL, for SD users who want a fast decoder)
#   tae   slim_rt.models.tae.TAE (TAEF2: AutoencoderTiny plus the pooled branch diffusers lacks)
AUTOENCODERS = ("kl", "tiny", "tae")


@dataclass(frozen=True)
class EnhanceConfig:
    """The enhancement schedule saved with a model. With the base's scheduler config (alphas_cumprod,
    prediction type) it fixes every coefficient; `timesteps` pins explicit per-K timesteps
    ({"2": [200, 100]}), otherwise K steps are spaced uniformly from t0."""
    steps: int = 1          # default K written into bitstreams (0 = no enhancement)
    t0: int = 200           # timestep the decompressed latent is treated as
    max_steps: int = 8
    timesteps: dict = field(default_factory=dict)   # {"K": [t_1 > ... > t_K]}, optional
    distilled: tuple[int, ...] = ()                 # the K the UNet was distilled for (documentation)

    def __post_init__(self):
        if not 0 <= self.steps <= self.max_steps:
            raise ValueError(f"enhance steps must be in [0, {self.max_steps}], got {self.steps}")
        for k, ts in self.timesteps.items():
            if not (str(k).isdigit() and len(ts) == int(k)):
                raise ValueError(f"enhance timesteps for K={k} must list K values, got {ts}")
        object.__setattr__(self, "timesteps", {str(k): [int(t) for t in v] for k, v in self.timesteps.items()})
        object.__setattr__(self, "distilled", tuple(int(k) for k in self.distilled))


# Named enhancement schedules. SD-Turbo (adversarial diffusion distillation) is already a few-step
# model: one step from t0 = 499 (diffusers' img2img recipe for it: strength 0.5, 2 steps -> 1 step at
# t=499), no distillation and no guidance.
ENHANCE_PRESETS: dict[str, EnhanceConfig] = {
    "none": EnhanceConfig(steps=0),
    "tiny": EnhanceConfig(steps=1, t0=200),
    "sd-turbo": EnhanceConfig(steps=1, t0=499, timesteps={"1": [499]}, distilled=(1,)),
}


def coded_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """The size an image of height x width is coded at for a rate point of `scale`."""
    return (height, width) if scale == 1.0 else (max(1, round(height * scale)), max(1, round(width * scale)))


@dataclass(frozen=True)
class SlimConfig:
    name: str
    base: str = "."                     # diffusers base: "." (inside the model dir), a path or a hub id
    autoencoder: str = "kl"             # the base's vae/ kind: one of AUTOENCODERS
    compressor: CompressorConfig = field(default_factory=CompressorConfig)
    rates: tuple[str, ...] = ()         # compressor weight files, lowest bitrate first
    lambdas: tuple[float, ...] = ()     # the training lambda of each rate point (documentation)
    scales: tuple[float, ...] = ()      # per rate point: the image is coded resized by this factor and
                                        # resized back after decoding (() = all 1; see coded_size)
    enhance: EnhanceConfig = field(default_factory=EnhanceConfig)
    caption_template: str = "a photo of a {}"
    max_caption_bytes: int = 255
    format: str = FORMAT

    def __post_init__(self):
        if self.autoencoder not in AUTOENCODERS:
            raise ValueError(f"unknown autoencoder kind {self.autoencoder!r} (one of {', '.join(AUTOENCODERS)})")
        if self.scales and ((self.rates and len(self.scales) != len(self.rates))
                            or not all(0 < s <= 1 for s in self.scales)):
            raise ValueError(f"scales must give one factor in (0, 1] per rate point, got {self.scales}")

    def rate_scale(self, rate: int) -> float:
        """The factor images of rate point `rate` are coded at (1.0 = full resolution)."""
        return float(self.scales[rate]) if self.scales else 1.0

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        for k, default in (("autoencoder", "kl"), ("scales", ())):  # defaults are left out: models written
            if d[k] == default:                                      # before these fields keep their JSON,
                del d[k]                                             # fingerprint and bitstreams
        return json.dumps(d, indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "SlimConfig":
        d = dict(d)
        if d.get("format") != FORMAT:
            raise ValueError(f"unsupported model format {d.get('format')!r} (expected {FORMAT!r})")
        d["compressor"] = CompressorConfig(**d.get("compressor", {}))
        d["enhance"] = EnhanceConfig(**d.get("enhance", {}))
        d["rates"] = tuple(d.get("rates", ()))
        d["lambdas"] = tuple(d.get("lambdas", ()))
        d["scales"] = tuple(float(v) for v in d.get("scales", ()))
        return cls(**d)

    @classmethod
    def load(cls, model_dir: str | Path) -> "SlimConfig":
        path = Path(model_dir) / CONFIG_NAME
        return cls.from_dict(json.loads(path.read_text()))

    def save(self, model_dir: str | Path) -> None:
        Path(model_dir).mkdir(parents=True, exist_ok=True)
        (Path(model_dir) / CONFIG_NAME).write_text(self.to_json() + "\n")
