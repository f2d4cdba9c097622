"""Enhancement on a real-SD-style base: the SD-Turbo one-step preset with tiny random components."""
import json

import torch

import slim_rt
from slim_rt.captions import FixedCaptioner
from slim_rt.config import ENHANCE_PRESETS
from slim_rt.testing import build_tiny_random


def test_sd_turbo_preset_one_step(tmp_path):
    d = build_tiny_random(tmp_path / "turbo", enhance=ENHANCE_PRESETS["sd-turbo"], flavor="sd-turbo")
    sched = json.loads((d / "scheduler" / "scheduler_config.json").read_text())
    assert sched["_class_name"] == "EulerDiscreteScheduler" and sched["timestep_spacing"] == "trailing"
    enc = slim_rt.Encoder.from_pretrained(str(d), captioner=FixedCaptioner("a photo of a goldfish"))
    data = enc.encode(torch.rand(3, 64, 96, generator=torch.Generator().manual_seed(0)), rate=1)
    assert slim_rt.inspect(data)["steps"] == 1  # the preset's K is the encoder's suggestion
    dec = slim_rt.Decoder(enc.pipeline)
    calls = []
    unet = dec.pipeline.stages["unet"]
    dec.pipeline.stages["unet"] = lambda **kw: calls.append(kw["timestep"].tolist()) or unet(**kw)
    a = dec.decode(data, output="tensor")
    assert calls == [[499]]  # one UNet call at t = 499, no guidance
    assert torch.equal(a, dec.decode(data, output="tensor"))  # no unseeded noise
    assert not torch.equal(a, dec.decode(data, steps=0, output="tensor"))


def test_teacher_decode_with_guidance(codec):
    """A decoder may run a many-step guided schedule (the teacher) on any bitstream."""
    enc, dec = codec
    data = enc.encode(torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(1)), rate=0)
    calls = []
    unet = dec.pipeline.stages["unet"]
    dec.pipeline.stages["unet"] = lambda **kw: calls.append(kw["sample"].shape[0]) or unet(**kw)
    try:
        g = dec.decode(data, steps=20, guidance=2.0, output="tensor")
        assert calls == [2] * 20  # [uncond | cond] in one call per step
        calls.clear()
        plain = dec.decode(data, steps=20, output="tensor")
        assert calls == [1] * 20 and not torch.equal(g, plain)
    finally:
        dec.pipeline.stages["unet"] = unet
    for bad in ({"steps": 101}, {"guidance": float("nan")}, {"guidance": -1.0}):
        try:
            dec.decode(data, **bad)
        except ValueError:
            pass
        else:
            raise AssertionError(f"{bad} accepted")
