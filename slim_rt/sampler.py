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
    def make(cls, alphas_cumprod: Tensor, t0: int, steps: int, prediction_type: str = "epsilon",
             timesteps: tuple[int, ...] | None = None):
        """Uniform timesteps t0, t0(K-1)/K, ..., t0/K, or the explicit `timesteps` (descending)."""
        if steps < 0:
            raise ValueError("steps must be >= 0")
        if timesteps is not None:
            ts = [int(t) for t in timesteps]
            if len(ts) != steps or any(a <= b for a, b in zip(ts, ts[1:])) or (ts and not 0 < ts[-1] <= ts[0] < len(alphas_cumprod)):
                raise ValueError(f"timesteps {ts} are not {steps} descending values in [1, {len(alphas_cumprod) - 1}]")
        else:
            ts = [max(round(t0 * (steps - i) / steps), 1) for i in range(steps)] if steps else []
        abar = [float(alphas_cumprod[t]) for t in ts]
        return cls(tuple(ts), prediction_type, tuple(abar), tuple(abar[1:] + [1.0]))

    @property
    def start_scale(self) -> float:
        return math.sqrt(self.abar[0]) if self.abar else 1.0


    def to_dict(self) -> dict:
        return {"timesteps": list(self.timesteps), "abar": list(self.abar), "abar_next": list(self.abar_next),
                "prediction_type": self.prediction_type, "start_scale": self.start_scale}


def path_point(x: Tensor, x_hat: Tensor, abar_t: float | Tensor, abar_t0: float) -> Tensor:
    """The point at abar_t of the ideal deterministic DDIM path from x_t0 = sqrt(abar_t0) x_hat to x.

    DDIM (eta = 0) keeps the noise estimate constant along its path, so with eps* = sqrt(abar_t0)
    (x_hat - x) / sqrt(1 - abar_t0) the path is x_t = sqrt(abar_t) x + sqrt(1 - abar_t) eps*. A UNet that
    predicts eps* at every point of it makes K-step decoding exact for every K (enhancer training)."""
    abar_t = torch.as_tensor(abar_t, dtype=x.dtype, device=x.device).reshape(-1, *[1] * (x.dim() - 1))
    eps = math.sqrt(abar_t0) * (x_hat - x) / math.sqrt(1 - abar_t0)
    return abar_t.sqrt() * x + (1 - abar_t).sqrt() * eps


class FewStepSampler:
    """K deterministic DDIM steps from x_t0 = sqrt(abar_t0) x_hat; optional classifier-free guidance
    (the many-step teacher uses it; distilled students run with guidance 1 = one UNet call a step)."""

    def __init__(self, alphas_cumprod: Tensor, t0: int, prediction_type: str = "epsilon",
                 timesteps: dict | None = None):
        self.alphas_cumprod = alphas_cumprod
        self.t0 = t0
        self.prediction_type = prediction_type
        self.timesteps = {int(k): tuple(v) for k, v in (timesteps or {}).items()}  # explicit per-K schedules

    @classmethod
    def from_configs(cls, scheduler_config: dict, enhance) -> "FewStepSampler":
        """The sampler a model decodes with: its base's scheduler config and its `SlimConfig.enhance`
        (t0, explicit per-K timesteps). The one place the pipeline, the export and training build it."""
        return cls(alphas_cumprod_from_config(scheduler_config), enhance.t0,
                   scheduler_config.get("prediction_type", "epsilon"), enhance.timesteps)

    def schedule(self, steps: int) -> EnhanceSchedule:
        return EnhanceSchedule.make(self.alphas_cumprod, self.t0, steps, self.prediction_type,
                                    self.timesteps.get(steps))

    @staticmethod
    def step(model_out: Tensor, x: Tensor, abar: float | Tensor, abar_next: float, prediction_type: str) -> Tensor:
        """One DDIM (eta=0) step x_t -> x_{t_next}; abar_next = 1 gives the x0 estimate. abar may be a
        per-sample tensor broadcastable to x (training at random timesteps)."""
        if isinstance(abar, Tensor):
            a, s = abar.sqrt(), (1 - abar).sqrt()
        else:
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
            steps: int, guidance: float = 1.0, uncond: Tensor | None = None) -> Tensor:
        """unet_fn(x_t, t [B], context) -> model output. Returns the enhanced latent.
        guidance != 1 needs `uncond` (the empty caption's context [1 or B, L, D])."""
        sch = self.schedule(steps)
        x = x_hat * sch.start_scale
        B = x.shape[0]
        if guidance != 1.0:
            if uncond is None:
                raise ValueError("guidance needs the unconditional (empty caption) context")
            context = torch.cat([uncond.expand(B, *uncond.shape[1:]), context])
        for t, ab, abn in zip(sch.timesteps, sch.abar, sch.abar_next):
            if guidance == 1.0:
                out = unet_fn(x, torch.full((B,), t, device=x.device, dtype=torch.long), context)
            else:  # one batched call: [uncond | cond]
                o_u, o_c = unet_fn(torch.cat([x, x]), torch.full((2 * B,), t, device=x.device, dtype=torch.long),
                                   context).chunk(2)
                out = o_u + guidance * (o_c - o_u)
            x = self.step(out, x, ab, abn, sch.prediction_type)
        return x
