"""The Triton ops together: torch.compile through every custom op, the `impl` dispatcher, a codec
round trip across implementations, and the one run of every kernel test file's interpreter cases.
Each op's own tests: test_kernel_quantize.py, test_kernel_scale_indexes.py, test_kernel_likelihood.py;
how they run: kernel_checks ("running")."""
from __future__ import annotations

from pathlib import Path

import torch

from tests import kernel_checks as K

pytestmark = K.needs_triton

HERE = Path(__file__).resolve().parent


def test_interpreter_subprocess():
    """The interpreter cases of this file and of every tests/test_kernel_*.py, in one fresh Python
    (one, not one per file: importing slim_rt alone takes ~6 s)."""
    K.run_interpreter_cases(*sorted(HERE.glob("test_kernel_*.py")), Path(__file__))


# ------------------------------------------------------------------------------------------ interpreter (CPU)
@K.interpreter_case
def test_torch_compile_traces_custom_ops():
    K.check_compile("cpu")


@K.interpreter_case
def test_dispatcher_forces_triton():
    from slim_rt import kernels
    y = torch.randn(3, 4, 5, 6) * 7
    for a, e in zip(kernels.quantize(y, impl="triton"), kernels.quantize(y, impl="reference")):
        K.assert_equal(a, e, "dispatcher")


@K.interpreter_case
def test_codec_cross_impl_roundtrip(tmp_path):
    """A bitstream encoded through the reference ops decodes through the Triton ops (and vice
    versa) to an identical y_hat; full decodes give identical images."""
    import slim_rt
    from slim_rt.captions import FixedCaptioner
    from slim_rt.images import pad_to_multiple
    from slim_rt.testing import build_tiny_random

    d = build_tiny_random(tmp_path / "m", rates=1)
    enc = slim_rt.Encoder.from_pretrained(str(d), captioner=FixedCaptioner(""), steps=0)
    model = enc.model
    comp = model.compressors[0]
    img = torch.rand(1, 3, 65, 97)
    with torch.inference_mode():
        lat = model.base.encode_latent(pad_to_multiple(img * 2 - 1, model.pixel_multiple))
        y = comp.g_a(lat)
        z = comp.h_a(y)
        for e_impl, d_impl in (("reference", "triton"), ("triton", "reference")):
            out = comp.compress_with(y, z, comp.h_s_mean, impl=e_impl)
            y_dec = comp.decompress_with(out["strings"], out["z_shape"], comp.h_s_mean, impl=d_impl)
            K.assert_equal(y_dec, out["y_hat"], f"y_hat {e_impl}->{d_impl}")
    enc.pipeline.impl = "reference"
    data_ref = enc.encode(img[0])
    enc.pipeline.impl = "triton"
    data_tri = enc.encode(img[0])
    assert data_ref == data_tri  # identical bitstreams from both paths
    dec = slim_rt.Decoder(enc.pipeline)
    a = dec.decode(data_ref, output="tensor")
    enc.pipeline.impl = "reference"
    b = dec.decode(data_ref, output="tensor")
    K.assert_equal(a, b, "decoded image triton vs reference")


# ------------------------------------------------------------------------------------------ GPU
@K.gpu_test
def test_gpu_compile():
    K.check_compile("cuda")


@K.gpu_test
def test_gpu_auto_dispatch_picks_triton():
    from slim_rt import kernels
    assert kernels.triton_available()
    from slim_rt.kernels import triton_ops
    y = torch.randn(4, 192, 16, 16, device="cuda")
    assert kernels._pick("auto", y) is triton_ops
    assert kernels._pick("auto", y.cpu()) is kernels.reference
