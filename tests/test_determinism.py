"""Cross-backend determinism matrix: files encoded by each backend (torch with 1 and 2 CPU threads,
ONNX Runtime) decode on every backend to identical symbols; ŷ = symbols + means is identical wherever
the means are (the float hyper-synthesis), and within float tolerance across ORT and torch."""
from contextlib import contextmanager

import pytest
import torch

import slim_rt
from slim_rt.captions import FixedCaptioner

IMAGES = [((64, 64), 0), ((96, 80), 1), ((128, 128), 0), ((70, 120), 1)]


@contextmanager
def _threads(n):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def entropy_decode(pipeline, data: bytes):
    """(z symbols, y symbols, ŷ) a pipeline decodes from a file."""
    bs = pipeline.parse(data)
    h = bs.header
    comp = pipeline.model.compressors[h.rate]
    m = pipeline.model.pixel_multiple
    z = comp.entropy_bottleneck.decode([bs.z], (-(-h.height // m), -(-h.width // m)))
    means = pipeline._run("hyper_synthesis", h.rate, z_hat=comp.entropy_bottleneck.dequantize_symbols(z)).float()
    y = comp.gaussian.decode([bs.y], comp.h_s_scale.indexes(z, comp.int_params(), impl=pipeline.impl))
    return z, y, y.float() + means


@pytest.mark.timeout(600)
def test_backend_matrix(codec, exported):
    enc, _ = codec
    ort_enc = slim_rt.Encoder.from_engines(exported[0], "ort", captioner=FixedCaptioner("a photo of a cat"))
    g = torch.Generator().manual_seed(21)
    imgs = [(torch.rand(3, h, w, generator=g), rate) for (h, w), rate in IMAGES]
    backends = {"torch-1": (enc.pipeline, 1), "torch-2": (enc.pipeline, 2), "ort": (ort_enc.pipeline, 1)}
    encoders = {"torch-1": enc, "torch-2": enc, "ort": ort_enc}
    files = {}
    for name, e in encoders.items():
        with _threads(backends[name][1]):
            files[name] = [e.encode(img, rate=rate) for img, rate in imgs]
    assert files["torch-1"] == files["torch-2"] == files["ort"]  # byte-identical files on every backend
    for name, datas in files.items():
        for i, data in enumerate(datas):
            out = {}
            for dname, (pipe, n) in backends.items():
                with _threads(n):
                    out[dname] = entropy_decode(pipe, data)
            z0, y0, yh0 = out["torch-1"]
            for dname, (z, y, yh) in out.items():
                assert torch.equal(z, z0) and torch.equal(y, y0), (name, i, dname)
            assert torch.equal(out["torch-2"][2], yh0), (name, i)
            assert (out["ort"][2] - yh0).abs().max() <= 1e-4 * max(1.0, yh0.abs().max().item()), (name, i)
