"""scale_indexes: kernels/triton_scale_indexes.py vs reference.scale_indexes (bit-exact), on CUDA and
under the Triton interpreter (see kernel_checks: "running"). The fused encoder launch that reuses
this kernel's index tile is tested in test_kernel_quantize.py."""
from __future__ import annotations

import pytest

from tests import kernel_checks as K

pytestmark = K.needs_triton

INDEX_DIMS = [(1, 3, 37, 53, 5), (2, 192, 17, 29, 192), (16, 192, 64, 64, 192), (1, 0, 4, 4, 3)]  # B, C, H, W, M



# ------------------------------------------------------------------------------------------ interpreter (CPU)
@K.interpreter_case  # small shapes: the interpreter is slow in the loop over channels
@pytest.mark.parametrize("dims", [(1, 3, 37, 53, 5), (2, 48, 17, 29, 40), (2, 192, 3, 5, 192),
                                  (1, 0, 4, 4, 3), (0, 4, 4, 4, 3), (1, 5, 1, 1, 1)], ids=str)
def test_scale_indexes(dims):
    K.check_scale_indexes(*dims, "cpu")


@K.interpreter_case
@pytest.mark.parametrize("shift", [0, 1, 20, -2])
def test_scale_indexes_shifts(shift):
    K.check_scale_indexes(1, 7, 5, 9, 6, "cpu", shift=shift, levels=1000)


@K.interpreter_case
def test_opcheck():
    K.check_opcheck("cpu", "scale_indexes")


# ------------------------------------------------------------------------------------------ GPU
@K.gpu_test
@pytest.mark.parametrize("dims", INDEX_DIMS, ids=str)
def test_gpu_scale_indexes(dims):
    K.check_scale_indexes(*dims, "cuda")


@K.gpu_test
def test_gpu_opcheck():
    K.check_opcheck("cuda", "scale_indexes")
