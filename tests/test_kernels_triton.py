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

if not K.NO_TRITON:
    import triton
    import triton.language as tl

    from slim_rt.kernels._triton_common import _TL, _cast, _widen

    @triton.jit
    def _convert_kernel(x_ptr, o_ptr, n, DTYPE: tl.constexpr, WIDEN: tl.constexpr, NATIVE: tl.constexpr,
                        BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(x_ptr + offs, mask=mask)
        if WIDEN:
            tl.store(o_ptr + offs, _widen(x, DTYPE, NATIVE), mask=mask)
        else:
            tl.store(o_ptr + offs, _cast(x, DTYPE, NATIVE), mask=mask)


def _convert(x: torch.Tensor, dtype: torch.dtype, widen: bool, native: bool) -> torch.Tensor:
    out = torch.empty_like(x, dtype=dtype)
    block = 8192
    _convert_kernel[(triton.cdiv(x.numel(), block),)](x, out, x.numel(), DTYPE=_TL[dtype], WIDEN=widen,
                                                      NATIVE=native, BLOCK=block)
    return out


def _bf16_cast_inputs(device, n_random: int) -> torch.Tensor:
    """float32 values around every bfloat16 value (the value itself, just below / at / just above the
    rounding tie, the largest value below the next), NaNs, infs, subnormals, and random bit patterns."""
    hi = torch.arange(0, 2**16, dtype=torch.int64) << 16
    lows = torch.tensor([0, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF], dtype=torch.int64)
    bits = torch.cat([(hi[:, None] + lows[None, :]).reshape(-1),
                      torch.randint(0, 2**32, (n_random,), dtype=torch.int64)])
    bits = torch.where(bits >= 2**31, bits - 2**32, bits).to(torch.int32)
    return bits.view(torch.float32).to(device)


def check_conversions(device, natives) -> None:
    """_widen / _cast vs PyTorch bit for bit (NaN payloads aside): every bfloat16 widened to float32 and
    float64; float32 around every bfloat16 value rounded to bfloat16; random float32 to float16."""
    all_bf16 = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).to(device)
    x32 = _bf16_cast_inputs(device, 1 << 16 if device == "cpu" else 1 << 22)
    x64 = (torch.randn(1 << 14, dtype=torch.float64) * 1e3).to(device)
    for native in natives:
        for wide in (torch.float32, torch.float64):
            K.assert_equal(_convert(all_bf16, wide, True, native), all_bf16.to(wide),
                           f"_widen bf16 -> {wide} native={native}")
        for src, dst in ((x32, torch.bfloat16), (x32, torch.float16), (x64, torch.bfloat16)):
            got, want = _convert(src, dst, False, native), src.to(torch.float32).to(dst)
            K.assert_equal(got, want, f"_cast {src.dtype} -> {dst} native={native}", ("x", src))
            K.assert_equal(got.view(torch.int16)[~want.isnan()], want.view(torch.int16)[~want.isnan()],
                           f"_cast {src.dtype} -> {dst} native={native}: bits (signed zeros)")


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


@K.interpreter_case
def test_bit_conversions_match_torch():
    check_conversions("cpu", natives=(False,))  # the interpreter's own casts are what NATIVE=False avoids


# ------------------------------------------------------------------------------------------ GPU
@K.gpu_test
def test_gpu_conversions_match_torch():
    check_conversions("cuda", natives=(True, False))


@K.gpu_test
def test_gpu_native_kernels_match_bit_path(monkeypatch):
    """The kernels with the hardware bfloat16 conversions (NATIVE, what the GPU runs) give bit for bit
    the outputs of the bit-level ones (what the interpreter runs, and the GPU ran before)."""
    from slim_rt.kernels import triton_likelihood as TL
    from slim_rt.kernels import triton_quantize as TQ

    cases = []  # (fn, args): one input draw, run twice
    for dt in K.FLOATS:
        for m_dt in (dt, torch.float32, torch.float64):
            y, means = K.quantize_inputs((2, 24, 17, 29), dt, "cuda", True, special=True)
            cases.append((TQ.quantize, (y, means.to(m_dt))))
        y, means = K.quantize_inputs((2, 24, 17, 29), dt, "cuda", True, special=True)
        h, w, b = K.index_inputs(2, 6, 17, 29, 24, "cuda")
        cases.append((TQ.quantize_with_indexes, (y, means, h, w, b, K.SHIFT, K.LEVELS)))
        y, means, scales = K.likelihood_inputs((2, 24, 17, 29), dt, "cuda")
        grad = torch.randn_like(y)
        cases += [(TL._likelihood_fwd_impl, (y, means, scales, K.LOWER_BOUND)),
                  (TL._likelihood_bwd_means_impl, (grad, y, means, scales, K.LOWER_BOUND)),
                  (TL._likelihood_bwd_impl, (grad, y, means, scales, K.LOWER_BOUND))]

    def run_all():
        outs = []
        for fn, args in cases:
            out = fn(*args)
            outs += list(out) if isinstance(out, (tuple, list)) else [out]
        return outs

    native = run_all()
    for mod in (TL, TQ):
        monkeypatch.setattr(mod, "_native", lambda: False)
    bits = run_all()
    assert len(native) == len(bits)
    for i, (a, e) in enumerate(zip(native, bits)):
        K.assert_equal(a, e, f"output {i}: NATIVE vs bit-level conversions")


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
