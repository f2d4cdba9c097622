"""The enhancement sampler: schedules, the ideal DDIM path, guidance, determinism."""
import pytest
import torch

from slim_rt.config import ENHANCE_PRESETS, EnhanceConfig, SlimConfig
from slim_rt.sampler import (
    EnhanceSchedule,
    FewStepSampler,
    alphas_cumprod_from_config,
    path_point,
)

ABAR = alphas_cumprod_from_config({})  # SD 1.x / 2.x / Turbo betas


def _data(seed=0, shape=(3, 4, 5, 7)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("pred", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("k", [1, 2, 4, 7])
def test_oracle_on_the_path_is_exact_for_every_k(pred, k):
    """A UNet that returns the ideal path's target at each point takes x_hat to x in any K."""
    x, x_hat = _data(k)
    t0 = 200
    abar_t0 = float(ABAR[t0])
    eps = abar_t0 ** 0.5 * (x_hat - x) / (1 - abar_t0) ** 0.5

    def oracle(x_t, t, ctx):
        a = ABAR[t].to(x.dtype).view(-1, 1, 1, 1)
        assert torch.allclose(x_t, path_point(x, x_hat, ABAR[t], abar_t0), atol=1e-9)  # stays on the path
        return {"epsilon": eps, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * x, "sample": x}[pred]

    out = FewStepSampler(ABAR, t0, pred).run(oracle, x_hat, torch.zeros(3, 1, 1), k)
    assert torch.allclose(out, x, atol=1e-9)


def test_zero_epsilon_is_the_identity():
    """Zero-initialised enhancer output: every K returns x_hat (training starts at K = 0 quality)."""
    _, x_hat = _data(1)
    s = FewStepSampler(ABAR, 300)
    for k in (1, 2, 4):
        assert torch.allclose(s.run(lambda x, t, c: torch.zeros_like(x), x_hat, None, k), x_hat, atol=1e-12)


def test_schedules_uniform_and_explicit():
    assert EnhanceSchedule.make(ABAR, 200, 4).timesteps == (200, 150, 100, 50)
    assert EnhanceSchedule.make(ABAR, 200, 0).timesteps == ()
    sch = FewStepSampler(ABAR, 200, timesteps={"2": [250, 60]}).schedule(2)
    assert sch.timesteps == (250, 60) and sch.abar_next[-1] == 1.0 and sch.abar[1] == float(ABAR[60])
    for bad in ([60, 250], [250], [5, 0], [2000, 10]):  # ascending, too short, t=0, out of range
        with pytest.raises(ValueError):
            FewStepSampler(ABAR, 200, timesteps={"2": bad}).schedule(2)


def test_guidance_combines_cond_and_uncond_in_one_call():
    _, x_hat = _data(2, (2, 4, 3, 3))
    cond, unc = torch.ones(2, 1, 1), torch.zeros(1, 1, 1)
    calls = []

    def fn(x, t, ctx):  # epsilon = 0.1 * context value: cond 0.1, uncond 0
        calls.append(x.shape[0])
        return 0.1 * ctx.view(-1, 1, 1, 1).to(x.dtype).expand_as(x)

    s = FewStepSampler(ABAR, 200)
    g = s.run(fn, x_hat, cond, 1, guidance=3.0, uncond=unc)
    assert calls == [4]  # batched [uncond | cond]
    a = float(ABAR[200])
    assert torch.allclose(g, x_hat - (1 - a) ** 0.5 / a ** 0.5 * 0.3, atol=1e-9)  # eps_u + 3 (eps_c - eps_u)
    with pytest.raises(ValueError):
        s.run(fn, x_hat, cond, 1, guidance=2.0)


def test_enhance_config_round_trip_and_presets():
    cfg = SlimConfig(name="x", enhance=EnhanceConfig(steps=2, t0=150, timesteps={2: [150, 40]}, distilled=[1, 2]))
    back = SlimConfig.from_dict(__import__("json").loads(cfg.to_json()))
    assert back.enhance == cfg.enhance and back.enhance.timesteps == {"2": [150, 40]}
    turbo = ENHANCE_PRESETS["sd-turbo"]
    assert turbo.steps == 1 and FewStepSampler(ABAR, turbo.t0, timesteps=turbo.timesteps).schedule(1).timesteps == (499,)
    with pytest.raises(ValueError):
        EnhanceConfig(steps=2, timesteps={"2": [100]})
    with pytest.raises(ValueError):
        EnhanceConfig(steps=9)


@pytest.mark.parametrize("pred", ["epsilon", "v_prediction", "sample"])
def test_step_with_per_sample_abar_matches_scalar(pred):
    """Training takes one step per sample at different timesteps: tensor abar == scalar abar each."""
    out, x = _data(5)
    t = torch.tensor([10, 120, 200])
    got = FewStepSampler.step(out, x, ABAR[t].view(-1, 1, 1, 1), 1.0, pred)
    for i in range(3):
        ref = FewStepSampler.step(out[i:i + 1], x[i:i + 1], float(ABAR[t[i]]), 1.0, pred)
        assert torch.allclose(got[i:i + 1], ref, atol=1e-12)
