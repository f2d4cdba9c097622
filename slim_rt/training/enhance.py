"""The enhancement stages of `slim-rt train`: `enhancer` (the teacher) and `distill` (the student).

enhancer  fine-tunes the base UNet into a caption-conditioned restorer of decompressed latents. The
          decompressed latent x_hat is x_t0 = sqrt(abar_t0) x_hat, no noise; DDIM (eta = 0) keeps its
          noise estimate constant, so the ideal path from there to the clean latent x is
          x_t = sqrt(abar_t) x + sqrt(1 - abar_t) eps*, eps* = sqrt(abar_t0)(x_hat - x)/sqrt(1 - abar_t0)
          (`sampler.path_point`). The UNet is trained at points of that path (t in [1, t0], half of
          them on the K = 1/2/4 schedules) to give the x0 estimate x: RoI-weighted latent MSE, 10%
          empty captions (for classifier-free guidance in the teacher). Its output conv starts at
          zero, so training starts from the identity (enhanced = x_hat), never below K = 0.
          Run with many DDIM steps and guidance, this UNet is the teacher.
distill   a K-step student (K in cfg.student_steps, no guidance: one UNet call a step) starts from the
          teacher's weights and is trained through its K steps on
            RoI-weighted MSE(student(x_hat), teacher(x_hat))        (teacher: many steps + CFG, cached)
            + task_weight * KL(clf(original crop) || clf(D(student(x_hat))))   (the machine term)
          The machine term matches the frozen classifier's output on the original image (not a
          label): the train and dev classes of the offline data are disjoint, so a label term would
          teach the 500 train classes only.
Both write OUT as a SLIM model directory (slim_config.json + compressors, base in OUT/base).
"""
from __future__ import annotations

import copy
import dataclasses
import random
from pathlib import Path

import torch
from torch.nn import functional as F

from slim_rt.classifier import MEAN, STD
from slim_rt.images import from_coded, to_coded
from slim_rt.sampler import FewStepSampler, path_point
from slim_rt.training.config import TrainConfig
from slim_rt.training.stages import crop_latents, encode_dataset
from slim_rt.training.trainer import TrainStage


def machine_kl(clf, rec01: torch.Tensor, ref01: torch.Tensor) -> torch.Tensor:
    """KL(p(ref) || p(rec)) of the frozen classifier, both at their own (native) resolution."""
    with torch.no_grad():
        target = F.log_softmax(clf((ref01 - MEAN) / STD), -1)
    logp = F.log_softmax(clf((rec01 - MEAN) / STD), -1)
    return F.kl_div(logp, target, log_target=True, reduction="batchmean")


def zero_output(unet) -> None:
    """Zero the UNet's last conv: its epsilon is 0, so every K-step decode returns x_hat (identity)."""
    torch.nn.init.zeros_(unet.conv_out.weight)
    torch.nn.init.zeros_(unet.conv_out.bias)


class _EnhanceBase(TrainStage):
    """Shared by both stages: the SLIM model (frozen base + compressors), a trainable UNet, captions."""

    def __init__(self, cfg: TrainConfig, model_dir: str | Path, masks, dataset):
        from slim_rt.models.slim import SlimModel
        self.cfg, self.masks, self.dataset = cfg, masks, dataset
        self.model = SlimModel.from_pretrained(model_dir)
        if self.model.base.unet is None:
            raise ValueError(f"{model_dir}: the base has no UNet to train")
        self.model.base.vae.requires_grad_(False)
        self.unet = self.model.base.unet.float().train().requires_grad_(True)
        self.sampler = FewStepSampler.from_configs(self.model.base.scheduler_config, self.model.config.enhance)
        self.alphas_cumprod, self.prediction_type, self.t0 = (
            self.sampler.alphas_cumprod, self.sampler.prediction_type, self.sampler.t0)
        self._ctx: dict[str, torch.Tensor] = {}
        self.clf = None
        if cfg.task_weight > 0:
            from slim_rt.classifier import load_efficientnet_lite0
            self.clf = load_efficientnet_lite0()
        elif cfg.latent_weight <= 0:
            raise ValueError("latent_weight=0 needs the machine term (task_weight > 0): nothing to train on")

    def modules(self):
        return {"unet": self.unet}

    def parameters_groups(self):
        return [(list(self.unet.parameters()), self.cfg.lr)]

    @torch.no_grad()
    def context(self, captions: list[str]) -> torch.Tensor:
        missing = [c for c in dict.fromkeys(captions) if c not in self._ctx]
        if missing:
            self._ctx.update(zip(missing, self.model.base.encode_text(missing, "cpu")))
        return torch.stack([self._ctx[c] for c in captions])

    def unet_fn(self, x, t, ctx):
        return self.unet(x, t, encoder_hidden_states=ctx).sample

    def x0_estimate(self, out, x_t, abar):
        """The UNet's clean-latent estimate at per-sample abar [B] (a DDIM step to abar = 1)."""
        return self.sampler.step(out, x_t, abar.view(-1, 1, 1, 1), 1.0, self.prediction_type)

    def decode01(self, latent):
        return ((self.model.base.decode_latent(latent) + 1) / 2).clamp(0, 1)

    def roi_mse(self, pred, target, m):
        se = (pred - target).pow(2)
        d_roi, d_bg = (m * se).mean(), ((1 - m) * se).mean()
        return d_roi + self.cfg.background_weight * d_bg, d_roi

    def save(self, out: Path):
        """OUT becomes a SLIM model directory: config + compressors, the base in OUT/base (with the new
        UNet: self.unet is the base's UNet, trained in place)."""
        cfg = dataclasses.replace(self.model.config, enhance=self.enhance_config())
        self.model.save_pretrained(out, config=cfg, base_dir="base")

    def enhance_config(self):
        return self.model.config.enhance


