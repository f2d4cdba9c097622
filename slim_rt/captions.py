"""Captions: the RoI-focused text that conditions enhancement and travels in the bitstream."""
from __future__ import annotations

from typing import Protocol

from torch import Tensor


class Captioner(Protocol):
    def __call__(self, images: Tensor) -> list[str]:
        """images [B, 3, H, W] in [0, 1] -> one caption per image."""


class FixedCaptioner:
    """The same caption for every image ("" for none)."""

    def __init__(self, caption: str = ""):
        self.caption = caption

    def __call__(self, images: Tensor) -> list[str]:
        return [self.caption] * images.shape[0]


class ClassifierCaptioner:
    """The offline default: the classifier's top-1 label -> "a photo of a {label}"."""

    def __init__(self, classifier=None, template: str = "a photo of a {}", device="cpu"):
        from slim_rt.classifier import Classifier, imagenet_classes
        self.classifier = classifier or Classifier(device=device)
        self.classes = imagenet_classes()
        self.template = template

    def __call__(self, images: Tensor) -> list[str]:
        top1 = self.classifier.logits(images).argmax(-1).tolist()
        return [self.template.format(self.classes[i]) for i in top1]
