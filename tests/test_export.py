"""Issue 4: stage specs, ONNX export + ORT parity, the ORT backend, exported-dir loading, TensorRT (GPU).

The tiny random model is exported once per session (opt 128x128, min 64x64, fp32; fixtures `exported`
and `ort_decoder` in conftest.py, shared with test_determinism.py). Parity metric:
max|ort - torch| / max|torch| per output (relative to the output's scale; elementwise relative error
is meaningless near zero), tolerance 1e-4 for fp32.
"""
from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import slim_rt  # noqa: E402
from slim_rt.backends import STAGES  # noqa: E402
from slim_rt.captions import FixedCaptioner  # noqa: E402
from slim_rt.errors import ModelLoadError  # noqa: E402

TOL = 1e-4


def test_specs_single_source_of_truth(codec):
    from slim_rt.export.specs import Geometry, Profile, stage_specs
    model = codec[0].model
    geom = Geometry.from_model(model)
    specs = stage_specs(geom)
    assert set(specs) == {"vae_encoder", "vae_decoder", "text_encoder", "unet"} | {
        f"{n}/r{r}" for n in ("latent_analysis", "hyper_analysis", "hyper_synthesis", "latent_synthesis")
        for r in range(model.num_rates)}
    for key, s in specs.items():
        assert (tuple(s.input_names), tuple(s.output_names)) == STAGES[s.name]
    prof = Profile.make(geom, size=(100, 130), batch=2, min_size=(64, 64), max_size=(256, 256))
    assert prof.opt == (2, 128, 192) and prof.min == (1, 64, 64) and prof.max == (2, 256, 256)
    unet = specs["unet"].profile_shapes(prof)
    assert unet["sample"] == ((1, 4, 8, 8), (2, 4, 16, 24), (2, 4, 32, 32))
    assert unet["timestep"] == ((1,), (2,), (2,))
    assert specs["hyper_synthesis/r0"].dynamic_axes()["z_hat"] == {0: "batch", 2: "height_div64", 3: "width_div64"}
    hs = specs["hyper_synthesis/r1"]
    assert hs.output_shapes({"z_hat": (3, 16, 2, 3)}) == {"means": (3, 8, 8, 12)}
    x = specs["text_encoder"].sample_inputs(2, 64, 64)
    assert x["input_ids"].dtype == torch.int64 and x["input_ids"].shape == (2, geom.text_len)
    with pytest.raises(ValueError):
        Profile.make(geom, size=(512, 512), max_size=(256, 256))


def test_manifest(exported, codec):
    out, m = exported
    model = codec[0].model
    assert json.loads((out / "manifest.json").read_text()) == json.loads(json.dumps(m.to_dict()))
    assert m.opset == 17 and m.precision == "fp32"
    assert set(m.versions) >= {"torch", "onnx", "onnxruntime", "tensorrt"}
    assert m.versions["onnxruntime"] is not None
    assert m.fingerprint == model.fingerprint_hex
    assert len(m.content_hash) == 64
    assert set(m.stages) == set(m.specs)
    for key, st in m.stages.items():
        for rel in st["files"]:
            assert (out / rel).is_file(), rel
        for probe in ("opt", "min"):
            assert st["parity"][probe]["max_rel"] <= TOL, (key, st["parity"])
    # self-contained: config, compressors, tokenizer, scheduler
    for rel in ("slim_config.json", "compressor/rate0.safetensors", "compressor/rate1.safetensors",
                "scheduler/scheduler_config.json", "tokenizer/tokenizer_config.json"):
        assert (out / rel).is_file(), rel


