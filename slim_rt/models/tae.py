"""TAE: a tiny convolutional autoencoder of the TAESD family, with the pooled-MLP branch of TAEF2.

TAEF2 (madebyollin/taesd, MIT, Copyright (c) 2023 Ollin Boer Bohan) approximates the FLUX.2 VAE:
RGB -> 32 x H/8 x W/8 latent and back. diffusers' AutoencoderTiny has no place for the pool branch
of its deep blocks, so this is our own module; it follows AutoencoderTiny's interface (images in
[-1, 1], `encode(x).latents`, `decode(z).sample`) and is a diffusers ModelMixin, so `vae/` folders
save and load with `save_pretrained` / `from_pretrained`.

    x [B,3,H,W] in [-1,1] -> encoder -> z [B,32,H/8,W/8] -> decoder (tanh(z/3)*3 first) -> [B,3,H,W]

`python -m slim_rt.models.tae SRC_DIR DEST` converts the upstream state dicts
(taef2_encoder.pth, taef2_decoder.pth) into a diffusers-style `vae/` folder (safetensors + LICENSE).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn


def conv(n_in: int, n_out: int, **kw) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kw)


class Block(nn.Module):
    """ReLU(conv3(x) + x); with `pool`, x first gets a pooled-MLP residual (1x1 -> GN -> ReLU -> 1x1)."""

    def __init__(self, c: int, pool: bool = False, groups: int = 4, expand: int = 4):
        super().__init__()
        self.conv = nn.Sequential(conv(c, c), nn.ReLU(), conv(c, c), nn.ReLU(), conv(c, c))
        self.pool = nn.Sequential(nn.Conv2d(c, c * expand, 1, bias=False), nn.GroupNorm(groups, c * expand),
                                  nn.ReLU(), nn.Conv2d(c * expand, c, 1, bias=False)) if pool else None
        self.fuse = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + x)


class Clamp(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x / 3) * 3


def encoder(c: int, latent: int, pool_deep: bool) -> nn.Sequential:
    return nn.Sequential(
        conv(3, c), Block(c),
        conv(c, c, stride=2, bias=False), Block(c), Block(c), Block(c),
        conv(c, c, stride=2, bias=False), Block(c), Block(c), Block(c),
        conv(c, c, stride=2, bias=False), *[Block(c, pool_deep) for _ in range(3)],
        conv(c, latent))


def decoder(c: int, latent: int, pool_deep: bool) -> nn.Sequential:
    up = lambda: nn.Upsample(scale_factor=2)  # noqa: E731  (nearest)
    return nn.Sequential(
        Clamp(), conv(latent, c), nn.ReLU(), *[Block(c, pool_deep) for _ in range(3)],
        up(), conv(c, c, bias=False), Block(c), Block(c), Block(c),
        up(), conv(c, c, bias=False), Block(c), Block(c), Block(c),
        up(), conv(c, c, bias=False), Block(c),
        conv(c, 3))


@dataclass
class TAEEncoderOutput:
    latents: Tensor


@dataclass
class TAEDecoderOutput:
    sample: Tensor


class TAE(ModelMixin, ConfigMixin):
    """The autoencoder ("tae" kind of a SLIM base). Frozen in SLIM; latents are used unscaled
    unless `scaling_factor`/`shift_factor` say otherwise (BaseModel applies them)."""

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(self, latent_channels: int = 32, channels: int = 64, pool_deep: bool = True,
                 downscale_factor: int = 8, scaling_factor: float = 1.0, shift_factor: float = 0.0):
        super().__init__()
        self.encoder = encoder(channels, latent_channels, pool_deep)
        self.decoder = decoder(channels, latent_channels, pool_deep)

    def encode(self, x: Tensor) -> TAEEncoderOutput:
        """x [B,3,H,W] in [-1,1] -> latents [B,C,H/8,W/8]."""
        return TAEEncoderOutput(self.encoder((x + 1) / 2))

    def decode(self, z: Tensor) -> TAEDecoderOutput:
        """latents -> image [B,3,H,W] in [-1,1] (not clamped)."""
        return TAEDecoderOutput(self.decoder(z) * 2 - 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x).latents).sample


def from_upstream(encoder_sd: dict, decoder_sd: dict) -> TAE:
    """A TAE from the upstream TAEF2 state dicts (keys are the nn.Sequential indexes)."""
    tae = TAE()
    tae.encoder.load_state_dict(encoder_sd)
    tae.decoder.load_state_dict(decoder_sd)
    return tae.eval().requires_grad_(False)


def convert(src_dir: str, dest: str) -> None:
    """taef2_{encoder,decoder}.pth (+ LICENSE) -> a diffusers-style vae/ folder with the MIT notice."""
    import shutil
    from pathlib import Path
    src = Path(src_dir)
    load = lambda name: torch.load(src / name, map_location="cpu", weights_only=True)  # noqa: E731
    tae = from_upstream(load("taef2_encoder.pth"), load("taef2_decoder.pth"))
    for p in tae.parameters():  # upstream weights are fp16: storing them so is lossless, half the size
        p.data = p.data.half()
    tae.save_pretrained(dest)
    if (src / "LICENSE").is_file():
        shutil.copy(src / "LICENSE", Path(dest) / "LICENSE")


if __name__ == "__main__":
    import sys
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m slim_rt.models.tae SRC_DIR DEST_VAE_DIR")
    convert(sys.argv[1], sys.argv[2])
