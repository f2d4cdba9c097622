"""gaussian_likelihood and its fused backward: kernels/triton_likelihood.py vs
reference.gaussian_likelihood and a float64 evaluation (tolerances in kernel_checks), on CUDA and
under the Triton interpreter (see kernel_checks: "running")."""
from __future__ import annotations

import pytest
import torch

from tests import kernel_checks as K

pytestmark = K.needs_triton



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