def test_manifest_round_trip_and_malformed(exported, tmp_path):
    """ExportManifest reads and writes manifest.json byte for byte; a malformed one is a one-line ModelLoadError."""
    from slim_rt.export.manifest import ExportManifest, read_manifest
    src = exported[0] / "manifest.json"
    m = read_manifest(exported[0])
    m.to_json(tmp_path / "manifest.json")
    assert (tmp_path / "manifest.json").read_bytes() == src.read_bytes()
    assert not (tmp_path / "manifest.json.tmp").exists()
    assert dataclasses.replace(m, trt={"gpu": {}}).to_dict()["trt"] == {"gpu": {}}
    good = json.loads(src.read_text())
    bad = {"not json": "{", "no geometry": {k: v for k, v in good.items() if k != "geometry"},
           "bad geometry": {**good, "geometry": {"N": 1}}, "no fingerprint": {**good, "model": {}},
           "stage without onnx": {**good, "stages": {"unet": {"files": {}}}}, "list": [1],
           "other format": {**good, "format": "x/9"}}
    for why, m in bad.items():
        f = tmp_path / "bad.json"
        f.write_text(m if isinstance(m, str) else json.dumps(m))
        with pytest.raises(ModelLoadError, match=r"bad\.json: (unreadable|malformed|unsupported)") as e:
            ExportManifest.from_json(f)
        assert "\n" not in str(e.value), why


def test_ort_parity_fresh_inputs(exported, codec):
    """Every stage: ORT vs PyTorch on new random inputs at a shape outside the export profile."""
    from slim_rt.backends.ort_backend import ort_stages
    from slim_rt.backends.torch_backend import torch_stages
    from slim_rt.export.specs import Geometry, stage_specs
    model = codec[0].model
    specs = stage_specs(Geometry.from_model(model))
    ts, os_ = torch_stages(model), ort_stages(exported[0])
    for i, (key, spec) in enumerate(specs.items()):
        inp = spec.sample_inputs(2, 192, 128, seed=4242 + i)
        with torch.inference_mode():
            ref = ts[key](**inp)
        got = os_[key](**inp)
        assert set(got) == set(ref) == set(spec.output_names)
        for n in ref:
            assert got[n].shape == ref[n].shape, key
            err = (got[n] - ref[n]).abs().max() / ref[n].abs().max().clamp_min(1e-12)
            assert err <= TOL, (key, float(err))


def _decoded_symbols(pipeline, data: bytes) -> torch.Tensor:
    """The y symbols a pipeline decodes from a bitstream (y_hat - means)."""
    bs = pipeline.parse(data)
    m = pipeline.model.pixel_multiple
    comp = pipeline.model.compressors[bs.header.rate]
    seen = {}

    def mean_fn(z_hat):
        seen["means"] = pipeline._run("hyper_synthesis", bs.header.rate, z_hat=z_hat).float()
        return seen["means"]
    z_shape = (-(-bs.header.height // m), -(-bs.header.width // m))
    y_hat = comp.decompress_with([[bs.z], [bs.y]], z_shape, mean_fn)
    return torch.round(y_hat - seen["means"]).to(torch.int64)


def test_torch_bitstream_decodes_with_ort(exported, codec, ort_decoder):
    enc, dec = codec
    assert ort_decoder.model.fingerprint == enc.model.fingerprint
    img = torch.rand(3, 96, 80, generator=torch.Generator().manual_seed(3))  # padded to 128x128: not a profile size
    for rate in (0, 1):
        data = enc.encode(img, rate=rate)
        assert torch.equal(_decoded_symbols(dec.pipeline, data), _decoded_symbols(ort_decoder.pipeline, data))
        a = dec.decode(data, output="tensor")
        b = ort_decoder.decode(data, output="tensor")
        assert a.shape == b.shape == (3, 96, 80)
        assert (a - b).abs().max() < 1e-3
    assert set(ort_decoder.timings) >= {"entropy_decode", "latent_synthesis", "unet", "vae_decoder"}


@pytest.mark.parametrize("k", [0, 2, 4])
def test_k_from_the_bitstream_on_ort(exported, codec, ort_decoder, k):
    """The encoder's suggested K travels in the bitstream; the exported UNet graph takes the timestep,
    so the same file decodes with K steps on ORT as on torch (and a decoder override still works)."""
    from slim_rt.api import Encoder
    enc, dec = codec
    enc_k = Encoder(enc.pipeline, captioner=FixedCaptioner("a photo of a dog"), steps=k)
    data = enc_k.encode(torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(k)), rate=1)
    assert slim_rt.inspect(data)["steps"] == k
    a, b = dec.decode(data, output="tensor"), ort_decoder.decode(data, output="tensor")
    assert (a - b).abs().max() < 1e-3
    calls = []
    orig = ort_decoder.pipeline.stages["unet"]
    ort_decoder.pipeline.stages["unet"] = lambda **kw: calls.append(kw["timestep"].tolist()) or orig(**kw)
    try:
        ort_decoder.decode(data, output="tensor")
        assert calls == [[t] for t in ort_decoder.pipeline.sampler.schedule(k).timesteps]
        calls.clear()
        ort_decoder.decode(data, steps=1, output="tensor")  # the decoder may override K
        assert len(calls) == 1
    finally:
        ort_decoder.pipeline.stages["unet"] = orig
    sched = json.loads((exported[0] / "manifest.json").read_text())["enhance"]
    if k:
        assert sched["schedules"][str(k)]["timesteps"] == list(ort_decoder.pipeline.sampler.schedule(k).timesteps)


def test_ort_encoder_and_overrides(exported, codec):
    enc, dec = codec
    out = exported[0]
    eo = slim_rt.Encoder.from_engines(out, "ort", captioner=FixedCaptioner("a photo of a cat"))
    img = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(5))
    data = eo.encode(img)
    assert slim_rt.inspect(data)["fingerprint"] == enc.model.fingerprint.hex()
    ref = dec.decode(enc.encode(img), output="tensor")
    assert (dec.decode(data, output="tensor") - ref).abs().max() < 1e-3  # ORT-encoded, torch-decoded
    d2 = slim_rt.Decoder.from_engines(out, "ort", overrides={"hyper_synthesis/r0": "torch"},
                                      stages={"vae_decoder": dec.pipeline.stages["vae_decoder"]})
    assert type(d2.pipeline.stages["hyper_synthesis/r0"]).__name__ == "FnStage"
    assert d2.pipeline.stages["vae_decoder"] is dec.pipeline.stages["vae_decoder"]
    assert (d2.decode(data, output="tensor") - dec.decode(data, output="tensor")).abs().max() < 1e-3
    with pytest.raises(ValueError, match="no PyTorch base weights"):
        slim_rt.Decoder.from_engines(out, "ort", overrides={"unet": "torch"})
    with pytest.raises(ValueError):
        slim_rt.Decoder.from_engines(out, "onnx")


