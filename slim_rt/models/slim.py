"""A SLIM model on disk and in memory: config + frozen base + one compressor per rate point.

Directory layout (a "SLIM model directory"):
    slim_config.json              SlimConfig (format "slim-rt/1")
    compressor/rate{i}.safetensors  one SlimCompressor per rate point, lowest bitrate first
    vae/ unet/ text_encoder/ tokenizer/ scheduler/   the diffusers base, when config.base == "."
SlimModel.save_pretrained writes one; from_pretrained reads it.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from slim_rt.config import CONFIG_NAME, SlimConfig
from slim_rt.errors import ModelLoadError, first_line
from slim_rt.models.base import BaseModel, load_base, save_base
from slim_rt.models.compressor import SlimCompressor
from slim_rt.models.registry import bundled_dir, resolve  # noqa: F401 (names -> folders live there)

_ENTROPY_BUFFERS = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")


def compressor_state(comp: SlimCompressor) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in comp.state_dict().items()}


def load_compressor(cfg, state: dict[str, torch.Tensor]) -> SlimCompressor:
    """Build a compressor and load a state dict whose entropy tables may have any size."""
    comp = SlimCompressor(cfg)
    for mod_name in ("entropy_bottleneck", "gaussian"):
        mod = getattr(comp, mod_name)
        for buf in _ENTROPY_BUFFERS:
            key = f"{mod_name}.{buf}"
            if key in state and hasattr(mod, buf):
                getattr(mod, buf).resize_(state[key].shape)
    comp.load_state_dict(state)
    return comp.eval().requires_grad_(False)


def hash_tensors(h, tensors: dict[str, torch.Tensor]) -> None:
    """Feed a state dict into the hash `h` (hashlib): per tensor in key order its name, dtype, shape and
    bytes (bf16 as float32). The one tensor hashing of the model fingerprint and the export's content hash."""
    for k, v in sorted(tensors.items()):
        v = v.detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(v.dtype).encode())
        h.update(str(tuple(v.shape)).encode())
        h.update((v.float() if v.dtype == torch.bfloat16 else v).numpy().tobytes())


def fingerprint(cfg: SlimConfig, compressors: list[SlimCompressor], base_configs: dict) -> str:
    """SHA-256 (hex) over the config, every compressor tensor (weights, integer scale network and
    entropy tables) and the base's component configs. The bitstream carries its first 4 bytes."""
    h = hashlib.sha256()
    h.update(cfg.to_json().encode())
    h.update(json.dumps(base_configs, sort_keys=True, default=str).encode())
    for comp in compressors:
        hash_tensors(h, comp.state_dict())
    return h.hexdigest()


def load_config_and_compressors(root: Path) -> tuple[SlimConfig, list[SlimCompressor]]:
    """slim_config.json and every rate point's compressor of a model (or export) directory."""
    try:
        cfg = SlimConfig.load(root)
    except FileNotFoundError:
        raise ModelLoadError(f"{root}: missing {CONFIG_NAME}") from None
    except (ValueError, TypeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"bad {CONFIG_NAME} in {root}: {e}") from None
    if not cfg.rates:
        raise ModelLoadError(f"{root}: the config lists no compressor rate points")
    comps = []
    for rel in cfg.rates:
        f = root / rel
        if not f.is_file():
            raise ModelLoadError(f"{root}: missing compressor weights {rel}")
        try:
            comps.append(load_compressor(cfg.compressor, load_file(str(f))))
        except Exception as e:
            raise ModelLoadError(f"{f}: cannot load compressor weights ({first_line(e)})") from None
    return cfg, comps


@dataclass
class SlimModel:
    config: SlimConfig
    base: BaseModel
    compressors: list[SlimCompressor]
    root: Path
    fingerprint_hex: str

    @property
    def fingerprint(self) -> bytes:
        return bytes.fromhex(self.fingerprint_hex)[:4]

    @property
    def num_rates(self) -> int:
        return len(self.compressors)

    @property
    def pixel_multiple(self) -> int:
        return self.base.vae_factor * self.config.compressor.latent_multiple

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, device="cpu", dtype=torch.float32,
                        local_files_only: bool = False, base: str | None = None,
                        need_unet: bool = True, text_encoder: str | Path | None = None) -> "SlimModel":
        """text_encoder: a context-table folder to use instead of the base's text encoder."""
        root = resolve(name_or_path)
        cfg, comps = load_config_and_compressors(root)
        base_src = base or cfg.base
        base_path = root if base_src == "." else (root / base_src if (root / base_src).is_dir() else base_src)
        base_model = load_base(base_path, local_files_only=local_files_only, device=device, dtype=dtype,
                               need_unet=need_unet, autoencoder=cfg.autoencoder,
                               text_encoder=text_encoder)
        if base_model.latent_channels != cfg.compressor.latent_channels:
            raise ModelLoadError(f"{root}: the compressor codes {cfg.compressor.latent_channels}-channel latents, "
                                 f"the base's autoencoder makes {base_model.latent_channels}")
        for c in comps:
            c.to(device)
        fp = fingerprint(cfg, comps, base_model.configs())
        return cls(cfg, base_model, comps, root, fp)

    def save_pretrained(self, save_dir: str | Path, *, config: SlimConfig | None = None, base_dir: str = ".",
                        unet_dtype: torch.dtype | None = None) -> Path:
        """Write this model as a SLIM model directory (the inverse of from_pretrained): the base in
        `save_dir/base_dir` (models.base.save_base: frozen parts copied as stored, the UNet from memory,
        in `unet_dtype` if given), the compressors, and `config` (default: this model's) with its
        `base` set to `base_dir`. Returns the directory."""
        import dataclasses
        d = Path(save_dir)
        save_base(self.base, d / base_dir, unet_dtype)
        self.save_compressors(d, dataclasses.replace(config or self.config, base=base_dir, rates=()),
                              self.compressors)
        return d

    @staticmethod
    def save_compressors(model_dir: str | Path, cfg: SlimConfig, compressors: list[SlimCompressor]) -> SlimConfig:
        """Write compressor weights and a config listing them; returns that config."""
        d = Path(model_dir)
        (d / "compressor").mkdir(parents=True, exist_ok=True)
        rates = []
        for i, comp in enumerate(compressors):
            rel = f"compressor/rate{i}.safetensors"
            save_file(compressor_state(comp), str(d / rel))
            rates.append(rel)
        import dataclasses
        cfg = dataclasses.replace(cfg, rates=tuple(rates))
        cfg.save(d)
        return cfg
