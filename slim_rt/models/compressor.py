"""The SLIM latent compressor: a mean-scale hyperprior on the VAE latent.

Networks only transform tensors; the entropy models (slim_rt.entropy) own quantization,
CDF tables and coding. Protocol as in CompressAI: `forward` -> likelihoods (training),
`compress` -> strings, `decompress` -> latent. The float networks can run on any backend
(see `compress_with` / `decompress_with`); the entropy path always runs exactly.

Shapes (latent x: [B, C, h, w], h and w multiples of 8):
  g_a: x -> y [B, M, h/2, w/2]      h_a: y -> z [B, N, h/8, w/8]
  h_s_mean: z_hat -> means [B, M, h/2, w/2]
  h_s_scale (integer): z symbols -> CDF indexes [B, M, h/2, w/2]
  g_s: y_hat -> x_hat [B, C, h, w]
"""
from __future__ import annotations

import contextlib
from typing import Callable, ContextManager

import torch
from torch import Tensor, nn

from slim_rt import kernels
from slim_rt.config import CompressorConfig
from slim_rt.entropy import ExactGaussianConditional, FactorizedEntropy  # imports compressai quietly
from compressai.layers import ResidualBlock, conv3x3, subpel_conv3x3  # noqa: E402
from slim_rt.models.intnet import IntScaleSynthesis

TensorFn = Callable[[Tensor], Tensor]
Timed = Callable[[str], ContextManager]


def _untimed(name: str) -> ContextManager:
    return contextlib.nullcontext()


class LatentAnalysis(nn.Sequential):  # g_a
    def __init__(self, c: int, n: int, m: int):
        super().__init__(conv3x3(c, n), ResidualBlock(n, n), conv3x3(n, n, stride=2),
                         ResidualBlock(n, n), conv3x3(n, m))


class LatentSynthesis(nn.Sequential):  # g_s
    def __init__(self, c: int, n: int, m: int):
        super().__init__(conv3x3(m, n), ResidualBlock(n, n), subpel_conv3x3(n, n, 2),
                         ResidualBlock(n, n), conv3x3(n, c))


class HyperAnalysis(nn.Sequential):  # h_a
    def __init__(self, n: int, m: int):
        super().__init__(conv3x3(m, n), nn.LeakyReLU(inplace=True), conv3x3(n, n, stride=2),
                         nn.LeakyReLU(inplace=True), conv3x3(n, n, stride=2))


class HyperSynthesisMean(nn.Sequential):  # h_s, floating (means) branch
    def __init__(self, n: int, m: int):
        super().__init__(subpel_conv3x3(n, n, 2), nn.LeakyReLU(inplace=True), subpel_conv3x3(n, n, 2),
                         nn.LeakyReLU(inplace=True), conv3x3(n, m))


class SlimCompressor(nn.Module):
    def __init__(self, cfg: CompressorConfig):
        super().__init__()
        self.cfg = cfg
        c, n, m = cfg.latent_channels, cfg.N, cfg.M
        self.g_a = LatentAnalysis(c, n, m)
        self.g_s = LatentSynthesis(c, n, m)
        self.h_a = HyperAnalysis(n, m)
        self.h_s_mean = HyperSynthesisMean(n, m)
        self.h_s_scale = IntScaleSynthesis(n, cfg.scale_hidden, m, cfg.scale_levels)
        self.entropy_bottleneck = FactorizedEntropy(n)
        self.gaussian = ExactGaussianConditional(cfg.scale_levels, cfg.scale_min, cfg.scale_max)
        self._int_params: dict[str, Tensor] | None = None

    # -- training ----------------------------------------------------------------------------
    def forward(self, x: Tensor) -> dict:
        y = self.g_a(x)
        z = self.h_a(y)
        z_tilde, z_lik = self.entropy_bottleneck(z)
        med = self.entropy_bottleneck.medians()
        z_sym = z - med + (torch.round(z - med) - (z - med)).detach()  # what the decoder will see
        means = self.h_s_mean(z_tilde)
        scales = self.gaussian.scales_from_index(self.h_s_scale(z_sym))
        y_noisy = y + torch.empty_like(y).uniform_(-0.5, 0.5) if self.training else y
        y_lik = self.gaussian.likelihood(y_noisy if self.training else torch.round(y - means) + means,
                                         scales, means)
        y_hat = y - means + (torch.round(y - means) - (y - means)).detach() + means  # STE
        return {"x_hat": self.g_s(y_hat), "y": y, "likelihoods": {"y": y_lik, "z": z_lik}}

    def aux_loss(self) -> Tensor:
        return self.entropy_bottleneck.loss()

    def update(self, force: bool = True) -> None:
        """Build the CDF tables (call after training, before coding)."""
        self.entropy_bottleneck.update(force=force)
        self.gaussian.update_scale_table(self.gaussian.scale_table, force=force)
        self._int_params = None

    def int_params(self) -> dict[str, Tensor]:
        if self._int_params is None or self.training:
            self._int_params = self.h_s_scale.int_params()
        return self._int_params

    # -- coding ------------------------------------------------------------------------------
    @torch.inference_mode()
    def compress_with(self, y: Tensor, z: Tensor, mean_fn: TensorFn, impl: str = "auto",
                      timed: Timed = _untimed) -> dict:
        """Entropy-code y given z; `mean_fn` is the (backend's) hyper-synthesis mean branch. `timed(name)`
        wraps the exact index path (a pipeline's stage timer: "scale_indexes")."""
        z_sym, z_hat = self.entropy_bottleneck.quantize_symbols(z, impl=impl)
        means = mean_fn(z_hat).to(y.dtype)
        with timed("scale_indexes"):
            p = self.int_params()
            h = self.h_s_scale.hidden_int(z_sym, p)
            w, b, shift, levels = self.h_s_scale.head(p)
            y_sym, y_hat, idx = kernels.quantize_with_indexes(
                y.contiguous(), means.contiguous(), h, w.to(h.device), b.to(h.device), shift, levels, impl=impl)
        return {
            "strings": [self.entropy_bottleneck.encode(z_sym), self.gaussian.encode(y_sym, idx)],
            "z_shape": tuple(z.shape[-2:]),
            "y_hat": y_hat,
        }

    @torch.inference_mode()
    def decompress_with(self, strings: list[list[bytes]], z_shape: tuple[int, int], mean_fn: TensorFn,
                        device: torch.device | str = "cpu", impl: str = "auto", timed: Timed = _untimed) -> Tensor:
        """strings [z_strings, y_strings] -> y_hat [B, M, 4h, 4w]."""
        z_sym = self.entropy_bottleneck.decode(strings[0], z_shape).to(device)
        z_hat = self.entropy_bottleneck.dequantize_symbols(z_sym)
        means = mean_fn(z_hat).float()
        with timed("scale_indexes"):
            idx = self.h_s_scale.indexes(z_sym, self.int_params(), impl=impl)
        y_sym = self.gaussian.decode(strings[1], idx).to(device)
        return y_sym.to(means.dtype) + means

    def compress(self, x: Tensor) -> dict:
        with torch.inference_mode():
            y = self.g_a(x)
            out = self.compress_with(y, self.h_a(y), self.h_s_mean)
        return {"strings": out["strings"], "shape": out["z_shape"]}

    def decompress(self, strings: list[list[bytes]], shape: tuple[int, int]) -> dict:
        with torch.inference_mode():
            y_hat = self.decompress_with(strings, shape, self.h_s_mean, device=self.g_s[0].weight.device)
            return {"x_hat": self.g_s(y_hat), "y_hat": y_hat}