def test_export_dir_alone_is_enough(exported, codec, tmp_path):
    """A copy of the export dir (nowhere near the model dir) decodes the model's bitstreams."""
    dst = tmp_path / "moved"
    shutil.copytree(exported[0], dst)
    enc, dec = codec
    data = enc.encode(torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(9)))
    d = slim_rt.Decoder.from_engines(dst, "ort")
    assert (d.decode(data, output="tensor") - dec.decode(data, output="tensor")).abs().max() < 1e-3


def test_content_hash_changes_with_weights(tiny_dir):
    from slim_rt.export.onnx_export import content_hash
    from slim_rt.export.specs import Geometry, stage_specs
    from slim_rt.models.slim import SlimModel
    model = SlimModel.from_pretrained(tiny_dir)
    specs = stage_specs(Geometry.from_model(model))
    flags = {"precision": "fp32", "opset": 17}
    h0 = content_hash(model, specs, flags)
    assert content_hash(model, specs, flags) == h0
    assert content_hash(model, specs, {**flags, "precision": "fp16"}) != h0
    with torch.no_grad():
        next(model.base.vae.parameters()).view(-1)[0] += 1e-3
    h1 = content_hash(model, specs, flags)
    assert h1 != h0
    with torch.no_grad():
        model.compressors[1].g_s[0].weight.view(-1)[0] += 1e-3
    assert content_hash(model, specs, flags) not in (h0, h1)


def test_missing_or_corrupt_files(exported, codec, tmp_path):
    src = exported[0]

    def fresh(name):
        d = tmp_path / name
        shutil.copytree(src, d)
        return d
    d = fresh("missing")
    (d / "onnx" / "unet.onnx").unlink()
    with pytest.raises(ModelLoadError, match="'unet'.*missing"):
        slim_rt.Decoder.from_engines(d, "ort")
    d = fresh("corrupt")
    f = d / "onnx" / "vae_decoder.onnx"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="'vae_decoder'.*corrupt"):
        slim_rt.Decoder.from_engines(d, "ort")
    with pytest.raises(ModelLoadError, match="vae_decoder"):  # unverified: ORT itself refuses it
        slim_rt.Decoder.from_engines(d, "ort", verify=False)
    d = fresh("nomanifest")
    (d / "manifest.json").unlink()
    with pytest.raises(ModelLoadError, match="manifest"):
        slim_rt.Decoder.from_engines(d, "ort")
    d = fresh("tampered")
    comp = d / "compressor" / "rate0.safetensors"
    shutil.copyfile(exported[0] / "compressor" / "rate1.safetensors", comp)
    with pytest.raises(ModelLoadError, match="fingerprint"):
        slim_rt.Decoder.from_engines(d, "ort")
    with pytest.raises(ModelLoadError):
        slim_rt.Decoder.from_engines(tmp_path / "nowhere", "ort")


