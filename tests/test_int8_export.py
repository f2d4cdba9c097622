"""Issue 11: int8 autoencoder stages for the CPU (slim_rt.export.quantize, `slim-rt export --int8`).

A tiny random TAE-kind model (the kind slim-tiny is built on) is exported with an int8 vae_decoder
calibrated on smooth random images; the int8 graph must be a real QDQ graph, recorded in the manifest
with its measured distance from fp32, keyed into the content hash, and decode a torch-encoded file
through ONNX Runtime to nearly the torch image.
"""
from __future__ import annotations

import json

import pytest
import torch
from torch.nn import functional as F

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import slim_rt  # noqa: E402
from slim_rt.captions import FixedCaptioner  # noqa: E402


def smooth_images(n: int, size: int, seed: int) -> list[torch.Tensor]:
    """Photo-like test images: low-frequency random fields upsampled, in [0,1]."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, size // 16, size // 16, generator=g)
    return list(F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1))


@pytest.fixture(scope="module")
def tae_dir(tmp_path_factory):
    from slim_rt.testing import build_tiny_random
    return build_tiny_random(tmp_path_factory.mktemp("tae8") / "model", seed=3, rates=2, autoencoder="tae")


@pytest.fixture(scope="module")
def int8_export(tae_dir, tmp_path_factory):
    from slim_rt.export import export_model
    out = tmp_path_factory.mktemp("int8") / "export"
    m = export_model(str(tae_dir), out, size=(64, 64), min_size=(64, 64), int8=("vae_decoder",),
                     calibration=smooth_images(8, 64, seed=0), progress=lambda s: None)
    return out, m


def test_int8_stage_is_quantized_and_recorded(int8_export):
    import onnx
    out, m = int8_export
    e = m.stages["vae_decoder"]
    assert e["dtype"] == "int8" and e["onnx"] == "onnx/vae_decoder.int8.onnx"
    assert not (out / "onnx" / "vae_decoder.onnx").exists()  # replaced, not left beside it
    assert not list(out.rglob("*.pre.onnx")) and not list(out.rglob("augmented_model*"))
    ops = {n.op_type for n in onnx.load(str(out / e["onnx"])).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    q = e["int8"]
    assert q["calibration_images"] == 8 and q["calibration_inputs"] + q["held_out"] == 8 * 3  # 2 rates + clean
    assert q["psnr_db"] >= 30 and q["snr_db"] > 0
    assert json.loads((out / "manifest.json").read_text())["stages"]["vae_decoder"]["int8"] == q
    assert m.stages["vae_encoder"]["dtype"] == "fp32"  # only the stages asked for


def test_int8_decoder_decodes_torch_files(int8_export, tae_dir):
    out, _ = int8_export
    enc = slim_rt.Encoder.from_pretrained(str(tae_dir), captioner=FixedCaptioner(""))
    dec_t = slim_rt.Decoder(enc.pipeline)
    dec_q = slim_rt.Decoder.from_engines(out, "ort")
    for r, img in enumerate(smooth_images(2, 64, seed=11)):  # fresh images, not the calibration ones
        data = enc.encode(img, rate=r)
        a = dec_t.decode(data, output="tensor")
        b = dec_q.decode(data, output="tensor")
        assert a.shape == b.shape
        psnr = 10 * torch.log10(1 / F.mse_loss(b, a))
        assert psnr > 28, f"rate {r}: int8 decode {psnr:.1f} dB from torch"


def test_int8_is_part_of_the_content_hash(int8_export, tae_dir, tmp_path):
    from slim_rt.export import export_model
    fp32 = export_model(str(tae_dir), tmp_path / "fp32", size=(64, 64), min_size=(64, 64),
                        stages=["vae_decoder"], progress=lambda s: None)
    assert fp32.content_hash != int8_export[1].content_hash


def test_int8_refusals(tae_dir, tmp_path, monkeypatch):
    from slim_rt.export import export_model, quantize
    from slim_rt.export.onnx_export import ExportError
    imgs = smooth_images(4, 64, seed=1)
    kw = dict(size=(64, 64), min_size=(64, 64), progress=lambda s: None)
    with pytest.raises(ValueError, match="precision fp32"):
        export_model(str(tae_dir), tmp_path / "a", precision="fp16", int8=("vae_decoder",), calibration=imgs, **kw)
    with pytest.raises(ValueError, match="not 'unet'"):
        export_model(str(tae_dir), tmp_path / "b", int8=("unet",), calibration=imgs, **kw)
    with pytest.raises(ValueError, match="calibration"):
        export_model(str(tae_dir), tmp_path / "c", int8=("vae_decoder",), **kw)
    with pytest.raises(ValueError, match="not among"):
        export_model(str(tae_dir), tmp_path / "d", stages=["vae_encoder"], int8=("vae_decoder",),
                     calibration=imgs, **kw)
    # a stage that lands too far from fp32 is an export error, and leaves no int8 file behind
    monkeypatch.setitem(quantize.INT8_MIN_DB, "vae_decoder", 500.0)
    with pytest.raises(ExportError, match="dB from fp32"):
        export_model(str(tae_dir), tmp_path / "e", stages=["vae_decoder"], int8=("vae_decoder",),
                     calibration=imgs, **kw)
    assert not list((tmp_path / "e").rglob("*.int8.onnx"))


def test_cli_int8(tae_dir, tmp_path, capsys):
    from slim_rt.cli import main
    from slim_rt.images import to_pil
    out = tmp_path / "cli"
    assert main(["export", "--model", str(tae_dir), "--out", str(out), "--stages", "vae_decoder",
                 "--int8", "vae_decoder"]) == 2
    assert "--calibration" in capsys.readouterr().err
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, im in enumerate(smooth_images(5, 80, seed=2)):
        to_pil(im).save(calib / f"{i}.png")
    (calib / "labels.csv").write_text("not an image\n")  # skipped, like the data folders' label files
    assert main(["export", "--model", str(tae_dir), "--out", str(out), "--size", "64", "64", "--stages",
                 "vae_decoder", "--int8", "vae_decoder", "--calibration", str(calib)]) == 0
    err = capsys.readouterr().err
    assert "int8" in err and "dB from fp32" in err
    m = json.loads((out / "manifest.json").read_text())
    assert m["stages"]["vae_decoder"]["int8"]["calibration_images"] == 5
    assert main(["export", "--model", str(tae_dir), "--out", str(out), "--int8", "vae_decoder",
                 "--calibration", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_latency_bench_ort_int8(int8_export, tae_dir, tmp_path, capsys):
    from slim_rt.evaluation.latency import main
    with pytest.raises(SystemExit) as e:
        main(["--model", str(tae_dir), "--backends", "ort-int8"])
    assert e.value.code == 2 and "--int8-export-dir" in capsys.readouterr().err
    assert main(["--model", str(tae_dir), "--sizes", "64", "--steps", "0", "--repeats", "2", "--warmup", "1",
                 "--backends", "torch", "ort-int8", "--int8-export-dir", str(int8_export[0]),
                 "--out", str(tmp_path)]) == 0
    res = json.loads(next(tmp_path.glob("latency-*.json")).read_text())
    row = res["backends"]["ort-int8"]["64x64/b1"]["decode_k0"]
    assert row["median_ms"] > 0 and "vae_decoder" in row["stages_ms"]
