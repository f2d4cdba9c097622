"""Side-by-side pictures: original | SLIM | WebP | AVIF at (at most) the same bits per pixel.

    python benchmarks/side_by_side.py IMAGE [IMAGE ...] --out benchmarks/results/side-by-side.png
        [--model slim-tiny] [--rate R] [--steps K] [--crop 256] [--refine N]

--refine N adds a panel after SLIM's: the same rate point encoded with `slim_rt.refine` (N steps for
EfficientNet-Lite0); WebP and AVIF then get the budget of the larger of the two SLIM files.
Each row is one image (eval protocol: short side resized to --crop, center crop; --crop 0 keeps the
image as it is, e.g. Kodak's 768x512). WebP and AVIF get, among every quality of the eval grid and
the scales 1, 1/2, 1/4 (coded small, upscaled back with bicubic), the best setting whose file is no
larger than the SLIM file (the smallest one when none is), so the comparison never favours SLIM by
giving the others fewer bits. Labels give each panel's bpp and the classifier's top-1 class.
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from slim_rt.evaluation.baselines import QUALITIES, pil_decode, pil_encode
from slim_rt.evaluation.protocol import center_crop_square
from slim_rt.models.registry import DEFAULT_MODEL

SCALES = (1.0, 0.5, 0.25)


def classical_at(img: Image.Image, codec: str, budget: int) -> tuple[Image.Image, int, str]:
    """The largest file of `codec` (quality x scale grid) not above `budget` bytes, decoded to full size."""
    best, smallest = None, None
    for s in SCALES:
        w, h = max(16, round(img.width * s)), max(16, round(img.height * s))
        src = img if s == 1.0 else img.resize((w, h), Image.BICUBIC, reducing_gap=None)
        for q in QUALITIES[codec]:
            d = pil_encode(src, codec, q)
            cand = (len(d), d, f"{codec} q{q}" + ("" if s == 1.0 else f" @{s:g}x"))
            if smallest is None or cand[0] < smallest[0]:
                smallest = cand
            if cand[0] <= budget and (best is None or cand[0] > best[0]):
                best = cand
    n, d, name = best or smallest
    rec = pil_decode(d)
    return (rec if rec.size == img.size else rec.resize(img.size, Image.BICUBIC)), n, name


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("images", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--rate", type=int, default=None, help="SLIM rate point (default: the model's middle one)")
    ap.add_argument("--steps", type=int, default=None, help="enhancement steps K (default: the bitstream's)")
    ap.add_argument("--crop", type=int, default=256, help="eval-protocol crop size; 0 = the whole image")
    ap.add_argument("--refine", type=int, default=0, help="also a SLIM panel refined in N steps (slim_rt.refine)")
    a = ap.parse_args(argv)

    import slim_rt
    from slim_rt.classifier import Classifier, imagenet_classes
    from slim_rt.images import open_image
    clf, classes = Classifier(), imagenet_classes()
    enc = slim_rt.Encoder.from_pretrained(a.model)
    dec = slim_rt.Decoder(enc.pipeline)
    rate = enc.model.num_rates // 2 if a.rate is None else a.rate
    refined = slim_rt.Encoder(enc.pipeline, captioner=enc.captioner, refine=a.refine) if a.refine else None

    def label(im: Image.Image) -> str:
        x = torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)[None].float() / 255
        with torch.inference_mode():
            return classes[int(clf.logits(x).argmax())].split(",")[0]

    rows = []
    for path in a.images:
        img = open_image(path, check_size=False).convert("RGB")
        img = center_crop_square(img, a.crop) if a.crop else img
        px = img.width * img.height
        data = enc.encode(img, rate=rate)
        slim = dec.decode(data, steps=a.steps)
        panels = [(img, "original"), (slim, f"SLIM r{rate} {8 * len(data) / px:.3f} bpp")]
        budget = len(data)
        if refined is not None:
            rdata = refined.encode(img, rate=rate)
            panels.append((dec.decode(rdata, steps=a.steps), f"refine{a.refine} {8 * len(rdata) / px:.3f} bpp"))
            budget = max(budget, len(rdata))
        for codec in ("webp", "avif"):
            rec, n, name = classical_at(img, codec, budget)
            panels.append((rec, f"{name} {8 * n / px:.3f} bpp"))
        rows.append([(im, f"{txt}: {label(im)}") for im, txt in panels])

    W = max(sum(im.width for im, _ in r) for r in rows)
    H = sum(max(im.height for im, _ in r) + 18 for r in rows)
    sheet = Image.new("RGB", (W, H), "white")
    draw, y = ImageDraw.Draw(sheet), 0
    for r in rows:
        x = 0
        for im, txt in r:
            sheet.paste(im, (x, y + 18))
            draw.text((x + 3, y + 3), txt, fill="black")
            x += im.width
        y += max(im.height for im, _ in r) + 18
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", optimize=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_bytes(buf.getvalue())
    print(f"wrote {a.out} ({len(rows)} images)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
