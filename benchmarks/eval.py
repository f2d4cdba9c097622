"""Rate vs machine accuracy: SLIM against JPEG / WebP / AVIF on a labelled image folder.

    slim-rt eval --data DIR [--model M] [--steps 0 1] [--codecs slim,jpeg,webp,avif] [--limit N]
    python benchmarks/eval.py [same options]
    from benchmarks.eval import run_eval; run_eval("data/dev", model=..., classifier=Classifier(...))

Protocol (docs/eval.md): each image -> resize short side to 256 (bicubic, antialiased) -> center crop
256x256 -> 8-bit RGB: that crop is what every codec compresses. The classifier sees the decoded
image through its own preprocessing (default EfficientNet-Lite0: resize 256 = no-op, center crop 224,
(x - 0.498) / 0.502). bpp = 8 * file bytes / (256 * 256), the whole file (SLIM: header + caption).

Writes OUT_DIR/eval-<model>-<split>[-<tag>].csv (per image), .json (per setting + BD-rates), .md
(table) and .png (top-1 vs bpp).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

RESULTS = Path(__file__).resolve().parent / "results"
SIZE = 256
CODECS = ("slim", "jpeg", "webp", "avif")
ENVELOPE = "classical-envelope"  # pseudo-curve: every classical setting (all codecs, all scales)
CAPTION_MODES = ("auto", "none", "label", "wrong")
# Quality grids, lowest quality each encoder supports first. AVIF q 0..2 give identical files with
# Pillow's libavif mapping, so the grid steps on from 0 to 5.
QUALITIES = {
    "jpeg": [1, 3, 5, 8, 12, 20, 30, 50],  # q2 ~ q1: both clip the quant tables at 255
    "webp": [0, 1, 2, 5, 10, 20, 40, 70],
    "avif": [0, 5, 10, 15, 20, 30, 40, 70],
}
PIL_FORMATS = {"jpeg": ("JPEG", {"optimize": True}), "webp": ("WEBP", {"method": 6}), "avif": ("AVIF", {})}
CSV_FIELDS = ["file", "label", "codec", "curve", "setting", "quality", "scale", "rate", "steps", "caption",
              "bytes", "bpp", "pred", "top1", "top5", "psnr", "msssim", "enc_ms", "dec_ms", "unet_ms"]


# -- data ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class EvalImage:
    file: str
    label: int
    class_name: str
    image: Image.Image  # the 256x256 8-bit RGB crop every codec compresses (no metadata attached)


def center_crop_square(img: Image.Image, size: int = SIZE) -> Image.Image:
    """Resize the short side to `size` (bicubic, antialiased), center crop size x size; returns a
    clean RGB image (no ICC/EXIF carried over, so no codec pays for metadata)."""
    img = ImageOps.exif_transpose(img).convert("RGB")
    w, h = img.size
    s = size / min(w, h)
    nw, nh = max(size, round(w * s)), max(size, round(h * s))
    img = img.resize((nw, nh), Image.BICUBIC, reducing_gap=None)
    left, top = (nw - size) // 2, (nh - size) // 2
    return Image.fromarray(np.asarray(img.crop((left, top, left + size, top + size))).copy(), "RGB")


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


# -- baselines -------------------------------------------------------------------------------------
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


# -- metrics ---------------------------------------------------------------------------------------
def psnr(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    mse = ((x - ref) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(1 / mse.clamp_min(1e-12))


def msssim(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    from pytorch_msssim import ms_ssim
    return ms_ssim(x, ref, data_range=1.0, size_average=False)


def freeze_classifier(classifier, size: int = 224):
    """Trace + freeze the default classifier's network (BN folded into the convs): same top-k,
    ~1.5x faster on CPU. Falls back to the eager network if tracing fails."""
    import warnings
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")
            probe = torch.rand(2, 3, size, size, device=classifier.device)
            frozen = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(classifier.model, probe)))
            if not torch.allclose(frozen(probe), classifier.model(probe), atol=1e-3, rtol=1e-3):
                return classifier
        classifier.model = frozen
    except Exception:  # noqa: BLE001 - an optimisation only
        pass
    return classifier


@torch.inference_mode()
def score(classifier, recs: list[torch.Tensor], refs: list[torch.Tensor], labels: list[int],
          batch: int = 8) -> list[dict]:
    """Per image: pred, top1, top5, psnr, msssim (classifier batched; MS-SSIM per image, which is
    several times faster on CPU than batched: the filtered maps stay in cache)."""
    out = []
    for i in range(0, len(recs), batch):
        x = torch.stack(recs[i:i + batch])
        r = torch.stack(refs[i:i + batch])
        y = torch.tensor(labels[i:i + batch])
        top5 = classifier.logits(x).float().cpu().topk(5, dim=-1).indices
        p = psnr(x, r)
        m = torch.cat([msssim(x[j:j + 1], r[j:j + 1]) for j in range(len(x))])
        for j in range(len(x)):
            out.append({"pred": int(top5[j, 0]), "top1": int(top5[j, 0] == y[j]),
                        "top5": int((top5[j] == y[j]).any()), "psnr": float(p[j]), "msssim": float(m[j])})
    return out


# -- Bjontegaard delta rate at equal accuracy ------------------------------------------------------
def _frontier(bpp, acc) -> tuple[np.ndarray, np.ndarray]:
    """Upper accuracy envelope in bpp order: points whose accuracy beats every cheaper point, so
    accuracy is strictly increasing and log(bpp) is a function of it."""
    pts = sorted(zip(map(float, bpp), map(float, acc)))
    xs, ys, best = [], [], -math.inf
    for b, a in pts:
        if a > best:
            xs.append(a)
            ys.append(math.log(b))
            best = a
    return np.array(xs), np.array(ys)


def _integral(acc: np.ndarray, logr: np.ndarray, lo: float, hi: float, method: str) -> float:
    if method == "pchip":
        from scipy.interpolate import PchipInterpolator
        return float(PchipInterpolator(acc, logr).integrate(lo, hi))
    if method == "cubic":
        poly = np.polyint(np.polyfit(acc, logr, min(3, len(acc) - 1)))
        return float(np.polyval(poly, hi) - np.polyval(poly, lo))
    raise ValueError(f"method must be 'pchip' or 'cubic', got {method!r}")


def bd_rate(anchor_bpp, anchor_acc, test_bpp, test_acc, method: str = "pchip") -> float | None:
    """Average bitrate difference (%) of `test` vs `anchor` at equal accuracy (negative = test needs
    fewer bits). log(bpp) is fitted as a function of accuracy (PCHIP, or the classic cubic
    polynomial) on each curve's upper envelope, integrated over the accuracy interval both curves
    cover. None when the intervals don't overlap (or a curve has < 2 distinct accuracy levels)."""
    a_acc, a_r = _frontier(anchor_bpp, anchor_acc)
    t_acc, t_r = _frontier(test_bpp, test_acc)
    if len(a_acc) < 2 or len(t_acc) < 2:
        return None
    lo, hi = max(a_acc[0], t_acc[0]), min(a_acc[-1], t_acc[-1])
    if not hi > lo:
        return None
    avg = (_integral(t_acc, t_r, lo, hi, method) - _integral(a_acc, a_r, lo, hi, method)) / (hi - lo)
    return (math.exp(avg) - 1) * 100


