"""The pluggable autoencoder of a SLIM base: diffusers AutoencoderKL / AutoencoderTiny and our TAE."""
from pathlib import Path

import pytest
import torch

import slim_rt
from slim_rt.captions import FixedCaptioner
from slim_rt.errors import ModelLoadError
from slim_rt.models.base import autoencoder_kind, load_base
from slim_rt.models.slim import SlimModel
from slim_rt.models.tae import TAE

TAEF2 = Path(__file__).resolve().parents[2] / "shared" / "models" / "taef2"
KODAK = Path(__file__).resolve().parents[2] / "shared" / "data" / "kodak"


@pytest.fixture(scope="module", params=["tiny", "tae"])
def ae_dir(request, tmp_path_factory):
    from slim_rt.testing import build_tiny_random
    return build_tiny_random(tmp_path_factory.mktemp(request.param) / "model", seed=3, autoencoder=request.param)


def test_kind_is_read_and_round_trip_decodes(ae_dir):
    kind = autoencoder_kind(ae_dir)
    assert SlimModel.from_pretrained(ae_dir).config.autoencoder == kind
    base = load_base(ae_dir)
    x = torch.rand(2, 3, 64, 128) * 2 - 1
    with torch.no_grad():
        lat = base.encode_latent(x)
        img = base.decode_latent(lat)
    assert lat.shape == (2, 4, 8, 16) and img.shape == x.shape and base.vae_factor == 8
    enc = slim_rt.Encoder.from_pretrained(str(ae_dir), captioner=FixedCaptioner("a cat"))
    dec = slim_rt.Decoder(enc.pipeline)
    data = enc.encode(torch.rand(3, 70, 90))
    a, b = dec.decode(data, output="tensor"), dec.decode(data, output="tensor")
    assert a.shape == (3, 70, 90) and torch.equal(a, b)


