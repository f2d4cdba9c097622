import json

import pytest
import torch

import slim_rt
from slim_rt.errors import ModelLoadError
from slim_rt.models.base import load_base
from slim_rt.models.slim import SlimModel


def test_load_base_local_and_scaling(tiny_dir):
    base = load_base(tiny_dir)
    assert base.scaling_factor == 0.5
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        lat = base.encode_latent(x)
        raw = base.vae.encode(x).latent_dist.mode()
    assert lat.shape == (1, 4, 8, 8)
    assert torch.allclose(lat, raw * 0.5)
    assert all(not p.requires_grad for p in base.vae.parameters())


def test_missing_and_offline_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="no SLIM model directory"):
        SlimModel.from_pretrained(tmp_path / "nope")
    with pytest.raises(ModelLoadError, match="not a SLIM model directory"):
        SlimModel.from_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="hub id"):
        load_base("nobody-here/not-a-model", local_files_only=True)
    with pytest.raises(ModelLoadError):
        load_base(tmp_path)  # a directory without vae/


def test_base_override_and_fingerprint_changes(tiny_dir, foreign_dir, tmp_path):
    from slim_rt.testing import build_tiny_base
    a = SlimModel.from_pretrained(tiny_dir)
    b = SlimModel.from_pretrained(tiny_dir, base=str(foreign_dir))
    # the override really loads the other base's weights
    assert not torch.equal(next(a.base.vae.parameters()), next(b.base.vae.parameters()))
    # same architecture: the fingerprint covers the base's configs, not its weights (the entropy path
    # never reads the base), so it is unchanged ...
    assert a.base.configs() == b.base.configs() and a.fingerprint == b.fingerprint
    # ... and a base of another architecture changes it
    c = SlimModel.from_pretrained(tiny_dir, base=str(build_tiny_base(tmp_path / "base", seed=1, text_dim=48)))
    assert c.base.configs() != a.base.configs() and c.fingerprint != a.fingerprint
    assert a.fingerprint == SlimModel.from_pretrained(tiny_dir).fingerprint


def test_fingerprint_does_not_depend_on_location(tiny_dir, tmp_path):
    """The same model copied elsewhere (another install, another folder) decodes the same files."""
    import shutil
    moved = shutil.copytree(tiny_dir, tmp_path / "elsewhere" / "model")
    a, b = SlimModel.from_pretrained(tiny_dir), SlimModel.from_pretrained(moved)
    assert a.fingerprint_hex == b.fingerprint_hex
    assert "_name_or_path" not in json.dumps(a.base.configs())


def test_slim_tiny_bundled_loads():
    from slim_rt.models.slim import bundled_dir
    if bundled_dir("slim-tiny") is None:
        pytest.skip("slim-tiny is not bundled in this build")
    enc = slim_rt.Encoder.from_pretrained("slim-tiny")
    assert enc.model.num_rates >= 3 and enc.model.config.name == "slim-tiny"


def test_unbundled_name_is_a_clear_error(monkeypatch):
    from slim_rt.models import registry
    monkeypatch.setattr(registry, "bundled_dir", lambda name: None)
    with pytest.raises(ModelLoadError, match="not bundled"):
        SlimModel.from_pretrained("slim-tiny")
    from slim_rt import testing
    monkeypatch.setattr(testing, "tiny_random_cache_dir", lambda: "/cache/tiny-random")
    notes = []
    assert registry.default_model(notes.append) == "/cache/tiny-random" and "not bundled" in notes[0]


def test_registry_names_models_in_one_place(tmp_path):
    """Every name lookup goes through models.registry; an unknown name lists the known ones."""
    from slim_rt.models import registry
    assert registry.DEFAULT_MODEL in registry.names() and registry.MODELS[registry.DEFAULT_MODEL].description
    with pytest.raises(ModelLoadError, match="unknown model name 'slim-huge' \\(known: slim-tiny"):
        registry.bundled_dir("slim-huge")
    with pytest.raises(ModelLoadError, match="no SLIM model directory at 'slim-huge'.*model name: slim-tiny"):
        SlimModel.from_pretrained("slim-huge")
    if registry.bundled_dir("slim-tiny") is not None:
        assert registry.resolve("slim-tiny") == registry.bundled_dir("slim-tiny")
        assert registry.default_model() == "slim-tiny"


def _codec_outputs(model_dir, image):
    from slim_rt.captions import FixedCaptioner
    enc = slim_rt.Encoder.from_pretrained(str(model_dir), captioner=FixedCaptioner("a photo of a cat"))
    dec = slim_rt.Decoder(enc.pipeline)
    data = [enc.encode(image, rate=r) for r in range(enc.model.num_rates)]
    return enc.model, data, [dec.decode(d, steps=k, output="tensor") for d in data[:1] for k in (0, 1)]


