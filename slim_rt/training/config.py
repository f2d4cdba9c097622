"""Training configs: frozen dataclasses, named presets, `key=value` overrides."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class TrainConfig:
    stage: str                          # "base-vae" | "base-unet" | "compressor" | "machine" | "enhancer" | "distill"
    steps: int = 1000
    batch_size: int = 8
    crop: int = 128                     # random crop size (pixels)
    resize: int = 144                   # short side is resized to this before cropping
    lr: float = 1e-3
    seed: int = 0
    ckpt_every: int = 100
    log_every: int = 10
    mixed_precision: str = "no"         # "no" | "fp16" | "bf16" (Accelerate)
    # base-vae
    vae_channels: tuple[int, ...] = (32, 64, 128, 128)
    kl_weight: float = 1e-6
    perceptual_weight: float = 0.1
    # base-unet
    unet_channels: tuple[int, ...] = (64, 128, 128)
    # compressor
    compressor_preset: str = "tiny"
    lambdas: tuple[float, ...] = (0.25, 1.0, 4.0)   # one compressor per lambda, lowest rate first
    rate: int = -1                      # train only this rate index (-1: all, one after another)
    background_weight: float = 0.1      # epsilon: weight of the non-RoI distortion
    roi: str = "gradcam"                # "gradcam" | "none" | a folder of PNG masks
    task_weight: float = 0.0            # optional classifier term on decoded pixels
    aux_lr: float = 1e-3
    scales: tuple[float, ...] = ()      # compressor: per rate point, the image scale it codes at (() = all 1);
                                        # a scaled rate point trains on images resized to resize * scale
    init: str = ""                      # compressor: start from these weights (a neighbouring rate point's
                                        # compressor.safetensors: warm starts converge several times faster)
    enhance_preset: str = "tiny"        # compressor: the enhancement schedule the assembled model gets
    # enhancer (teacher fine-tune) and distill (K-step student)
    zero_init: bool = True              # enhancer: zero the UNet's output conv (start at the identity)
    teacher_steps: int = 20             # distill: DDIM steps of the teacher from t0
    guidance: float = 1.5               # distill: classifier-free guidance of the teacher
    student_steps: tuple[int, ...] = (1, 2)  # distill: the K the student is trained for
    latent_weight: float = 1.0          # enhancer, distill: weight of the RoI latent MSE (0: machine term only)
    student_init: str = "teacher"       # distill: "teacher" (its weights) | "identity" (output conv zeroed)
    rates: tuple[int, ...] = ()         # distill: the rate points trained on (() = all)
    caption_drop: float = 0.0           # distill: share of empty captions (1: an unconditional student)


PRESETS: dict[str, TrainConfig] = {
    "smoke-vae": TrainConfig("base-vae", steps=3, batch_size=2, crop=64, resize=72, vae_channels=(8, 16, 16, 16),
                             ckpt_every=2, log_every=1),
    "smoke-unet": TrainConfig("base-unet", steps=3, batch_size=2, crop=64, resize=72, unet_channels=(16, 32),
                              ckpt_every=2, log_every=1),
    "smoke-compressor": TrainConfig("compressor", steps=3, batch_size=2, crop=64, resize=72,
                                    compressor_preset="test", lambdas=(0.5, 2.0), ckpt_every=2, log_every=1,
                                    roi="gradcam"),
    "smoke-machine": TrainConfig("machine", steps=3, batch_size=2, crop=64, resize=72, ckpt_every=2, log_every=1,
                                 task_weight=0.5, lr=1e-4),
    "smoke-enhancer": TrainConfig("enhancer", steps=3, batch_size=2, crop=64, resize=72, ckpt_every=2, log_every=1,
                                  task_weight=0.05),
    "smoke-distill": TrainConfig("distill", steps=3, batch_size=2, crop=64, resize=72, ckpt_every=2, log_every=1,
                                 task_weight=0.05, teacher_steps=3, guidance=2.0),
    # 128 crops of images resized to 256: objects at the scale the classifier sees at evaluation
    "tiny-enhancer": TrainConfig("enhancer", steps=1500, batch_size=8, crop=128, resize=256, lr=2e-4),
    "tiny-distill": TrainConfig("distill", steps=1500, batch_size=8, crop=128, resize=256, lr=1e-4,
                                task_weight=0.05, teacher_steps=20, guidance=1.5, student_steps=(1, 2)),
    "tiny-vae": TrainConfig("base-vae", steps=2500, batch_size=8, crop=128, resize=144, lr=1e-3,
                            vae_channels=(16, 32, 64, 64)),
    "tiny-unet": TrainConfig("base-unet", steps=2000, batch_size=16, crop=128, resize=144, lr=5e-4,
                             unet_channels=(48, 96, 96)),
    "tiny-compressor": TrainConfig("compressor", steps=3000, batch_size=8, crop=256, resize=288, lr=1e-3,
                                   compressor_preset="tiny", lambdas=(0.1, 0.4, 1.6, 6.4)),
    # slim-tiny v2: compressors on TAEF2's 32-channel latents, ImageNet train + imagen photos (resized
    # to the evaluation's 256 short side), rate points warm-started from their neighbour (docs/training.md)
    "tae-compressor": TrainConfig("compressor", steps=3000, batch_size=8, crop=128, resize=256, lr=1e-3,
                                  compressor_preset="tae", lambdas=(0.12, 0.5, 2.0, 8.0, 32.0)),
    "tae-enhancer": TrainConfig("enhancer", steps=1200, batch_size=8, crop=128, resize=256, lr=5e-4),
    "tae-machine": TrainConfig("machine", steps=150, batch_size=4, crop=128, resize=256, lr=2e-4,
                               task_weight=0.5, ckpt_every=50),
    "sd-compressor": TrainConfig("compressor", steps=100_000, batch_size=16, crop=512, resize=512, lr=1e-4,
                                 compressor_preset="sd", lambdas=(0.5, 2.0, 8.0, 32.0),
                                 mixed_precision="bf16"),
    # SD-Turbo is a one-step model already: its compressors need no enhancer/distill stage
    "sd-turbo-compressor": TrainConfig("compressor", steps=100_000, batch_size=16, crop=512, resize=512, lr=1e-4,
                                       compressor_preset="sd", lambdas=(0.5, 2.0, 8.0, 32.0),
                                       mixed_precision="bf16", enhance_preset="sd-turbo"),
}


def _parse(value: str, like, kind: str = ""):
    """value as the type of `like` (an empty tuple default: its field's annotation `kind` says int or float)."""
    if isinstance(like, bool):
        return value.lower() in ("1", "true", "yes", "on")
    if isinstance(like, int):
        return int(value)
    if isinstance(like, float):
        return float(value)
    if isinstance(like, tuple):
        items = [v for v in value.split(",") if v]
        item = like[0] if like else 0 if kind == "tuple[int, ...]" else 0.0
        return tuple(_parse(v, item) for v in items)
    return value


def with_overrides(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Apply ["key=value", ...]; unknown keys and bad values are clear ValueErrors."""
    fields = {f.name: f.type for f in dataclasses.fields(cfg)}
    changes = {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        k, v = item.split("=", 1)
        if k not in fields:
            raise ValueError(f"unknown training option {k!r} (options: {', '.join(sorted(fields))})")
        try:
            changes[k] = _parse(v, getattr(cfg, k), str(fields[k]))
        except ValueError:
            raise ValueError(f"bad value {v!r} for {k}") from None
    return dataclasses.replace(cfg, **changes)
