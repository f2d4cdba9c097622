"""Classical baselines through Pillow: JPEG, WebP, AVIF (and their pooled envelope)."""
from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image

ENVELOPE = "classical-envelope"  # pseudo-curve: every classical setting (all codecs, all scales)
# Quality grids, lowest quality each encoder supports first. AVIF q 0..2 give identical files with
# Pillow's libavif mapping, so the grid steps on from 0 to 5.
QUALITIES = {
    "jpeg": [1, 3, 5, 8, 12, 20, 30, 50],  # q2 ~ q1: both clip the quant tables at 255
    "webp": [0, 1, 2, 5, 10, 20, 40, 70],
    "avif": [0, 5, 10, 15, 20, 30, 40, 70],
}
PIL_FORMATS = {"jpeg": ("JPEG", {"optimize": True}), "webp": ("WEBP", {"method": 6}), "avif": ("AVIF", {})}


def avif_status() -> tuple[bool, str]:
    from PIL import features
    if features.check("avif"):
        return True, ""
    try:
        import pillow_avif  # noqa: F401  (pillow-avif-plugin registers the format on import)
        return True, ""
    except ImportError:
        return False, "Pillow has no AVIF support here (features.check('avif') is False and " \
                      "pillow-avif-plugin is not installed: pip install pillow-avif-plugin)"


def pil_encode(img: Image.Image, codec: str, quality: int) -> bytes:
    fmt, kw = PIL_FORMATS[codec]
    buf = io.BytesIO()
    img.save(buf, format=fmt, quality=quality, **kw)
    return buf.getvalue()


def pil_decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def classical_settings(curves: dict[str, list[dict]]) -> list[dict]:
    """Every classical setting pooled (the envelope's points); [] unless there are two curves or more."""
    pts = [a for c, v in curves.items() if not c.startswith("slim") and c != ENVELOPE for a in v]
    return pts if len({a["curve"] for a in pts}) > 1 else []


def reuse_baselines(path, images: list, data, classifier: str | None = None) -> list[dict]:
    """The classical codecs' aggregated settings of an earlier eval JSON on the same images (so a
    SLIM model can be re-evaluated without re-running 70+ baseline settings), scored by the same
    classifier (`classifier`: its name, as the JSON records it; None: not checked)."""
    res = json.loads(Path(path).read_text())
    if res.get("n_images") != len(images) or res.get("split") != Path(data).resolve().name:
        raise ValueError(f"{path} was run on {res.get('n_images')} images of {res.get('split')!r}, "
                         f"not on these {len(images)} of {Path(data).resolve().name!r}")
    if classifier is not None and str(res.get("classifier", "")).lower() != classifier.lower():
        raise ValueError(f"{path} was scored by {res.get('classifier')}, not by {classifier}")
    return [a for a in res["settings"] if a["codec"] != "slim"]

