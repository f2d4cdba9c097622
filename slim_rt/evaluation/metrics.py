"""Scores: classifier top-1/top-5, PSNR, MS-SSIM; per-setting aggregates; Bjontegaard delta rate at
equal accuracy."""
from __future__ import annotations

import math

import numpy as np
import torch


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
            size = getattr(classifier, "input_size", size)
            probe = torch.rand(2, 3, size, size, device=classifier.device)
            frozen = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(classifier.model, probe)))
            if not torch.allclose(frozen(probe), classifier.model(probe), atol=1e-3, rtol=1e-3):
                return classifier
        classifier.model = frozen
    except Exception:  # noqa: BLE001 - an optimisation only
        pass
    return classifier


@torch.inference_mode()
def machine_scores(classifier, recs: list[torch.Tensor], labels: list[int], batch: int = 8) -> list[dict]:
    """Per image: pred, top1, top5 (classifier batched)."""
    out = []
    for i in range(0, len(recs), batch):
        y = torch.tensor(labels[i:i + batch])
        top5 = classifier.logits(torch.stack(recs[i:i + batch])).float().cpu().topk(5, dim=-1).indices
        out += [{"pred": int(t[0]), "top1": int(t[0] == l), "top5": int((t == l).any())} for t, l in zip(top5, y)]
    return out


@torch.inference_mode()
def fidelity(recs: list[torch.Tensor], refs: list[torch.Tensor], batch: int = 8) -> list[dict]:
    """Per image: psnr, msssim (MS-SSIM per image, which is several times faster on CPU than batched:
    the filtered maps stay in cache). Independent of the machine: computed once per setting."""
    out = []
    for i in range(0, len(recs), batch):
        x, r = torch.stack(recs[i:i + batch]), torch.stack(refs[i:i + batch])
        p = psnr(x, r)
        out += [{"psnr": float(p[j]), "msssim": float(msssim(x[j:j + 1], r[j:j + 1]))} for j in range(len(x))]
    return out



def frontier(bpp, acc) -> tuple[np.ndarray, np.ndarray]:
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
    a_acc, a_r = frontier(anchor_bpp, anchor_acc)
    t_acc, t_r = frontier(test_bpp, test_acc)
    if len(a_acc) < 2 or len(t_acc) < 2:
        return None
    lo, hi = max(a_acc[0], t_acc[0]), min(a_acc[-1], t_acc[-1])
    if not hi > lo:
        return None
    avg = (_integral(t_acc, t_r, lo, hi, method) - _integral(a_acc, a_r, lo, hi, method)) / (hi - lo)
    return (math.exp(avg) - 1) * 100


def aggregate(rows: list[dict]) -> dict:
    n = len(rows)
    mean = lambda k: sum(r[k] for r in rows) / n  # noqa: E731
    first = rows[0]
    return {"codec": first["codec"], "curve": first["curve"], "setting": first["setting"],
            "quality": first["quality"], "scale": first["scale"], "rate": first["rate"], "steps": first["steps"],
            "n": n, "bytes": mean("bytes"), "bpp": mean("bpp"), "top1": mean("top1"), "top5": mean("top5"),
            "psnr": mean("psnr"), "msssim": mean("msssim"), "enc_ms": mean("enc_ms"), "dec_ms": mean("dec_ms"),
            "unet_ms": mean("unet_ms")}



def bd_table(curves: dict[str, list[dict]], method: str = "pchip") -> dict:
    """{slim curve: {baseline curve: {"top1": %, "top5": %}}} ("no overlap" where BD-rate is None)."""
    bd: dict = {}
    for sc in (c for c in curves if c.startswith("slim")):
        for base in (c for c in curves if not c.startswith("slim")):
            entry = {}
            for metric in ("top1", "top5"):
                v = bd_rate([a["bpp"] for a in curves[base]], [a[metric] for a in curves[base]],
                            [a["bpp"] for a in curves[sc]], [a[metric] for a in curves[sc]], method)
                entry[metric] = "no overlap" if v is None else round(v, 2)
            bd.setdefault(sc, {})[base] = entry
    return bd