def test_save_pretrained_round_trip(tiny_dir, tmp_path):
    """save_pretrained then from_pretrained: the same fingerprint, the same files coded, bit-identical
    decodes (K=0 and K=1: VAE, compressors, UNet and text encoder all come back)."""
    image = torch.rand(3, 64, 96, generator=torch.Generator().manual_seed(5))
    model = SlimModel.from_pretrained(tiny_dir)
    out = model.save_pretrained(tmp_path / "copy")
    assert json.loads((out / "slim_config.json").read_text())["base"] == "."
    m0, data0, rec0 = _codec_outputs(tiny_dir, image)
    m1, data1, rec1 = _codec_outputs(out, image)
    assert m1.fingerprint_hex == m0.fingerprint_hex == model.fingerprint_hex
    assert data1 == data0
    assert all(torch.equal(a, b) for a, b in zip(rec0, rec1))

    # the base in a subfolder, another config, the UNet written in fp16 (the model itself unchanged)
    import dataclasses
    cfg = dataclasses.replace(model.config, name="renamed")
    sub = model.save_pretrained(tmp_path / "sub", config=cfg, base_dir="base", unet_dtype=torch.float16)
    assert next(model.base.unet.parameters()).dtype == torch.float32
    assert (sub / "base" / "unet").is_dir() and not (sub / "unet").exists()
    assert json.loads((sub / "base" / "unet" / "config.json").read_text()).get("torch_dtype", "float16") == "float16"
    m2 = SlimModel.from_pretrained(sub)
    assert m2.config.name == "renamed" and m2.config.base == "base" and m2.fingerprint_hex != model.fingerprint_hex
    assert m2.base.configs() == model.base.configs()
    w0 = dict(model.base.unet.named_parameters())
    assert all(torch.equal(p, w0[n].half().float()) for n, p in m2.base.unet.named_parameters())


def test_package_slim_tiny_reproduces_it(tmp_path):
    """training.package (save_pretrained, UNet in fp16) applied to the bundled slim-tiny gives slim-tiny back:
    the same fingerprint and the same decodes."""
    from slim_rt.models.slim import bundled_dir
    from slim_rt.training.package import package
    if bundled_dir("slim-tiny") is None:
        pytest.skip("slim-tiny is not bundled in this build")
    out = package("slim-tiny", tmp_path / "slim-tiny", "slim-tiny")
    assert {p.name for p in out.iterdir()} == {p.name for p in bundled_dir("slim-tiny").iterdir()} - {"README.md"}
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(6))
    m0, data0, rec0 = _codec_outputs(bundled_dir("slim-tiny"), image)
    m1, data1, rec1 = _codec_outputs(out, image)
    assert m1.fingerprint_hex == m0.fingerprint_hex == "69b90b20017d96150a342d6b94b85e5dad6b5dea43a45c0e21f28d0189be8aee"
    assert data1 == data0 and all(torch.equal(a, b) for a, b in zip(rec0, rec1))


def test_save_pretrained_refuses_a_partial_base(tiny_dir, tmp_path):
    """A model loaded without its UNet would be saved without it: refused with one line."""
    m = SlimModel.from_pretrained(tiny_dir, need_unet=False)
    with pytest.raises(ValueError, match="without its UNet"):
        m.save_pretrained(tmp_path / "out")


def test_slim_tiny_v1_files_are_refused():
    """slim-tiny v2 replaced v1 (fingerprint 6f88979e...): a v1 file is another model's, never misread."""
    import slim_rt.bitstream as bsf
    from slim_rt.errors import ModelMismatchError
    from slim_rt.models.slim import bundled_dir
    if bundled_dir("slim-tiny") is None:
        pytest.skip("slim-tiny is not bundled in this build")
    from slim_rt.captions import FixedCaptioner
    enc = slim_rt.Encoder.from_pretrained("slim-tiny", captioner=FixedCaptioner("a photo of a cat"))
    dec = slim_rt.Decoder(enc.pipeline)
    bs = bsf.parse(enc.encode(torch.rand(3, 64, 64), rate=0))
    v1 = bsf.pack(bsf.Bitstream(bsf.Header(64, 64, 0, 0, bs.header.caption, bytes.fromhex("6f88979e")), bs.z, bs.y))
    with pytest.raises(ModelMismatchError, match="6f88979e"):
        dec.decode(v1)