def test_config_kind_must_match_the_vae_folder(ae_dir, tmp_path):
    import json
    import shutil
    d = shutil.copytree(ae_dir, tmp_path / "m")
    cfg = json.loads((d / "slim_config.json").read_text())
    cfg["autoencoder"] = "kl"
    (d / "slim_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="autoencoder 'kl'"):
        SlimModel.from_pretrained(d)
    cfg["autoencoder"] = "vq"
    (d / "slim_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="unknown autoencoder kind"):
        SlimModel.from_pretrained(d)


def test_default_kind_keeps_old_fingerprints():
    """A KL model's config JSON omits the new field, so models written before it keep their fingerprint."""
    from slim_rt.config import SlimConfig
    assert "autoencoder" not in SlimConfig(name="x").to_json()
    assert '"autoencoder": "tae"' in SlimConfig(name="x", autoencoder="tae").to_json()


def test_tae_pool_branch_and_upstream_keys():
    torch.manual_seed(0)
    tae = TAE(latent_channels=4, channels=8).eval()
    enc_sd, dec_sd = tae.encoder.state_dict(), tae.decoder.state_dict()
    assert {k for k in enc_sd if ".pool." in k} == {f"{i}.pool.{j}.{p}" for i in (11, 12, 13) for j, p in
                                                     ((0, "weight"), (1, "weight"), (1, "bias"), (3, "weight"))}
    assert "14.weight" in enc_sd and "19.weight" in dec_sd and "1.weight" in dec_sd
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    block = tae.encoder[11]
    h = torch.randn(1, 8, 8, 8)
    with torch.no_grad():  # Block = ReLU(conv(x') + x'), x' = x + pool(x)
        h2 = h + block.pool(h)
        assert torch.allclose(block(h), torch.relu(block.conv(h2) + h2))
        assert tae(x).shape == x.shape


@pytest.mark.skipif(not (TAEF2 / "taef2_encoder.pth").is_file() or not KODAK.is_dir(),
                    reason="TAEF2 weights or Kodak not in ../shared")
def test_taef2_weights_reconstruct_a_photo(tmp_path):
    from PIL import Image
    from slim_rt.models.tae import convert
    convert(str(TAEF2), str(tmp_path / "vae"))
    assert (tmp_path / "vae" / "LICENSE").is_file()
    tae = TAE.from_pretrained(tmp_path / "vae", torch_dtype=torch.float32).eval()
    img = Image.open(KODAK / "kodim23.png").convert("RGB").crop((256, 128, 512, 384))
    x = torch.from_numpy(__import__("numpy").asarray(img).copy()).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        z = tae.encode(x * 2 - 1).latents
        rec = ((tae.decode(z).sample + 1) / 2).clamp(0, 1)
    psnr = -10 * torch.log10((rec - x).pow(2).mean())
    assert z.shape == (1, 32, 32, 32) and psnr > 25, float(psnr)


def test_tae_model_exports_to_onnx_with_parity(tmp_path):
    """The TAE base goes through `slim-rt export` and the ORT backend decodes torch's files alike."""
    pytest.importorskip("onnxruntime")
    from slim_rt.export import export_model
    from slim_rt.testing import build_tiny_random
    d = build_tiny_random(tmp_path / "tae", seed=4, autoencoder="tae")
    out = tmp_path / "onnx"
    export_model(str(d), out, precision="fp32", size=(64, 64), min_size=(64, 64), progress=lambda s: None)
    enc = slim_rt.Encoder.from_pretrained(str(d), captioner=FixedCaptioner("a dog"))
    data = enc.encode(torch.rand(3, 64, 96))
    ref = slim_rt.Decoder(enc.pipeline).decode(data, output="tensor")
    got = slim_rt.Decoder.from_engines(out, "ort").decode(data, output="tensor")
    assert got.shape == ref.shape and (got - ref).abs().max() < 2e-3


def test_scaled_rate_points_code_a_smaller_image(tmp_path):
    """A rate point with scale s codes the image resized by s and decodes back to the declared size;
    fewer bytes than the same compressor at full resolution, and the same decode every time."""
    import dataclasses
    import shutil

    from slim_rt.config import SlimConfig, coded_size
    from slim_rt.testing import build_tiny_random
    full = build_tiny_random(tmp_path / "full", seed=5, rates=2)
    half = shutil.copytree(full, tmp_path / "half")
    cfg = SlimConfig.load(half)
    dataclasses.replace(cfg, scales=(0.5, 1.0)).save(half)
    assert SlimConfig.load(half).scales == (0.5, 1.0) and "scales" not in cfg.to_json()
    with pytest.raises(ValueError, match="scales"):
        dataclasses.replace(cfg, scales=(0.5,))
    assert coded_size(100, 130, 0.5) == (50, 65) and coded_size(3, 3, 0.25) == (1, 1)
    img = torch.rand(3, 128, 192)
    sizes = {}
    for d in (full, half):
        enc = slim_rt.Encoder.from_pretrained(str(d), captioner=FixedCaptioner(""), steps=0)
        dec = slim_rt.Decoder(enc.pipeline)
        data = enc.encode(img, rate=0)
        a, b = dec.decode(data, output="tensor"), dec.decode(data, output="tensor")
        assert a.shape == (3, 128, 192) and torch.equal(a, b)
        assert slim_rt.inspect(data)["width"] == 192
        sizes[d.name] = len(data)
    assert sizes["half"] < sizes["full"]


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_half_precision_exports_check_parity(tmp_path, precision):
    """fp16/bf16 exports: the parity check feeds the right tensors (bf16 as uint16 bits, same shape)."""
    pytest.importorskip("onnxruntime")
    from slim_rt.export import export_model
    from slim_rt.export.onnx_export import ExportError, ort_run, ort_session
    from slim_rt.testing import build_tiny_random
    d = build_tiny_random(tmp_path / "m", seed=6, rates=1)
    try:
        m = export_model(str(d), tmp_path / "onnx", precision=precision, size=(64, 64), min_size=(64, 64),
                         stages=["vae_decoder"], progress=lambda s: None)
    except ExportError as e:
        if any(m in str(e) for m in ("NOT_IMPLEMENTED", "Could not find an implementation", "INVALID_GRAPH")):
            pytest.skip(f"ONNX Runtime (CPU) cannot run {precision} here: {e}")
        raise
    entry = m.stages["vae_decoder"]
    assert entry["dtype"] == precision and entry["parity"]["tolerance"] > 0
    sess = ort_session(tmp_path / "onnx" / entry["onnx"])
    dt = torch.float16 if precision == "fp16" else torch.bfloat16
    out = next(iter(ort_run(sess, {"latent": torch.randn(1, 4, 8, 8).to(dt)}).values()))
    assert out.shape == (1, 3, 64, 64)


def test_ort_run_feeds_bf16_bits_with_their_shape(tmp_path):
    """The export parity check's bf16 feed: the tensor's bits as uint16, shape unchanged (it used to view
    float32 bytes as uint16, doubling the last dimension). A Cast graph runs on ORT's CPU provider."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    from slim_rt.export.onnx_export import ort_run, ort_session
    g = helper.make_graph([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [2, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "cast.onnx")
    x = torch.randn(2, 3).to(torch.bfloat16)
    out = ort_run(ort_session(tmp_path / "cast.onnx"), {"x": x})
    assert torch.equal(out["y"], x.float())
