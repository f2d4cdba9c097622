"""Entropy models on top of CompressAI's, with exact index paths and cached coding tables.

`FactorizedEntropy` codes z with a learned factorized prior (CompressAI's EntropyBottleneck).
`ExactGaussianConditional` codes y with a Gaussian conditional whose CDF row is chosen by an
*integer* index computed by the exact scale path (slim_rt.kernels.scale_indexes), never by
comparing floating-point scales - so encoder and decoder cannot disagree across devices.

Coding runs in slim_rt.entropy.coder (bounds-checked ANS on `constriction`, memory safe: a
crafted stream gives BitstreamError, never an out-of-bounds read); the integer CDF tables are
converted to the coder's models once (`_tables`) and reused, so a call does no per-symbol Python
work. CompressAI provides the training-time entropy models and the integer tables only.
"""
from __future__ import annotations

import math
import threading
import warnings

import numpy as np
import torch

with warnings.catch_warnings():  # compressai calls the deprecated torch.jit.script at import
    warnings.simplefilter("ignore", FutureWarning)
    from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from torch import Tensor

from slim_rt import kernels
from slim_rt.entropy import coder
from slim_rt.kernels.reference import scale_table as make_scale_table


class _TableCache:
    """The coder's models for an entropy model's CDF buffers, rebuilt only when they change."""

    def __init__(self):
        self._lock = threading.Lock()
        self._key = None
        self._value = None

    def get(self, model) -> coder.Tables:
        cdf, length, offset = model._quantized_cdf, model._cdf_length, model._offset
        if cdf.numel() == 0:
            raise RuntimeError("entropy model has no CDF tables: call update() after training")
        key = (cdf.data_ptr(), cdf.shape, int(cdf.sum()), length.data_ptr(), offset.data_ptr())
        with self._lock:
            if key != self._key:
                self._value = coder.Tables(cdf.cpu().numpy(), length.cpu().numpy(), offset.cpu().numpy())
                self._key = key
            return self._value


def _encode(symbols: Tensor, indexes: Tensor, tables: coder.Tables) -> list[bytes]:
    """symbols, indexes: [B, ...] int32 -> one stream per batch item."""
    sym = symbols.reshape(symbols.shape[0], -1).cpu().numpy()
    idx = indexes.reshape(indexes.shape[0], -1).cpu().numpy()
    return [coder.encode(s, i, tables) for s, i in zip(sym, idx)]


def _decode(strings: list[bytes], indexes: Tensor, tables: coder.Tables) -> Tensor:
    """Inverse of `_encode`: -> symbols int32 with the shape of `indexes` (BitstreamError if corrupt)."""
    idx = indexes.reshape(indexes.shape[0], -1).cpu().numpy()
    out = np.stack([coder.decode(s, i, tables) for s, i in zip(strings, idx)]) if len(strings) else idx
    return torch.from_numpy(out.astype(np.int32, copy=False)).reshape(indexes.shape).to(indexes.device)


class FactorizedEntropy(EntropyBottleneck):
    """Factorized prior for z. forward() (training) is CompressAI's; coding is symbol based."""

    def __init__(self, channels: int, **kwargs):
        super().__init__(channels, **kwargs)
        self._tables = _TableCache()

    def medians(self) -> Tensor:  # [1, C, 1, 1]
        return self.quantiles[:, 0, 1].detach().reshape(1, -1, 1, 1)

    def quantize_symbols(self, z: Tensor, impl: str = "auto") -> tuple[Tensor, Tensor]:
        """z [B, C, h, w] -> (symbols int32, z_hat = symbols + medians)."""
        return kernels.quantize(z, self.medians().to(z.dtype).expand_as(z).contiguous(), impl=impl)

    def dequantize_symbols(self, symbols: Tensor) -> Tensor:
        return symbols.float() + self.medians().to(symbols.device)

    def _channel_indexes(self, shape) -> Tensor:
        B, C, h, w = shape
        return torch.arange(C, dtype=torch.int32).reshape(1, C, 1, 1).expand(B, C, h, w)

    def encode(self, symbols: Tensor) -> list[bytes]:
        return _encode(symbols, self._channel_indexes(symbols.shape), self._tables.get(self))

    def decode(self, strings: list[bytes], size: tuple[int, int]) -> Tensor:
        shape = (len(strings), self._quantized_cdf.shape[0], *size)
        return _decode(strings, self._channel_indexes(shape), self._tables.get(self))


class ExactGaussianConditional(GaussianConditional):
    """Gaussian conditional whose CDF rows are picked by exact integer indexes.

    Index i selects scale_table[i] (log-spaced). In training the scale network outputs a
    continuous index s; `scales_from_index` rounds it with a straight-through estimator, so
    the rate the model learns is the rate of the indexes the decoder will compute.
    """

    def __init__(self, levels: int, smin: float, smax: float, **kwargs):
        super().__init__(make_scale_table(levels, smin, smax).tolist(), scale_bound=smin, **kwargs)
        self.levels, self.smin, self.smax = levels, smin, smax
        self._log_step = (math.log(smax) - math.log(smin)) / (levels - 1)
        self._tables = _TableCache()

    def scales_from_index(self, s: Tensor) -> Tensor:
        """Continuous index -> the table scale of its rounded, clamped value (STE gradient)."""
        s = s.clamp(0, self.levels - 1)
        s = s + (torch.floor(s + 0.5) - s).detach()
        return torch.exp(math.log(self.smin) + self._log_step * s)

    def likelihood(self, y: Tensor, scales: Tensor, means: Tensor | None) -> Tensor:
        lik = kernels.gaussian_likelihood(y, means, scales, self.smin)
        return self.likelihood_lower_bound(lik) if self.use_likelihood_bound else lik

    def encode(self, symbols: Tensor, indexes: Tensor) -> list[bytes]:
        return _encode(symbols, indexes, self._tables.get(self))

    def decode(self, strings: list[bytes], indexes: Tensor) -> Tensor:
        return _decode(strings, indexes, self._tables.get(self))
