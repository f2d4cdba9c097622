"""The evaluation protocol (docs/eval.md): each image -> resize short side to 256 (bicubic,
antialiased) -> center crop 256x256 -> 8-bit RGB: that crop is what every codec compresses."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from PIL import Image, ImageOps

from slim_rt.images import cover_crop

SIZE = 256
CAPTION_MODES = ("auto", "none", "label", "wrong")


@dataclasses.dataclass
class EvalImage:
    file: str
    label: int
    class_name: str
    image: Image.Image  # the 256x256 8-bit RGB crop every codec compresses (no metadata attached)


def center_crop_square(img: Image.Image, size: int = SIZE) -> Image.Image:
    """Resize the short side to `size` (bicubic, antialiased), center crop size x size; returns a
    clean RGB image (no ICC/EXIF carried over, so no codec pays for metadata)."""
    img = cover_crop(ImageOps.exif_transpose(img).convert("RGB"), size, size)
    return Image.fromarray(np.asarray(img).copy(), "RGB")


def load_images(folder, limit: int | None = None, size: int = SIZE, log=None) -> list[EvalImage]:
    from slim_rt.images import open_image
    from slim_rt.training.data import list_images, read_labels
    labels = read_labels(folder)
    if not labels:
        raise ValueError(f"{folder}: no labels.csv (file, class_index, ..., class_name) to score against")
    files = [f for f in list_images(folder) if f.name in labels]
    missing = len(list_images(folder)) - len(files)
    if missing and log:
        log(f"note: {missing} images without a labels.csv row skipped")
    if limit is not None:
        files = files[:limit]
    if not files:
        raise ValueError(f"{folder}: no labelled images")
    return [EvalImage(f.name, int(labels[f.name]["class_index"]), labels[f.name].get("class_name", ""),
                      center_crop_square(open_image(f, check_size=False), size)) for f in files]


def to_float(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Float [0,1] -> the 8-bit image a deployed decoder would hand over (as float)."""
    return (x.clamp(0, 1) * 255).round() / 255


def labelled_files(data) -> list[str]:
    """Names of the images in `data` that have a labels.csv row."""
    from slim_rt.training.data import list_images, read_labels
    labels = read_labels(data)
    return [f.name for f in list_images(data) if f.name in labels]


def captions(mode: str, images: list[EvalImage], template: str, ref_preds: list[int] | None, captioner,
              refs: list[torch.Tensor]) -> list[str]:
    """One caption per image for a caption mode (CAPTION_MODES) through the model's template; auto uses
    `captioner` on the crops, or without one the default classifier's top-1 on them (`ref_preds`)."""
    from slim_rt.classifier import imagenet_classes
    classes = imagenet_classes()
    if mode == "none":
        return [""] * len(images)
    if mode == "label":
        return [template.format(im.class_name or classes[im.label]) for im in images]
    if mode == "wrong":  # a fixed, unrelated class: the true one shifted by half the label space
        return [template.format(classes[(im.label + len(classes) // 2) % len(classes)]) for im in images]
    if captioner is None:  # auto with the default classifier: its top-1 on the crop is the caption
        return [template.format(classes[p]) for p in ref_preds]
    return [c for r in refs for c in captioner(r[None])]

