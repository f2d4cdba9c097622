"""Image folder datasets (+ optional labels.csv for captions and evaluation)."""
from __future__ import annotations

import csv
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision.transforms import functional as TF

from slim_rt.images import IMAGE_EXTS, open_image, to_tensor


def read_labels(folder: str | Path) -> dict[str, dict]:
    """labels.csv (file, class_index, wnid, class_name, ...) -> {file: row}; {} if absent."""
    p = Path(folder) / "labels.csv"
    if not p.is_file():
        return {}
    with p.open(newline="") as f:
        return {row["file"]: row for row in csv.DictReader(f)}


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"no such data folder: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise ValueError(f"no images in {folder}")
    return files


def folders(data: str | Path | list) -> list[Path]:
    """One folder, a list of folders, or several joined with os.pathsep ("a:b")."""
    import os
    items = data if isinstance(data, (list, tuple)) else str(data).split(os.pathsep)
    return [Path(d) for d in items if str(d)]


class ImageFolder(Dataset):
    """Images resized (short side) once and kept in memory; random crop + flip per sample.
    `folder` may be several folders (see `folders`); file names must not repeat across them.

    Returns dict(image [3,c,c] in [0,1], caption str, label int (-1 if unknown), index int).
    """

    def __init__(self, folder: str | Path | list, crop: int, resize: int, template: str = "a photo of a {}",
                 train: bool = True, align: int = 1):
        dirs = folders(folder)
        self.files = [f for d in dirs for f in list_images(d)]
        labels = {k: v for d in dirs for k, v in read_labels(d).items()}
        if len({f.name for f in self.files}) != len(self.files):
            raise ValueError(f"image file names repeat across {', '.join(map(str, dirs))}")
        self.crop, self.train, self.align = crop, train, align
        self.images = [TF.resize(to_tensor(open_image(f, check_size=False), check_size=False), resize, antialias=True) for f in self.files]
        self.labels = [int(labels[f.name]["class_index"]) if f.name in labels else -1 for f in self.files]
        self.captions = [template.format(labels[f.name]["class_name"]) if f.name in labels else ""
                         for f in self.files]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        img = self.images[i]
        _, H, W = img.shape
        c = self.crop
        a = self.align  # crop offsets on a grid of `align` px (8: crops match latent pixels)
        if self.train:
            top = int(torch.randint(0, (H - c) // a + 1, ())) * a
            left = int(torch.randint(0, (W - c) // a + 1, ())) * a
        else:
            top, left = (H - c) // 2 // a * a, (W - c) // 2 // a * a
        x = img[:, top:top + c, left:left + c]
        flip = self.train and bool(torch.rand(()) < 0.5)
        if flip:
            x = x.flip(-1)
        return {"image": x, "caption": self.captions[i], "label": self.labels[i], "index": i,
                "crop": torch.tensor([top, left, int(flip)])}
