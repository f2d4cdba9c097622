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
    from slim_rt.models import slim
    monkeypatch.setattr(slim, "bundled_dir", lambda name: None)
    with pytest.raises(ModelLoadError, match="not bundled"):
        slim.resolve("slim-tiny")
