"""Image input normalisation: anything a user hands us -> float RGB [3, H, W] in [0, 1].

Accepts PIL images, HWC/HW uint8 (or uint16) arrays, CHW tensors (uint8 or float in [0, 1])
and file paths. Applies EXIF orientation, converts L/LA/P/RGBA/CMYK/16-bit to RGB
(transparent pixels composited on white), and rejects too-small or bomb-sized input.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from slim_rt.errors import first_line

MIN_SIDE = 64
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".avif"}  # lower case
IMAGE_EXTS_LOWER = IMAGE_EXTS  # the older name
from slim_rt.bitstream import MAX_PIXELS, MAX_SIDE  # noqa: E402  (one set of limits for both ends)


def _check_size(w: int, h: int) -> None:
    if w < MIN_SIDE or h < MIN_SIDE:
        raise ValueError(f"image is {w}x{h}; slim-rt needs at least {MIN_SIDE}x{MIN_SIDE} pixels")
    if w > MAX_SIDE or h > MAX_SIDE or w * h > MAX_PIXELS:
        raise ValueError(f"image is {w}x{h}; larger than the supported {MAX_SIDE} px per side / "
                         f"{MAX_PIXELS // 1_000_000} MP")


def open_image(path: str | Path, check_size: bool = True) -> Image.Image:
    """Open an image file with decompression-bomb protection; errors are one-line ValueErrors."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"no such image file: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(p)
            if check_size:
                _check_size(*img.size)
            elif img.width * img.height > MAX_PIXELS:
                raise ValueError(f"{path}: image too large")
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ValueError(f"{path}: image too large (decompression bomb protection)") from None
    except ValueError:
        raise
    except Exception as e:  # UnidentifiedImageError, truncated files, OSError
        raise ValueError(f"cannot read image {path}: {first_line(e)}") from None
    return img


def _pil_to_rgb(img: Image.Image) -> Image.Image:
    img = ImageOps.exif_transpose(img)
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I") and a.max(initial=0) > 255 else 255.0
        a = np.clip(a / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")  # L, P, CMYK, YCbCr, 1, ...


def to_tensor(image, check_size: bool = True) -> Tensor:
    """-> float32 [3, H, W] in [0, 1]. Raises ValueError for unsupported or badly sized input
    (`check_size=False` lifts the codec's minimum size, e.g. for training data)."""
    if isinstance(image, (str, Path)):
        image = open_image(image, check_size)
    if isinstance(image, Image.Image):
        if check_size:
            _check_size(*image.size)
        a = np.asarray(_pil_to_rgb(image), dtype=np.uint8)
        return torch.from_numpy(a.copy()).permute(2, 0, 1).float() / 255.0
    if isinstance(image, np.ndarray):
        a = image
        if a.ndim == 2:
            a = a[:, :, None]
        if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
            raise ValueError(f"array image must be HxW or HxWxC with C in (1, 3, 4), got shape {image.shape}")
        if a.dtype == np.uint16:
            a = (a.astype(np.float64) / 257.0 + 0.5).astype(np.uint8)
        elif a.dtype != np.uint8:
            raise ValueError(f"array image must be uint8 or uint16, got {a.dtype}")
        _check_size(a.shape[1], a.shape[0])
        t = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float() / 255.0
        return _channels_to_rgb(t)
    if isinstance(image, Tensor):
        t = image.detach().cpu()
        if t.ndim != 3 or t.shape[0] not in (1, 3, 4):
            raise ValueError(f"tensor image must be CxHxW with C in (1, 3, 4), got shape {tuple(t.shape)}")
        _check_size(t.shape[2], t.shape[1])
        if t.dtype == torch.uint8:
            t = t.float() / 255.0
        elif t.is_floating_point():
            if not torch.isfinite(t).all():
                raise ValueError("tensor image contains NaN or inf")
            t = t.float().clamp(0, 1)
        else:
            raise ValueError(f"tensor image must be uint8 or float in [0, 1], got {t.dtype}")
        return _channels_to_rgb(t)
    raise ValueError(f"unsupported image type {type(image).__name__} (PIL image, ndarray, tensor or path)")


def _channels_to_rgb(t: Tensor) -> Tensor:
    if t.shape[0] == 1:
        return t.expand(3, -1, -1).clone()
    if t.shape[0] == 4:  # composite on white
        rgb, a = t[:3], t[3:4]
        return rgb * a + (1 - a)
    return t


def to_coded(img01: Tensor, scale: float) -> Tensor:
    """[B,3,H,W] in [0,1] -> the image a rate point of `scale` codes (bicubic, antialiased, float32)."""
    from torch.nn import functional as F

    from slim_rt.config import coded_size
    if scale == 1.0:
        return img01
    size = coded_size(img01.shape[-2], img01.shape[-1], scale)
    return F.interpolate(img01.float(), size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)


def from_coded(img01: Tensor, size: tuple[int, int]) -> Tensor:
    """A decoded image at its coded size -> the declared size (bicubic, as the decoder does)."""
    from torch.nn import functional as F
    if tuple(img01.shape[-2:]) == tuple(size):
        return img01
    return F.interpolate(img01, size=tuple(size), mode="bicubic", align_corners=False).clamp(0, 1)


def cover_crop(img: Image.Image, height: int, width: int) -> Image.Image:
    """Resize (bicubic, antialiased) to cover height x width, keeping the aspect ratio; center crop."""
    w, h = img.size
    s = max(height / h, width / w)
    nw, nh = max(width, round(w * s)), max(height, round(h * s))
    img = img.resize((nw, nh), Image.BICUBIC, reducing_gap=None)
    left, top = (nw - width) // 2, (nh - height) // 2
    return img.crop((left, top, left + width, top + height))


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """[B,3,H,W] -> replicate-padded to multiples of `multiple` (bottom/right)."""
    H, W = x.shape[-2:]
    ph, pw = (-H) % multiple, (-W) % multiple
    if ph == 0 and pw == 0:
        return x
    return torch.nn.functional.pad(x, (0, pw, 0, ph), mode="replicate")


def to_pil(x: Tensor) -> Image.Image:
    """[3,H,W] float in [0,1] -> PIL RGB."""
    a = (x.detach().float().clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(a, "RGB")


def open_image_bytes(data: bytes):
    """Image file bytes -> PIL image, with the same size checks and bomb protection as files."""
    from PIL import UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            _check_size(*img.size)
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ValueError("image too large (decompression bomb protection)") from None
    except ValueError:
        raise
    except UnidentifiedImageError:
        raise ValueError("cannot read the image file: not a known image format") from None
    except Exception as e:  # truncated files
        raise ValueError(f"cannot read the image file: {first_line(e)}") \
            from None
    return img
