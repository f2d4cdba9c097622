"""The compiled backend on the CPU (inductor, no graphs) and context tables in place of a text encoder."""
from __future__ import annotations

import pytest
import torch

import slim_rt
from slim_rt.backends import own_code
from slim_rt.backends.compiled_backend import CompileOptions, CompiledStage
from slim_rt.captions import FixedCaptioner
from slim_rt.errors import ModelLoadError


def test_stage_functions_get_own_code_objects():
    f = lambda x: x + 1  # noqa: E731
    a, b = own_code(f, "latent_analysis/r0"), own_code(f, "latent_analysis/r1")
    assert a.__code__ is not b.__code__ and a(torch.ones(1)).item() == 2.0


def test_compiled_backend_cpu_matches_eager(tiny_dir):
    cap = FixedCaptioner("a photo of a cat")
    eager = slim_rt.Encoder.from_pretrained(str(tiny_dir), captioner=cap)
    comp = slim_rt.Encoder.from_pretrained(str(tiny_dir), captioner=cap, backend="compiled", rate=1)
    assert all(isinstance(s, CompiledStage) for k, s in comp.pipeline.stages.items() if k != "text_encoder")
    ed, cd = slim_rt.Decoder(eager.pipeline), slim_rt.Decoder(comp.pipeline)
    gen = torch.Generator().manual_seed(3)
    for size in ((64, 96), (128, 64)):  # a second shape: dynamo recompiles once, the result stays right
        img = torch.rand(3, *size, generator=gen)
        data = comp.encode(img)
        ref = eager.encode(img, rate=1)
        # the compiled encoder's file decodes on eager, and the other way round, to nearly the same image
        for d in (data, ref):
            a, b = ed.decode(d, output="tensor"), cd.decode(d, output="tensor")
            assert a.shape == (3, *size) and (a - b).abs().max() < 1e-3
        assert abs(len(data) - len(ref)) <= 2
    assert cd.timings and all(v >= 0 for v in cd.timings.values())


def test_dynamic_compile_covers_non_square_shapes():
    """dynamic=True: one compile serves a square and then a non-square shape. Dynamo's duck sizing would
    otherwise guard H == W after a square first call and recompile (minutes for a real autoencoder)."""
    import threading

    conv = torch.nn.Conv2d(4, 4, 3, padding=1)
    stage = CompiledStage("vae_decoder", lambda latent: conv(latent) * 2, torch.device("cpu"),
                          CompileOptions(dynamic=True), threading.RLock())
    with torch.no_grad():
        a = stage(latent=torch.randn(1, 4, 8, 8))["image"]
        with torch._dynamo.config.patch(error_on_recompile=True):  # a recompile raises
            x = torch.randn(1, 4, 8, 12)
            b = stage(latent=x)["image"]
        assert a.shape == (1, 4, 8, 8) and torch.allclose(b, conv(x) * 2, atol=1e-5)


def test_compile_options_are_frozen():
    with pytest.raises(Exception):
        CompileOptions().mode = "x"


def test_context_table_replaces_text_encoder(tiny_dir, tmp_path):
    from slim_rt.models.context_table import ContextTable
    from slim_rt.models.slim import SlimModel

    cap = FixedCaptioner("a photo of a cat")
    full = slim_rt.Encoder.from_pretrained(str(tiny_dir), captioner=cap, steps=1)
    table = ContextTable.build(full.model.base, ["", "a photo of a cat"])
    table.save(tmp_path / "ctx")
    dec = slim_rt.Decoder.from_pretrained(str(tiny_dir), text_encoder=str(tmp_path / "ctx"))
    assert dec.model.fingerprint_hex == full.model.fingerprint_hex  # bitstreams travel between them
    data = full.encode(torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0)))
    a = slim_rt.Decoder(full.pipeline).decode(data, output="tensor")
    b = dec.decode(data, output="tensor")
    assert torch.equal(a, b)
    other = full.encode(torch.rand(3, 64, 64), caption="a photo of a dog")
    with pytest.raises(ValueError, match="not in this precomputed context table"):
        dec.decode(other)
    with pytest.raises(ModelLoadError, match="not a context table"):
        SlimModel.from_pretrained(str(tiny_dir), text_encoder=str(tmp_path))


def test_fingerprint_does_not_depend_on_runtime_dtype(tiny_dir):
    """An fp16/bf16 decoder must accept files of an fp32 encoder (transformers records the load dtype
    in the text encoder's config; the fingerprint ignores it)."""
    from slim_rt.models.slim import SlimModel

    fps = {dt: SlimModel.from_pretrained(str(tiny_dir), dtype=dt).fingerprint_hex
           for dt in (torch.float32, torch.float16, torch.bfloat16)}
    assert len(set(fps.values())) == 1, fps
    data = slim_rt.Encoder.from_pretrained(str(tiny_dir), captioner=FixedCaptioner("")).encode(torch.rand(3, 64, 64))
    img = slim_rt.Decoder.from_pretrained(str(tiny_dir), dtype=torch.bfloat16).decode(data, output="tensor")
    assert img.shape == (3, 64, 64) and torch.isfinite(img).all()


def test_first_line():
    from slim_rt.errors import first_line
    assert first_line(ValueError("\n  bad thing \nmore")) == "bad thing"
    assert first_line(ValueError("")) == "ValueError" and first_line(KeyError()) == "KeyError"
