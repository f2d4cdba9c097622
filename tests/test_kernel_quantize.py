"""quantize and the fused quantize_with_indexes: kernels/triton_quantize.py vs reference.quantize /
reference.quantize_with_indexes (bit-exact), on CUDA and under the Triton interpreter (see
kernel_checks: "running")."""
from __future__ import annotations

import pytest
import torch

from tests import kernel_checks as K

pytestmark = K.needs_triton

QUANT_SHAPES = [(1, 3, 37, 53), (2, 192, 17, 29), (0, 4, 5, 6), (3, 0, 2, 2), (1, 1, 1, 1)]
FUSED_DIMS = [(1, 3, 37, 53, 5), (2, 24, 17, 29, 33), (0, 3, 2, 2, 4)]  # B, C, H, W, M



# ------------------------------------------------------------------------------------------ interpreter (CPU)
@K.interpreter_case
@pytest.mark.parametrize("dtype", K.FLOATS + (torch.float64,), ids=str)
@pytest.mark.parametrize("shape", QUANT_SHAPES, ids=str)
def test_quantize(shape, dtype):
    K.check_quantize(shape, dtype, "cpu", with_means=True, special=False)
    K.check_quantize(shape, dtype, "cpu", with_means=False, special=False)


@K.interpreter_case
@pytest.mark.parametrize("dtype", K.FLOATS, ids=str)
@pytest.mark.parametrize("with_means", [True, False])
def test_quantize_special_values(dtype, with_means):
    K.check_quantize((2, 7, 19, 23), dtype, "cpu", with_means=with_means, special=True)


@K.interpreter_case
def test_quantize_mixed_dtypes_and_broadcast():
    K.check_quantize_mixed("cpu")


@K.interpreter_case
@pytest.mark.parametrize("dtype", K.FLOATS, ids=str)
@pytest.mark.parametrize("dims", FUSED_DIMS, ids=str)
def test_quantize_with_indexes(dims, dtype):
    K.check_quantize_with_indexes(*dims, dtype, "cpu", with_means=dims[0] != 2)


@K.interpreter_case  # index chunks on both paths of the index tile (see K.index_inputs)
@pytest.mark.parametrize("values", ["mixed", "big"])
def test_quantize_with_indexes_beyond_fp16(values):
    K.check_quantize_with_indexes(1, 80, 13, 23, 80, torch.float32, "cpu", values=values)


@K.interpreter_case
def test_opcheck():
    K.check_opcheck("cpu", "quantize", "quantize_with_indexes")


# ------------------------------------------------------------------------------------------ GPU
@K.gpu_test
@pytest.mark.parametrize("shape", [(1, 3, 37, 53), (2, 192, 17, 29), (16, 192, 64, 64), (0, 4, 5, 6)], ids=str)
@pytest.mark.parametrize("dtype", K.FLOATS, ids=str)
@pytest.mark.parametrize("special", [False, True])
def test_gpu_quantize(shape, dtype, special):
    K.check_quantize(shape, dtype, "cuda", with_means=True, special=special)
    K.check_quantize(shape, dtype, "cuda", with_means=False, special=special)


@K.gpu_test
@pytest.mark.parametrize("dims", [(1, 3, 37, 53, 5), (2, 192, 17, 29, 192), (16, 192, 64, 64, 192), (1, 0, 4, 4, 3)],
                         ids=str)
def test_gpu_quantize_with_indexes(dims):
    for dt in K.FLOATS:
        K.check_quantize_with_indexes(*dims, dt, "cuda")


@K.gpu_test
@pytest.mark.parametrize("values", ["mixed", "big", "near"])
def test_gpu_quantize_with_indexes_beyond_fp16(values):
    K.check_quantize_with_indexes(2, 80, 13, 23, 80, torch.float32, "cuda", values=values)


@K.gpu_test
def test_gpu_opcheck():
    K.check_opcheck("cuda", "quantize", "quantize_with_indexes")
