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


def test_base_override_and_fingerprint_changes(tiny_dir, foreign_dir):
    a = SlimModel.from_pretrained(tiny_dir)
    b = SlimModel.from_pretrained(tiny_dir, base=str(foreign_dir))
    assert a.fingerprint != b.fingerprint or a.base.configs() == b.base.configs()
    assert a.fingerprint == SlimModel.from_pretrained(tiny_dir).fingerprint


def test_fingerprint_does_not_depend_on_location(tiny_dir, tmp_path):
    """The same model copied elsewhere (another install, another folder) decodes the same files."""
    import shutil
    moved = shutil.copytree(tiny_dir, tmp_path / "elsewhere" / "model")
    a, b = SlimModel.from_pretrained(tiny_dir), SlimModel.from_pretrained(moved)
    assert a.fingerprint_hex == b.fingerprint_hex
    assert "_name_or_path" not in json.dumps(a.base.configs())


def test_slim_tiny_or_clear_error():
    try:
        enc = slim_rt.Encoder.from_pretrained("slim-tiny")
    except ModelLoadError as e:
        assert "not bundled" in str(e)
    else:
        assert enc.model.num_rates >= 3
