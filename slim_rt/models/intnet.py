"""The integer scale network: z symbols -> exact CDF indexes of y.

Ballé et al. 2019 ("Integer networks for data compression") showed that a hyper-synthesis
computed in integer arithmetic makes entropy decoding platform independent. Here only the
*scale* branch is integer (means merely shift y_hat and stay floating point).

Layers (shapes for z symbols [B, N, h, w]):
  clamp(z, +-Z_CLAMP)                                   int, 0 fractional bits
  up2 -> conv3x3 N->H  -> round-shift -> clamp[0,255]    [B, H, 2h, 2w]  ACT_FRAC bits
  up2 -> conv3x3 H->H  -> round-shift -> clamp[0,255]    [B, H, 4h, 4w]  ACT_FRAC bits
  conv1x1 H->M -> round-shift -> clamp[0, L-1]           [B, M, 4h, 4w]  = CDF index
Weights are fixed point with W_FRAC fractional bits, |w_int| <= W_MAX. Training runs the same
arithmetic in float with straight-through rounding (`forward`); coding runs it exactly
(`hidden_int` + kernels.scale_indexes). docs/exact-entropy.md has the derivation and bounds.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from slim_rt import kernels

Z_CLAMP = 127
ACT_FRAC = 4
ACT_MAX = 255
W_FRAC = 8
W_MAX = 2047


def _round_ste(x: Tensor) -> Tensor:
    """floor(x + 0.5) forward (the integer path's rounding), identity gradient."""
    return x + (torch.floor(x + 0.5) - x).detach()


def _up2(x: Tensor) -> Tensor:
    return x.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)


class IntScaleSynthesis(nn.Module):
    def __init__(self, n_in: int, hidden: int, n_out: int, levels: int):
        super().__init__()
        self.levels = levels
        self.conv1 = nn.Conv2d(n_in, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.conv3 = nn.Conv2d(hidden, n_out, 1)
        self.in_fracs = (0, ACT_FRAC, ACT_FRAC)
        with torch.no_grad():  # start inside the fixed-point range
            for c in (self.conv1, self.conv2, self.conv3):
                c.weight.mul_(0.5)
            self.conv3.bias.fill_(levels / 4)

    # -- training: float simulation with straight-through rounding ---------------------------
    @staticmethod
    def _fq_weight(w: Tensor) -> Tensor:
        return _round_ste(w * 2**W_FRAC).clamp(-W_MAX, W_MAX) / 2**W_FRAC

    @staticmethod
    def _fq_bias(b: Tensor, in_frac: int) -> Tensor:
        return _round_ste(b * 2 ** (in_frac + W_FRAC)) / 2 ** (in_frac + W_FRAC)

    def _fq_conv(self, x: Tensor, conv: nn.Conv2d, in_frac: int) -> Tensor:
        return nn.functional.conv2d(x, self._fq_weight(conv.weight), self._fq_bias(conv.bias, in_frac),
                                    padding=conv.padding)

    def forward(self, z_symbols: Tensor) -> Tensor:
        """z_symbols (integer valued float, STE) [B,N,h,w] -> continuous index s [B,M,4h,4w]."""
        x = z_symbols.clamp(-Z_CLAMP, Z_CLAMP)
        for conv, f in ((self.conv1, 0), (self.conv2, ACT_FRAC)):
            x = self._fq_conv(_up2(x), conv, f)
            x = _round_ste(x * 2**ACT_FRAC).clamp(0, ACT_MAX) / 2**ACT_FRAC
        return self._fq_conv(x, self.conv3, ACT_FRAC)

    # -- coding: exact integer arithmetic -----------------------------------------------------
    def int_params(self) -> dict[str, Tensor]:
        """Integer weights/biases of the three layers (what export ships as data)."""
        out = {}
        for i, (conv, f) in enumerate(zip((self.conv1, self.conv2, self.conv3), self.in_fracs), 1):
            w = torch.round(conv.weight.detach().double() * 2**W_FRAC).clamp(-W_MAX, W_MAX)
            b = torch.round(conv.bias.detach().double() * 2 ** (f + W_FRAC))
            out[f"w{i}"] = w.to(torch.int32).cpu()
            out[f"b{i}"] = b.to(torch.int32).cpu()
        return out

    def hidden_int(self, z_symbols: Tensor, p: dict[str, Tensor] | None = None) -> Tensor:
        """z symbols int32 [B,N,h,w] -> last hidden activations int32 [B,H,4h,4w] (exact)."""
        p = p or self.int_params()
        x = z_symbols.to(torch.int32).clamp(-Z_CLAMP, Z_CLAMP)
        x = kernels.int_conv2d(_up2(x), p["w1"].to(x.device), p["b1"].to(x.device),
                               W_FRAC - ACT_FRAC, 0, ACT_MAX)  # in_frac 0 -> ACT_FRAC
        x = kernels.int_conv2d(_up2(x), p["w2"].to(x.device), p["b2"].to(x.device),
                               W_FRAC, 0, ACT_MAX)  # ACT_FRAC -> ACT_FRAC
        return x

    def head(self, p: dict[str, Tensor] | None = None) -> tuple[Tensor, Tensor, int, int]:
        """(weight [M,H] int32, bias [M] int32, shift, levels) for kernels.scale_indexes."""
        p = p or self.int_params()
        return p["w3"][:, :, 0, 0].contiguous(), p["b3"], ACT_FRAC + W_FRAC, self.levels

    def indexes(self, z_symbols: Tensor, p: dict[str, Tensor] | None = None, impl: str = "auto") -> Tensor:
        p = p or self.int_params()
        h = self.hidden_int(z_symbols, p)
        w, b, shift, levels = self.head(p)
        return kernels.scale_indexes(h, w.to(h.device), b.to(h.device), shift, levels, impl=impl)
