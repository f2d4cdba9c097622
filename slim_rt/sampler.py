"""Few-step enhancement sampler (separate from the UNet, diffusers style).

The decompressed latent x_hat is treated as a noisy sample at timestep t0:
x_t0 = sqrt(abar_t0) * x_hat, and K deterministic DDIM steps (eta = 0) bring it to t = 0.
No random noise is drawn, so the same bitstream and K always give the same image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor


def alphas_cumprod_from_config(cfg: dict) -> Tensor:
    """abar_t for t in [0, T) from a diffusers scheduler config (SD defaults when empty)."""
    T = int(cfg.get("num_train_timesteps", 1000))
    b0, b1 = float(cfg.get("beta_start", 0.00085)), float(cfg.get("beta_end", 0.012))
    kind = cfg.get("beta_schedule", "scaled_linear")
    if kind == "scaled_linear":
        betas = torch.linspace(b0**0.5, b1**0.5, T, dtype=torch.float64) ** 2
    elif kind == "linear":
        betas = torch.linspace(b0, b1, T, dtype=torch.float64)
    elif kind == "squaredcos_cap_v2":
        f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        betas = torch.tensor([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)], dtype=torch.float64)
    else:
        raise ValueError(f"unsupported beta_schedule {kind!r}")
    return torch.cumprod(1 - betas, 0)


@dataclass(frozen=True)
class EnhanceSchedule:
    """K timesteps from t0 down to 0 and the DDIM coefficients of each step."""
    timesteps: tuple[int, ...]
    prediction_type: str
    abar: tuple[float, ...]        # abar at each timestep
    abar_next: tuple[float, ...]   # abar at the next timestep (1.0 after the last)

    @classmethod
    def make(cls, alphas_cumprod: Tensor, t0: int, steps: int, prediction_type: str = "epsilon"):
        if steps < 0:
            raise ValueError("steps must be >= 0")
        ts = [round(t0 * (steps - i) / steps) for i in range(steps)] if steps else []
        ts = [max(t, 1) for t in ts]
        abar = [float(alphas_cumprod[t]) for t in ts]
        return cls(tuple(ts), prediction_type, tuple(abar), tuple(abar[1:] + [1.0]))

    @property
    def start_scale(self) -> float:
        return math.sqrt(self.abar[0]) if self.abar else 1.0


class FewStepSampler:
    def __init__(self, alphas_cumprod: Tensor, t0: int, prediction_type: str = "epsilon"):
        self.alphas_cumprod = alphas_cumprod
        self.t0 = t0
        self.prediction_type = prediction_type

    def schedule(self, steps: int) -> EnhanceSchedule:
        return EnhanceSchedule.make(self.alphas_cumprod, self.t0, steps, self.prediction_type)

    @staticmethod
    def step(model_out: Tensor, x: Tensor, abar: float, abar_next: float, prediction_type: str) -> Tensor:
        """One DDIM (eta=0) step x_t -> x_{t_next}."""
        a, s = math.sqrt(abar), math.sqrt(1 - abar)
        if prediction_type == "epsilon":
            x0, eps = (x - s * model_out) / a, model_out
        elif prediction_type == "v_prediction":
            x0, eps = a * x - s * model_out, a * model_out + s * x
        elif prediction_type == "sample":
            x0, eps = model_out, (x - a * model_out) / s
        else:
            raise ValueError(f"unsupported prediction_type {prediction_type!r}")
        return math.sqrt(abar_next) * x0 + math.sqrt(1 - abar_next) * eps

    def run(self, unet_fn: Callable[[Tensor, Tensor, Tensor], Tensor], x_hat: Tensor, context: Tensor,
            steps: int) -> Tensor:
        """unet_fn(x_t, t [B], context) -> model output. Returns the enhanced latent."""
        sch = self.schedule(steps)
        x = x_hat * sch.start_scale
        for t, ab, abn in zip(sch.timesteps, sch.abar, sch.abar_next):
            tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
            x = self.step(unet_fn(x, tt, context), x, ab, abn, sch.prediction_type)
        return x