# -- the evaluation --------------------------------------------------------------------------------
def default_model(log=None) -> str:
    from slim_rt.models.slim import bundled_dir
    if bundled_dir("slim-tiny") is not None:
        return "slim-tiny"
    from slim_rt.testing import tiny_random_cache_dir
    if log:
        log("note: slim-tiny is not bundled in this build; evaluating the untrained tiny random model")
    return str(tiny_random_cache_dir())


def _log(msg: str) -> None:
    print(f"[eval] {msg}", file=sys.stderr, flush=True)


def _captions(mode: str, images: list[EvalImage], template: str, ref_preds: list[int] | None, captioner,
              refs: list[torch.Tensor]) -> list[str]:
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


def _agg(rows: list[dict]) -> dict:
    n = len(rows)
    mean = lambda k: sum(r[k] for r in rows) / n  # noqa: E731
    first = rows[0]
    return {"codec": first["codec"], "curve": first["curve"], "setting": first["setting"],
            "quality": first["quality"], "scale": first["scale"], "rate": first["rate"], "steps": first["steps"],
            "n": n, "bytes": mean("bytes"), "bpp": mean("bpp"), "top1": mean("top1"), "top5": mean("top5"),
            "psnr": mean("psnr"), "msssim": mean("msssim"), "enc_ms": mean("enc_ms"), "dec_ms": mean("dec_ms"),
            "unet_ms": mean("unet_ms")}


