"""One stage map (slim_rt.backends.stage_networks) for the torch and compiled backends and the ONNX
export, and one tensor hash (slim_rt.models.slim.hash_tensors) for the fingerprint and the export's
content hash: both pinned to the values written before they were shared."""
import pytest
import torch

from slim_rt.backends import COMPRESSOR_NETS, PER_RATE, STAGES, stage_networks

SLIM_TINY_FINGERPRINT = "69b90b20017d96150a342d6b94b85e5dad6b5dea43a45c0e21f28d0189be8aee"
SLIM_TINY_CONTENT_HASH = "30068f9ed7bbd91bd6367e70c42741f52c7af9ac10cfd4e16b1fe5e3bc8d3d00"  # flags {"precision": "fp32"}


@pytest.fixture(scope="module")
def slim_tiny():
    from slim_rt.models.slim import SlimModel, bundled_dir
    if bundled_dir("slim-tiny") is None:
        pytest.skip("slim-tiny is not bundled in this build")
    return SlimModel.from_pretrained("slim-tiny")


def test_slim_tiny_fingerprint_and_content_hash_unchanged(slim_tiny):
    pytest.importorskip("onnx")
    from slim_rt.export.onnx_export import content_hash
    from slim_rt.export.specs import Geometry, stage_specs
    assert slim_tiny.fingerprint_hex == SLIM_TINY_FINGERPRINT
    specs = stage_specs(Geometry.from_model(slim_tiny))
    assert content_hash(slim_tiny, specs, {"precision": "fp32"}) == SLIM_TINY_CONTENT_HASH
    assert content_hash(slim_tiny, specs, {"precision": "fp16"}) != SLIM_TINY_CONTENT_HASH


def test_hash_tensors_covers_names_dtypes_and_values():
    import hashlib

    from slim_rt.models.slim import hash_tensors

    def hexof(d):
        h = hashlib.sha256()
        hash_tensors(h, d)
        return h.hexdigest()
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    base = hexof({"a": t, "b": t + 1})
    assert base == hexof({"b": t + 1, "a": t})  # key order
    assert base == hexof({"a": t.t().contiguous().t(), "b": t + 1})  # memory layout
    assert base != hexof({"a": t, "c": t + 1})
    assert base != hexof({"a": t.reshape(3, 2), "b": t + 1})
    assert base != hexof({"a": t.double(), "b": t + 1})
    assert hexof({"a": t.bfloat16()}) != hexof({"a": t})  # dtype is hashed, bf16 values as float32


def test_one_stage_map_for_every_backend_and_the_export(codec):
    pytest.importorskip("onnx")
    from slim_rt.backends.torch_backend import torch_stages
    from slim_rt.export.onnx_export import stage_modules
    from slim_rt.export.specs import Geometry, stage_specs
    model = codec[0].model
    nets = stage_networks(model)
    assert tuple(COMPRESSOR_NETS) == PER_RATE
    assert set(nets) == set(torch_stages(model)) == set(stage_modules(model)) \
        == set(stage_specs(Geometry.from_model(model)))
    for i, comp in enumerate(model.compressors):
        for name, attr in COMPRESSOR_NETS.items():
            assert nets[f"{name}/r{i}"] is getattr(comp, attr)
    # the ONNX export traces the very function the torch backend runs: same UNet output
    spec = stage_specs(Geometry.from_model(model))["unet"]
    inp = spec.sample_inputs(1, 64, 64, seed=3)
    args = [inp[n] for n in STAGES["unet"][0]]
    with torch.inference_mode():
        ref = torch_stages(model)["unet"](**inp)["model_out"]
        assert torch.equal(stage_modules(model)["unet"](*args), ref)
        assert torch.equal(model.base.unet(*args[:2], encoder_hidden_states=args[2]).sample, ref)
