"""gaussian_likelihood and its fused backward: kernels/triton_likelihood.py vs
reference.gaussian_likelihood and a float64 evaluation (tolerances in kernel_checks), on CUDA and
under the Triton interpreter (see kernel_checks: "running")."""
from __future__ import annotations

import pytest
import torch

from tests import kernel_checks as K

pytestmark = K.needs_triton



# dtypes of (y, means, scales): the three alike, and mixed (PyTorch's promotion decides the rest)
BWD_DTYPES = [(torch.float32,) * 3, (torch.float16,) * 3, (torch.bfloat16,) * 3,
              (torch.float16, torch.float32, torch.float16), (torch.bfloat16, torch.float16, torch.float32),
              (torch.float32, torch.bfloat16, torch.bfloat16)]


def check_bwd_means(device) -> None:
    """slim_rt::gaussian_likelihood_bwd_means (the backward when the means need a gradient) gives bit
    for bit what the two-output slim_rt::gaussian_likelihood_bwd and the casts after it gave:
    grad_y = grad_d.to(y.dtype), grad_means = (-grad_d).to(means.dtype) (signed zeros included),
    grad_scales; eager (direct call) and dispatcher agree; autograd gives the same grad_y and
    grad_scales whether or not the means need a gradient; opcheck."""
    op3, op2 = torch.ops.slim_rt.gaussian_likelihood_bwd_means, torch.ops.slim_rt.gaussian_likelihood_bwd
    TL = K.triton_likelihood
    for ydt, mdt, sdt in BWD_DTYPES:
        y, means, scales = K.likelihood_inputs((2, 5, 7, 9), torch.float32, device)
        y, means, scales = y.to(ydt), means.to(mdt), scales.to(sdt)
        y.view(-1)[::5] = means.view(-1)[::5].to(ydt)    # some y - means == 0 (grad_d is a signed zero)
        grad = torch.randn(y.shape, device=device).to(TL._out_dtype(y, means, scales))
        grad.view(-1)[1::6] = 0.0
        tag = f"y {ydt} means {mdt} scales {sdt}"
        gd, gs2 = op2(grad, y, means, scales, K.LOWER_BOUND)
        want = (gd.to(ydt), (-gd).to(mdt), gs2)
        for got in (op3(grad, y, means, scales, K.LOWER_BOUND),
                    TL._likelihood_bwd_means_impl(grad, y, means, scales, K.LOWER_BOUND)):
            for a, e, n in zip(got, want, ("grad_y", "grad_means", "grad_scales")):
                K.assert_equal(a, e, f"bwd_means {n} {tag}")
                K.assert_equal(a.signbit() | a.isnan(), e.signbit() | e.isnan(), f"bwd_means {n} signs {tag}")
        torch.library.opcheck(op3, (grad, y, means, scales, K.LOWER_BOUND),
                              test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))
        # autograd: both backward branches (means with and without a gradient) agree
        grads = []
        for m_grad in (True, False):
            yy, mm, ss = (t.detach().clone() for t in (y, means, scales))
            leaves = [yy, ss] + ([mm] if m_grad else [])
            for t in leaves:
                t.requires_grad_(True)
            out = TL.gaussian_likelihood(yy, mm, ss, K.LOWER_BOUND)
            grads.append(torch.autograd.grad(out, leaves, grad))
        for a, e, n in zip(grads[0][:2], grads[1], ("grad_y", "grad_scales")):
            K.assert_equal(a, e, f"autograd {n} with/without a means gradient {tag}")
        K.assert_equal(grads[0][2], want[1], f"autograd grad_means {tag}")


# ------------------------------------------------------------------------------------------ interpreter (CPU)
@K.interpreter_case
@pytest.mark.parametrize("dtype", K.FLOATS, ids=str)
@pytest.mark.parametrize("shape", [(1, 3, 37, 53), (2, 16, 17, 29), (0, 2, 3, 3)], ids=str)
def test_gaussian_likelihood(shape, dtype):
    K.check_likelihood(shape, dtype, "cpu", with_means=True)


@K.interpreter_case
def test_gaussian_likelihood_no_means_broadcast_scales():
    K.check_likelihood((2, 5, 7, 9), torch.float32, "cpu", with_means=False)
    y = torch.randn(2, 4, 5, 6, requires_grad=True)
    s = (torch.rand(1, 4, 1, 1) + 0.05).requires_grad_(True)
    out = K.triton_likelihood.gaussian_likelihood(y, None, s, K.LOWER_BOUND)
    ref = K.R.gaussian_likelihood(y, None, s, K.LOWER_BOUND)
    K.assert_close_scaled(out, ref, "broadcast likelihood", 2e-6)
    ga = torch.autograd.grad(out.sum(), (y, s))
    gr = torch.autograd.grad(ref.sum(), (y, s))
    for a, e in zip(ga, gr):
        K.assert_close_scaled(a, e, "broadcast grads", 1e-5)


@K.interpreter_case
@pytest.mark.parametrize("dtype", K.FLOATS, ids=str)
def test_gaussian_likelihood_special_values(dtype):
    K.check_likelihood_special(dtype, "cpu")


@K.interpreter_case
def test_opcheck():
    K.check_opcheck("cpu", "gaussian_likelihood_fwd", "gaussian_likelihood_bwd")


@K.interpreter_case
def test_bwd_means_matches_two_output_bwd():
    check_bwd_means("cpu")


# ------------------------------------------------------------------------------------------ GPU
@K.gpu_test
@pytest.mark.parametrize("shape", [(1, 3, 37, 53), (2, 192, 17, 29), (0, 2, 3, 3)], ids=str)
@pytest.mark.parametrize("dtype", K.FLOATS, ids=str)
def test_gpu_gaussian_likelihood(shape, dtype):
    K.check_likelihood(shape, dtype, "cuda", with_means=True)
    K.check_likelihood(shape, dtype, "cuda", with_means=False)
    K.check_likelihood_special(dtype, "cuda")


@K.gpu_test
def test_gpu_opcheck():
    K.check_opcheck("cuda", "gaussian_likelihood_fwd", "gaussian_likelihood_bwd")


@K.gpu_test
def test_gpu_bwd_means_matches_two_output_bwd():
    check_bwd_means("cuda")