def test_cli_export_partial_and_errors(tiny_dir, tmp_path, capsys):
    from slim_rt.cli import main
    out = tmp_path / "cli-export"
    assert main(["export", "--model", str(tiny_dir), "--out", str(out), "--size", "64", "64",
                 "--stages", "hyper_synthesis/r0", "latent_synthesis/r0"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert set(m["stages"]) == {"hyper_synthesis/r0", "latent_synthesis/r0"}
    err = capsys.readouterr().err
    assert "hyper_synthesis/r0" in err and "ok" in err
    assert main(["export", "--model", str(tiny_dir), "--out", str(out), "--stages", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["export", "--model", str(tmp_path / "none"), "--out", str(out)]) == 2
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert main(["export", "--model", str(tiny_dir), "--out", str(out), "--trt"]) == 2
        assert "tensorrt" in capsys.readouterr().err.lower()


def test_export_failure_names_stage(codec, tmp_path, monkeypatch):
    from slim_rt.export import onnx_export
    real = onnx_export.stage_modules

    class Bad(torch.nn.Module):
        def forward(self, z_hat):
            return torch.zeros(1) if not torch.jit.is_tracing() else z_hat.sum(1)  # wrong shape once traced

    def patched(model):
        mods = real(model)
        mods["hyper_synthesis/r1"] = Bad()
        return mods
    monkeypatch.setattr(onnx_export, "stage_modules", patched)
    with pytest.raises(onnx_export.ExportError, match="hyper_synthesis/r1"):
        onnx_export.export_model(codec[0].model, tmp_path / "bad", size=(64, 64),
                                 stages=["hyper_synthesis/r1"], progress=lambda s: None)


# -- TensorRT (GPU only) ------------------------------------------------------------------------
def _need_trt():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    pytest.importorskip("tensorrt", reason="tensorrt is not installed")


@pytest.mark.gpu
def test_trt_engines_build_and_decode(exported, codec, tmp_path):
    _need_trt()
    from slim_rt.engines import build_engines
    d = tmp_path / "trt"
    shutil.copytree(exported[0], d)
    built = build_engines(d, timing_cache=str(tmp_path / "timing.cache"))
    assert built and all(p.is_file() for p in built.values())
    enc, dec = codec
    data = enc.encode(torch.rand(3, 128, 128))
    t = slim_rt.Decoder.from_engines(d, "trt", device="cuda")
    assert torch.equal(_decoded_symbols(dec.pipeline, data), _decoded_symbols(t.pipeline, data).cpu())
    assert (t.decode(data, output="tensor") - dec.decode(data, output="tensor")).abs().max() < 1e-2


@pytest.mark.gpu
def test_trt_refuses_stale_engine(exported, tmp_path):
    _need_trt()
    from slim_rt.engines import EngineMismatchError, build_engines, trt_stages
    from slim_rt.export.manifest import read_manifest
    d = tmp_path / "trt"
    shutil.copytree(exported[0], d)
    build_engines(d, stages=["hyper_synthesis/r0"])
    m = dataclasses.replace(read_manifest(d), content_hash="0" * 64)
    with pytest.raises(EngineMismatchError):
        trt_stages(d, m, "cuda", ["hyper_synthesis/r0"], rebuild=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
def test_trt_without_gpu_is_a_value_error_like_the_api():
    from slim_rt.api import _device
    from slim_rt.engines.builder import gpu_name
    with pytest.raises(ValueError, match="no CUDA GPU"):
        _device("cuda")
    with pytest.raises(ValueError, match="need a CUDA GPU"):
        gpu_name()
