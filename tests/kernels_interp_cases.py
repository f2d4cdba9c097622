"""Triton kernels vs the PyTorch references, run by the Triton interpreter on CPU.

Not collected directly (the name does not match test_*.py): `test_kernels_triton.py` runs this
file in a subprocess with TRITON_INTERPRET=1, which must be set before triton is imported.
Shapes are kept small where the interpreter is slow (the index kernels loop over channels).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # kernel_checks, under any import mode
import kernel_checks as K  # noqa: E402

if os.environ.get("TRITON_INTERPRET") != "1":  # pragma: no cover - guard against direct runs
    pytest.skip("run through test_kernels_triton.py (needs TRITON_INTERPRET=1)", allow_module_level=True)

DEV = "cpu"
QUANT_SHAPES = [(1, 3, 37, 53), (2, 192, 17, 29), (0, 4, 5, 6), (3, 0, 2, 2), (1, 1, 1, 1)]


@pytest.mark.parametrize("dtype", K.FLOATS + (torch.float64,), ids=str)
@pytest.mark.parametrize("shape", QUANT_SHAPES, ids=str)
def test_quantize(shape, dtype):
    K.check_quantize(shape, dtype, DEV, with_means=True, special=False)
    K.check_quantize(shape, dtype, DEV, with_means=False, special=False)


@pytest.mark.parametrize("dtype", K.FLOATS, ids=str)
@pytest.mark.parametrize("with_means", [True, False])
def test_quantize_special_values(dtype, with_means):
    K.check_quantize((2, 7, 19, 23), dtype, DEV, with_means=with_means, special=True)


def test_quantize_mixed_dtypes_and_broadcast():
    K.check_quantize_mixed(DEV)


@pytest.mark.parametrize("dims", [(1, 3, 37, 53, 5), (2, 48, 17, 29, 40), (2, 192, 3, 5, 192),
                                  (1, 0, 4, 4, 3), (0, 4, 4, 4, 3), (1, 5, 1, 1, 1)], ids=str)
def test_scale_indexes(dims):
    K.check_scale_indexes(*dims, DEV)


@pytest.mark.parametrize("shift", [0, 1, 20, -2])
def test_scale_indexes_shifts(shift):
    K.check_scale_indexes(1, 7, 5, 9, 6, DEV, shift=shift, levels=1000)


@pytest.mark.parametrize("dtype", K.FLOATS, ids=str)
@pytest.mark.parametrize("dims", [(1, 3, 37, 53, 5), (2, 24, 17, 29, 33), (0, 3, 2, 2, 4)], ids=str)
def test_quantize_with_indexes(dims, dtype):
    K.check_quantize_with_indexes(*dims, dtype, DEV, with_means=dims[0] != 2)


@pytest.mark.parametrize("dtype", K.FLOATS, ids=str)
@pytest.mark.parametrize("shape", [(1, 3, 37, 53), (2, 16, 17, 29), (0, 2, 3, 3)], ids=str)
def test_gaussian_likelihood(shape, dtype):
    K.check_likelihood(shape, dtype, DEV, with_means=True)


def test_gaussian_likelihood_no_means_broadcast_scales():
    K.check_likelihood((2, 5, 7, 9), torch.float32, DEV, with_means=False)
    y = torch.randn(2, 4, 5, 6, requires_grad=True)
    s = (torch.rand(1, 4, 1, 1) + 0.05).requires_grad_(True)
    out = K.T.gaussian_likelihood(y, None, s, K.LOWER_BOUND)
    ref = K.R.gaussian_likelihood(y, None, s, K.LOWER_BOUND)
    K.assert_close_scaled(out, ref, "broadcast likelihood", 2e-6)
    ga = torch.autograd.grad(out.sum(), (y, s))
    gr = torch.autograd.grad(ref.sum(), (y, s))
    for a, e in zip(ga, gr):
        K.assert_close_scaled(a, e, "broadcast grads", 1e-5)


@pytest.mark.parametrize("dtype", K.FLOATS, ids=str)
def test_gaussian_likelihood_special_values(dtype):
    K.check_likelihood_special(dtype, DEV)


def test_torch_compile_traces_custom_ops():
    K.check_compile(DEV)


def test_opcheck():
    K.check_opcheck(DEV)


def test_dispatcher_forces_triton():
    from slim_rt import kernels
    y = torch.randn(3, 4, 5, 6) * 7
    for a, e in zip(kernels.quantize(y, impl="triton"), kernels.quantize(y, impl="reference")):
        K.assert_equal(a, e, "dispatcher")


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
