"""Training framework: `slim-rt train STAGE` (base-vae, base-unet, compressor).

Single process on CPU here; on GPUs launch the same command under `accelerate launch` or
`torchrun` (DDP and mixed precision come from HF Accelerate, not from home-made code).
"""
from .config import PRESETS, TrainConfig, with_overrides

__all__ = ["PRESETS", "TrainConfig", "with_overrides"]
