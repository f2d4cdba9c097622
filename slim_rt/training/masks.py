"""RoI masks for training only (inference never sees a mask).

Either read from a folder (one PNG per image, same stem; white = RoI), as a user with COCO or
ImageNet-S masks would have, or computed once with Grad-CAM of the frozen classifier for the
image's label (top-1 when unlabeled), thresholded and dilated, and cached on disk as PNG.
Masks are full-image (after the dataset's resize) so random crops can cut them like images.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.nn import functional as F

from slim_rt.classifier import MEAN, STD


def gradcam(model, x: Tensor, target: int) -> Tensor:
    """EfficientNet-Lite Grad-CAM of class `target` for a normalised image [1,3,h,w] -> [h',w'] in [0,1]."""
    with torch.enable_grad():
        x = x.detach().clone().requires_grad_(True)  # the classifier itself is frozen
        a = model.extract_features(x)  # [1, C, h', w']
        a.retain_grad()
        pooled = model._avg_pooling(a).flatten(1)
        logits = model._fc(model._dropout(pooled))
        logits[0, target].backward()
    w = a.grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((w * a).sum(1))[0].detach()
    return cam / cam.max().clamp_min(1e-8)


def roi_mask(cam: Tensor, size: tuple[int, int], threshold: float = 0.3, dilate: int = 9) -> Tensor:
    """Grad-CAM map -> binary mask [H, W] (upsampled, thresholded, dilated)."""
    m = F.interpolate(cam[None, None], size=size, mode="bilinear", align_corners=False)
    m = (m >= threshold).float()
    m = F.max_pool2d(m, dilate, stride=1, padding=dilate // 2)
    return m[0, 0]


class MaskProvider:
    """Masks for a dataset's images, aligned with `ImageFolder.images` (same resized size)."""

    def __init__(self, source: str, dataset, cache_dir: str | Path | None = None, classifier=None):
        self.source = source
        self.masks: list[Tensor] = []
        if source == "none":
            self.masks = [torch.ones(im.shape[1:]) for im in dataset.images]
            return
        if source != "gradcam":
            folder = Path(source)
            if not folder.is_dir():
                raise ValueError(f"roi must be 'gradcam', 'none' or a mask folder; {source} is none of these")
            for f, im in zip(dataset.files, dataset.images):
                p = folder / (f.stem + ".png")
                if not p.is_file():
                    raise ValueError(f"missing RoI mask {p}")
                m = torch.from_numpy(np.asarray(Image.open(p).convert("L"), dtype=np.float32) / 255.0)
                self.masks.append((F.interpolate(m[None, None], size=im.shape[1:], mode="bilinear")[0, 0] > 0.5).float())
            return
        from slim_rt.classifier import load_efficientnet_lite0
        cache = Path(cache_dir) if cache_dir else None
        model = None
        for f, im, label in zip(dataset.files, dataset.images, dataset.labels):
            cp = cache / f"{f.stem}.png" if cache else None
            if cp is not None and cp.is_file():
                m = torch.from_numpy(np.asarray(Image.open(cp), dtype=np.float32) / 255.0)
                if m.shape != tuple(im.shape[1:]):  # Grad-CAM runs at 224 whatever the resize: rescale the mask
                    m = (F.interpolate(m[None, None], size=tuple(im.shape[1:]), mode="bilinear")[0, 0] > 0.5).float()
                self.masks.append(m)
                continue
            model = model or classifier or load_efficientnet_lite0()
            x = F.interpolate((im[None] - MEAN) / STD, size=(224, 224), mode="bilinear", antialias=True)
            target = label if label >= 0 else int(model(x).argmax())
            m = roi_mask(gradcam(model, x, target), tuple(im.shape[1:]))
            if cp is not None:
                cp.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray((m.numpy() * 255).astype(np.uint8)).save(cp)
            self.masks.append(m)

    def crop(self, index: Tensor, crop: Tensor, size: int) -> Tensor:
        """Masks for a batch, cut like the images: -> [B, 1, size, size]."""
        out = []
        for i, (top, left, flip) in zip(index.tolist(), crop.tolist()):
            m = self.masks[i][top:top + size, left:left + size]
            out.append(m.flip(-1) if flip else m)
        return torch.stack(out)[:, None]