def run_eval(data, model: str | None = None, out_dir=RESULTS, limit: int | None = None,
             steps: list[int] | None = None, device="cpu", codecs=CODECS, caption_mode: str = "auto",
             classifier=None, captioner=None, qualities: dict | None = None, baseline_scales=(1.0,),
             batch: int = 16, tag: str | None = None, bd_method: str = "pchip", write: bool = True,
             threads: int | None = None, guidance: float = 1.0, baselines_from=None, log=_log) -> dict:
    """Evaluate; returns the aggregated results dict (also written as JSON when write=True).

    classifier: a `slim_rt.classifier.Classifier` (logits of [B,3,H,W] in [0,1], own preprocessing);
    default EfficientNet-Lite0. captioner: the SLIM encoder's automatic captioner (caption_mode auto);
    default: the default classifier's top-1 label through the model's caption template.
    baseline_scales: also run each baseline on the crop downscaled by s (bicubic) and upscaled back,
    e.g. (1.0, 0.5) -> curves jpeg and jpeg@0.5x; bpp stays per 256x256 pixel.
    threads: torch CPU threads (None: leave as is; 1 is much faster on a busy shared CPU).
    steps: the K to decode every bitstream with (a decoder override: up to MAX_DECODE_STEPS, e.g. a
    many-step teacher); guidance: classifier-free guidance of the decoder (1 = none).
    baselines_from: an earlier eval JSON on the same images whose classical settings are reused.
    BD-rates are also reported against the classical envelope (every classical point pooled)."""
    prev_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run_eval(data, model, out_dir, limit, steps, device, codecs, caption_mode, classifier, captioner,
                         qualities, baseline_scales, batch, tag, bd_method, write, guidance, baselines_from, log)
    finally:
        torch.set_num_threads(prev_threads)