class EnhancerStage(_EnhanceBase):
    name = "enhancer"

    def __init__(self, cfg: TrainConfig, model_dir: str | Path, masks, dataset, latent_cache: Path | None = None):
        super().__init__(cfg, model_dir, masks, dataset)
        if cfg.zero_init:
            zero_output(self.unet)
        self.abar_t0 = float(self.alphas_cumprod[self.t0])
        self.schedule_ts = sorted({t for k in (1, 2, 4) for t in self.sampler.schedule(k).timesteps})
        self.latents = encode_dataset(self.model.base, dataset, latent_cache)

    def rate_latents(self, batch, r: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's clean latents as rate point r codes them, and the RoI mask on their grid. A scaled
        rate point (config.scales) codes the crop resized by its scale: encoded here, on the fly."""
        m = self.masks.crop(batch["index"], batch["crop"], self.cfg.crop)
        scale = self.model.config.rate_scale(r)
        if scale == 1.0:
            return crop_latents(self.latents, batch, self.cfg.crop), F.avg_pool2d(m, 8)
        with torch.no_grad():
            x = self.model.base.encode_latent(to_coded(batch["image"], scale) * 2 - 1)
        return x, F.adaptive_avg_pool2d(m, x.shape[-2:])

    def loss(self, batch, step):
        r = int(torch.randint(0, self.model.num_rates, ()))
        x, m = self.rate_latents(batch, r)
        B = x.shape[0]
        with torch.no_grad():
            x_hat = self.model.compressors[r].eval()(x)["x_hat"]  # eval mode: hard rounding, as decoded
            caps = [cap if random.random() > 0.1 else "" for cap in batch["caption"]]
            ctx = self.context(caps)
        on_sched = torch.rand(B) < 0.5
        t = torch.where(on_sched, torch.tensor(self.schedule_ts)[torch.randint(len(self.schedule_ts), (B,))],
                        torch.randint(1, self.t0 + 1, (B,)))
        abar = self.alphas_cumprod[t].float()
        x_t = path_point(x, x_hat, abar, self.abar_t0)
        x0 = self.x0_estimate(self.unet_fn(x_t, t, ctx), x_t, abar)
        d, d_roi = self.roi_mse(x0, x, m)
        loss = self.cfg.latent_weight * d
        logs = {"mse_roi": d_roi.item(), "mse_roi_k0": (m * (x_hat - x).pow(2)).mean().item()}
        if self.clf is not None:
            kl = machine_kl(self.clf, from_coded(self.decode01(x0), batch["image"].shape[-2:]), batch["image"])
            loss = loss + self.cfg.task_weight * kl
            logs["kl"] = kl.item()
        return loss, {"loss": loss.item(), "rate": r, **logs}


class DistillStage(_EnhanceBase):
    name = "distill"

    def __init__(self, cfg: TrainConfig, model_dir: str | Path, masks, dataset, cache_path: Path | None = None):
        super().__init__(cfg, model_dir, masks, dataset)
        if not cfg.student_steps or any(not 1 <= k <= self.model.config.enhance.max_steps for k in cfg.student_steps):
            raise ValueError(f"student_steps must be K values in [1, {self.model.config.enhance.max_steps}]")
        n = self.model.num_rates
        if any(not 0 <= r < n for r in cfg.rates):
            raise ValueError(f"rates must be rate points in [0, {n - 1}], got {cfg.rates}")
        self.rates = sorted(set(cfg.rates)) or list(range(n))
        if cfg.student_init not in ("teacher", "identity"):
            raise ValueError(f"student_init must be 'teacher' or 'identity', got {cfg.student_init!r}")
        self.use_teacher = cfg.latent_weight > 0
        key = self._cache_key()
        cached = torch.load(cache_path, weights_only=True) if cache_path and cache_path.is_file() else None
        if cached is not None and cached.get("key") == key:
            self.cache = cached["data"]
        else:
            self.cache = self._teacher_cache()
            if cache_path is not None:
                cache_path.parent.mkdir(parents=True, exist_ok=True)
                torch.save({"key": key, "data": self.cache}, cache_path)
        if cfg.student_init == "identity":
            zero_output(self.unet)  # after the teacher ran: the student starts at K = 0's output

    def _cache_key(self) -> str:
        """What the teacher targets depend on: teacher weights, schedule, crops, images, compressors."""
        import hashlib
        h = hashlib.sha256()
        for k, v in sorted(self.unet.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().float().cpu().numpy().tobytes())
        h.update(repr(("per-rate grids", self.cfg.teacher_steps, self.cfg.guidance, self.cfg.crop, self.cfg.resize, self.t0,
                       [f.name for f in self.dataset.files], self.model.fingerprint_hex, self.rates,
                       self.use_teacher)).encode())
        return h.hexdigest()

    @torch.no_grad()
    def _teacher_cache(self) -> dict:
        """Per image: the center crop (pixels) and, per rate (lists: a scaled rate point has its own latent
        grid; None for rates not trained), x_hat, the teacher's many-step guided output (None without the
        latent term) and the RoI mask on that grid. The teacher is the starting UNet, frozen."""
        from tqdm import tqdm
        if self.use_teacher:
            teacher = copy.deepcopy(self.unet).eval().requires_grad_(False)
            fn = lambda x, t, c: teacher(x, t, encoder_hidden_states=c).sample  # noqa: E731
        c, base = self.cfg.crop, self.model.base
        imgs, masks = [], []
        for i, im in enumerate(self.dataset.images):
            H, W = im.shape[1:]
            top, left = (H - c) // 2 // 8 * 8, (W - c) // 2 // 8 * 8
            imgs.append(im[:, top:top + c, left:left + c])
            masks.append(self.masks.masks[i][top:top + c, left:left + c])
        imgs, masks = torch.stack(imgs), torch.stack(masks)[:, None]
        uncond = self.context([""])
        xh, tgt = [[] for _ in self.model.compressors], [[] for _ in self.model.compressors]
        bs = 25
        for s in tqdm(range(0, len(imgs), bs), desc="teacher", leave=False):
            ctx = self.context(self.dataset.captions[s:s + bs])
            for r in self.rates:  # a scaled rate point codes the crop resized
                x = base.encode_latent(to_coded(imgs[s:s + bs], self.model.config.rate_scale(r)) * 2 - 1)
                x_hat = self.model.compressors[r].eval()(x)["x_hat"]
                xh[r].append(x_hat)
                if self.use_teacher:
                    tgt[r].append(self.sampler.run(fn, x_hat, ctx, self.cfg.teacher_steps, self.cfg.guidance, uncond))
        cat = lambda v: torch.cat(v) if v else None  # noqa: E731  per rate [N, C, h_r, w_r]: grids differ
        xh = [cat(v) for v in xh]
        return {"image": imgs, "masks": [None if v is None else F.adaptive_avg_pool2d(masks, v.shape[-2:]) for v in xh],
                "x_hat": xh, "teacher": [cat(v) for v in tgt]}

    def loss(self, batch, step):
        idx = batch["index"]
        flip = batch["crop"][:, 2].bool().view(-1, 1, 1, 1)
        f = lambda v: torch.where(flip, v.flip(-1), v)  # noqa: E731
        r = self.rates[int(torch.randint(0, len(self.rates), ()))]
        x_hat, m, ref = f(self.cache["x_hat"][r][idx]), f(self.cache["masks"][r][idx]), f(self.cache["image"][idx])
        ctx = self.context([c if random.random() >= self.cfg.caption_drop else ""
                            for c in (self.dataset.captions[i] for i in idx.tolist())])
        k = random.choice(self.cfg.student_steps)
        out = self.sampler.run(self.unet_fn, x_hat, ctx, k)
        loss, logs = out.new_zeros(()), {"k": k, "rate": r}
        if self.use_teacher:
            target = f(self.cache["teacher"][r][idx])
            d, d_roi = self.roi_mse(out, target, m)
            loss = loss + self.cfg.latent_weight * d
            logs.update(mse_teacher_roi=d_roi.item(), mse_teacher_roi_k0=(m * (x_hat - target).pow(2)).mean().item())
        if self.clf is not None:
            kl = machine_kl(self.clf, from_coded(self.decode01(out), ref.shape[-2:]), ref)
            loss = loss + self.cfg.task_weight * kl
            logs["kl"] = kl.item()
        return loss, {"loss": loss.item(), **logs}

    def enhance_config(self):
        enh = self.model.config.enhance
        return dataclasses.replace(enh, steps=min(self.cfg.student_steps), distilled=tuple(self.cfg.student_steps))


__all__ = ["EnhancerStage", "DistillStage", "machine_kl", "zero_output"]