def _run_eval(data, model, out_dir, limit, steps, device, codecs, caption_mode, classifier, captioner,
              qualities, baseline_scales, batch, tag, bd_method, write, guidance, baselines_from, log) -> dict:
    t_start = time.perf_counter()
    codecs = [c.strip().lower() for c in (codecs.split(",") if isinstance(codecs, str) else codecs) if c.strip()]
    bad = [c for c in codecs if c not in CODECS]
    if bad:
        raise ValueError(f"unknown codec(s) {bad}: choose from {', '.join(CODECS)}")
    if caption_mode not in CAPTION_MODES:
        raise ValueError(f"caption mode must be one of {CAPTION_MODES}, got {caption_mode!r}")
    qualities = {**QUALITIES, **(qualities or {})}
    skipped: dict[str, str] = {}
    if "avif" in codecs:
        ok, why = avif_status()
        if not ok:
            codecs.remove("avif")
            skipped["avif"] = why
            log(f"skipping avif: {why}")

    images = load_images(data, limit, SIZE, log)
    refs = [to_float(im.image) for im in images]
    labels = [im.label for im in images]
    N = len(images)
    log(f"{N} images from {data}")

    from slim_rt.classifier import Classifier
    own_classifier = classifier is None
    if own_classifier:
        classifier = freeze_classifier(Classifier(device=device))
    rows: list[dict] = []

    def add(codec, curve, setting, datas, recs, enc_ms, dec_ms, quality=None, scale=1.0, rate=None, k=None,
            caps=None, unet_ms=None):
        t = time.perf_counter()
        scores = score(classifier, recs, refs, labels)
        new = []
        for i, (im, d, s) in enumerate(zip(images, datas, scores)):
            new.append({"file": im.file, "label": im.label, "codec": codec, "curve": curve, "setting": setting,
                        "quality": quality, "scale": scale, "rate": rate, "steps": k,
                        "caption": caps[i] if caps else None, "bytes": len(d), "bpp": 8 * len(d) / (SIZE * SIZE),
                        **s, "enc_ms": enc_ms[i], "dec_ms": dec_ms[i],
                        "unet_ms": unet_ms[i] if unet_ms else 0.0})
        rows.extend(new)
        a = _agg(new)
        log(f"{curve:>10} {setting:<8} bpp {a['bpp']:.4f}  top-1 {a['top1']:.3f}  top-5 {a['top5']:.3f}  "
            f"PSNR {a['psnr']:.2f}  MS-SSIM {a['msssim']:.3f}  (scored in {time.perf_counter() - t:.1f} s)")

    # reference: the uncompressed crops (the sanity check)
    ref_scores = score(classifier, refs, refs, labels)
    ref_preds = [s["pred"] for s in ref_scores]
    reference = {"n": N, "top1": sum(s["top1"] for s in ref_scores) / N,
                 "top5": sum(s["top5"] for s in ref_scores) / N, "bpp": 24.0}
    log(f"uncompressed 256-crops: top-1 {reference['top1']:.4f}  top-5 {reference['top5']:.4f}")

    # SLIM: one encode per rate; the K variants differ only in the header's steps field
    model_name = None
    if "slim" in codecs:
        import slim_rt
        from slim_rt.captions import FixedCaptioner
        from slim_rt.pipeline import MAX_DECODE_STEPS
        model = model or default_model(log)
        t = time.perf_counter()
        enc = slim_rt.Encoder.from_pretrained(model, rate=0, device=device, captioner=FixedCaptioner(""), steps=0)
        dec = slim_rt.Decoder(enc.pipeline)
        model_name = enc.model.config.name
        ks = [enc.model.config.enhance.steps] if not steps else list(dict.fromkeys(int(k) for k in steps))
        for k in ks:
            enc.pipeline._check_steps(k, MAX_DECODE_STEPS)
        g = float(guidance)
        log(f"SLIM model {model_name} ({model}): {enc.model.num_rates} rates, steps {ks}, guidance {g:g}, "
            f"loaded in {time.perf_counter() - t:.1f} s")
        if caption_mode == "auto" and captioner is None and not own_classifier:
            from slim_rt.captions import ClassifierCaptioner
            captioner = ClassifierCaptioner(template=enc.model.config.caption_template, device=device)
        caps = _captions(caption_mode, images, enc.model.config.caption_template, ref_preds, captioner, refs)
        dec.warmup((SIZE, SIZE), steps=0)
        for r in range(enc.model.num_rates):
            datas, enc_ms = [], []
            for i in range(0, N, batch):
                t = time.perf_counter()
                datas += enc.encode_batch([im.image for im in images[i:i + batch]], caps[i:i + batch], rate=r)
                n = len(images[i:i + batch])
                enc_ms += [(time.perf_counter() - t) * 1e3 / n] * n
            for k in ks:  # the same bitstreams, decoded with K steps (a decoder override)
                recs, dec_ms, unet_ms = [], [], []
                gk = g if k else 1.0
                for i in range(0, N, batch):
                    t = time.perf_counter()
                    out = dec.decode_batch(datas[i:i + batch], steps=k, guidance=gk, output="tensor")
                    dec_ms += [(time.perf_counter() - t) * 1e3 / len(out)] * len(out)
                    unet_ms += [dec.timings.get("unet", 0.0) / len(out)] * len(out)
                    recs += [quantize(x) for x in out]
                curve = f"slim-k{k}" + (f"-g{gk:g}" if gk != 1.0 else "")
                add("slim", curve, f"r{r}-k{k}", datas, recs, enc_ms, dec_ms, rate=r, k=k, caps=caps,
                    unet_ms=unet_ms)
        del enc, dec

    # baselines through Pillow (or their settings reused from an earlier run on the same images)
    reused: list[dict] = []
    if baselines_from:
        reused = reuse_baselines(baselines_from, images, data)
        log(f"reusing {len(reused)} baseline settings from {baselines_from}")
    for codec in (c for c in codecs if c != "slim" and not baselines_from):
        for s in baseline_scales:
            s = float(s)
            small = int(round(SIZE * s))
            curve = codec if s == 1.0 else f"{codec}@{s:g}x"
            for q in qualities[codec]:
                datas, recs, enc_ms, dec_ms = [], [], [], []
                for im in images:
                    t = time.perf_counter()
                    src = im.image if s == 1.0 else im.image.resize((small, small), Image.BICUBIC, reducing_gap=None)
                    d = pil_encode(src, codec, q)
                    t1 = time.perf_counter()
                    rec = pil_decode(d)
                    if rec.size != (SIZE, SIZE):
                        rec = rec.resize((SIZE, SIZE), Image.BICUBIC)
                    t2 = time.perf_counter()
                    datas.append(d)
                    recs.append(to_float(rec))
                    enc_ms.append((t1 - t) * 1e3)
                    dec_ms.append((t2 - t1) * 1e3)
                add(codec, curve, f"q{q}", datas, recs, enc_ms, dec_ms, quality=q, scale=s)

    # aggregate
    settings, seen = [], {}
    for r in rows:
        seen.setdefault((r["curve"], r["setting"]), []).append(r)
    settings = [_agg(v) for v in seen.values()] + reused
    curves: dict[str, list[dict]] = {}
    for a in settings:
        curves.setdefault(a["curve"], []).append(a)
    classical = classical_settings(curves)
    if classical:  # the best of every classical codec and scale
        curves[ENVELOPE] = classical
    bd: dict = {}
    for sc in (c for c in curves if c.startswith("slim")):
        for base in (c for c in curves if not c.startswith("slim")):
            entry = {}
            for metric in ("top1", "top5"):
                v = bd_rate([a["bpp"] for a in curves[base]], [a[metric] for a in curves[base]],
                            [a["bpp"] for a in curves[sc]], [a[metric] for a in curves[sc]], bd_method)
                entry[metric] = "no overlap" if v is None else round(v, 2)
            bd.setdefault(sc, {})[base] = entry
    split = Path(data).resolve().name
    name = f"eval-{model_name or 'baselines'}-{split}"
    if limit is not None and limit < len(read_labels_count(data)):
        name += f"-first{limit}"
    tag = tag if tag is not None else (None if caption_mode == "auto" else f"cap-{caption_mode}")
    if tag:
        name += f"-{tag}"
    result = {
        "name": name, "data": str(data), "split": split, "n_images": N, "limit": limit,
        "model": model_name, "model_path": str(model) if model_name else None, "caption_mode": caption_mode,
        "steps": ks if "slim" in codecs else None, "guidance": guidance, "device": str(device), "size": SIZE,
        "classifier": "EfficientNet-Lite0" if own_classifier else type(classifier).__name__,
        "protocol": "resize short side 256 (bicubic, antialiased), center crop 256x256, 8-bit RGB -> codec; "
                    "classifier: its own preprocessing on the decoded 256x256 image",
        "reference": reference, "settings": settings, "bd_rate_method": bd_method,
        "bd_rate_pct": bd, "skipped": skipped, "qualities": {c: qualities[c] for c in codecs if c != "slim"},
        "baseline_scales": [float(s) for s in baseline_scales], "wall_s": round(time.perf_counter() - t_start, 1),
        "baselines_from": str(baselines_from) if baselines_from else None,
    }
    if write:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = {ext: out_dir / f"{name}.{ext}" for ext in ("csv", "json", "md", "png")}
        with paths["csv"].open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            w.writeheader()
            for r in ref_scores_rows(images, ref_scores):
                w.writerow(r)
            for r in rows:
                w.writerow({k: _fmt(r[k]) for k in CSV_FIELDS})
        paths["json"].write_text(json.dumps(_json_safe(result), indent=2) + "\n")
        paths["md"].write_text(markdown(result))
        plot(result, paths["png"])
        result["files"] = {k: str(v) for k, v in paths.items()}
        log("wrote " + ", ".join(str(p) for p in paths.values()))
    log(f"done in {time.perf_counter() - t_start:.1f} s")
    return result


def classical_settings(curves: dict[str, list[dict]]) -> list[dict]:
    """Every classical setting pooled (the envelope's points); [] unless there are two curves or more."""
    pts = [a for c, v in curves.items() if not c.startswith("slim") and c != ENVELOPE for a in v]
    return pts if len({a["curve"] for a in pts}) > 1 else []


def reuse_baselines(path, images: list[EvalImage], data) -> list[dict]:
    """The classical codecs' aggregated settings of an earlier eval JSON on the same images (so a
    SLIM model can be re-evaluated without re-running 70+ baseline settings)."""
    res = json.loads(Path(path).read_text())
    if res.get("n_images") != len(images) or res.get("split") != Path(data).resolve().name:
        raise ValueError(f"{path} was run on {res.get('n_images')} images of {res.get('split')!r}, "
                         f"not on these {len(images)} of {Path(data).resolve().name!r}")
    return [a for a in res["settings"] if a["codec"] != "slim"]


def read_labels_count(data) -> list[str]:
    from slim_rt.training.data import list_images, read_labels
    labels = read_labels(data)
    return [f.name for f in list_images(data) if f.name in labels]


def ref_scores_rows(images: list[EvalImage], scores: list[dict]) -> list[dict]:
    return [{"file": im.file, "label": im.label, "codec": "original", "curve": "original", "setting": "uncompressed",
             "bytes": SIZE * SIZE * 3, "bpp": 24.0, "pred": s["pred"], "top1": s["top1"], "top5": s["top5"],
             "psnr": "", "msssim": 1.0} for im, s in zip(images, scores)]


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else v


def _json_safe(o):
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_json_safe(v) for v in o]
    return o


def markdown(res: dict) -> str:
    ref = res["reference"]
    lines = [f"# {res['name']}", "",
             f"{res['n_images']} images of `{res['data']}`, model `{res['model']}`, caption mode "
             f"`{res['caption_mode']}`, classifier {res['classifier']}, {res['size']}x{res['size']} crops "
             f"(docs/eval.md). Uncompressed crops: top-1 {ref['top1']:.3f}, top-5 {ref['top5']:.3f}.", "",
             "| codec | setting | bpp | top-1 | top-5 | PSNR (dB) | MS-SSIM | enc ms/img | dec ms/img | UNet ms/img |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for a in res["settings"]:
        lines.append(f"| {a['curve']} | {a['setting']} | {a['bpp']:.4f} | {a['top1']:.3f} | {a['top5']:.3f} | "
                     f"{a['psnr']:.2f} | {a['msssim']:.4f} | {a['enc_ms']:.1f} | {a['dec_ms']:.1f} | "
                     f"{a.get('unet_ms', 0.0):.1f} |")
    if res["bd_rate_pct"]:
        lines += ["", f"BD-rate of SLIM vs each baseline at equal accuracy ({res['bd_rate_method']}; negative = "
                      "SLIM needs fewer bits):", "", "| SLIM | baseline | top-1 | top-5 |", "|---|---|---:|---:|"]
        for sc, d in res["bd_rate_pct"].items():
            for base, e in d.items():
                f = lambda v: v if isinstance(v, str) else f"{v:+.1f}%"  # noqa: E731
                lines.append(f"| {sc} | {base} | {f(e['top1'])} | {f(e['top5'])} |")
    for c, why in res["skipped"].items():
        lines += ["", f"Skipped {c}: {why}"]
    return "\n".join(lines) + "\n"


def plot(res: dict, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    curves: dict[str, list[dict]] = {}
    for a in res["settings"]:
        curves.setdefault(a["curve"], []).append(a)
    classical = classical_settings(curves)
    if classical:
        acc, logr = _frontier([a["bpp"] for a in classical], [a["top1"] for a in classical])
        ax.plot(np.exp(logr), acc, "-", color="black", alpha=0.35, lw=6, label=ENVELOPE)
    for name, pts in curves.items():
        pts = sorted(pts, key=lambda a: a["bpp"])
        ax.plot([a["bpp"] for a in pts], [a["top1"] for a in pts], "o-" if name.startswith("slim") else ".--",
                label=name, lw=2 if name.startswith("slim") else 1)
    ax.axhline(res["reference"]["top1"], color="gray", ls=":", label="uncompressed")
    ax.set_xscale("log")
    ax.set_xlabel("bits per pixel (256x256, whole file)")
    ax.set_ylabel("top-1 accuracy")
    ax.set_ylim(0, 1)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(f"{res['name']} ({res['n_images']} images)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _ints(tokens) -> list[int] | None:
    if not tokens:
        return None
    return [int(x) for t in tokens for x in str(t).split(",") if x.strip()]


def run_from_args(args) -> int:
    """`slim-rt eval` (the parser lives in slim_rt/cli.py)."""
    qualities = {}
    for spec in args.quality or []:
        codec, _, qs = spec.partition("=")
        if codec not in QUALITIES or not qs:
            raise ValueError(f"--quality wants CODEC=Q,Q,... with CODEC in {', '.join(QUALITIES)}, got {spec!r}")
        qualities[codec] = _ints([qs])
    res = run_eval(args.data, model=args.model, out_dir=args.out_dir or RESULTS, limit=args.limit,
                   steps=_ints(args.steps), device=args.device, codecs=args.codecs, caption_mode=args.caption_mode,
                   qualities=qualities, baseline_scales=[float(s) for s in args.baseline_scales],
                   batch=args.batch, tag=args.tag, threads=getattr(args, "threads", None),
                   guidance=getattr(args, "guidance", 1.0), baselines_from=getattr(args, "baselines_from", None))
    print(markdown(res))
    return 0


def main(argv: list[str] | None = None) -> int:
    from slim_rt.cli import main as cli_main
    return cli_main(["eval", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
