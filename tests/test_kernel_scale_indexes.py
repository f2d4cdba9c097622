"""scale_indexes: kernels/triton_scale_indexes.py vs reference.scale_indexes (bit-exact), on CUDA and
under the Triton interpreter (see kernel_checks: "running"). The fused encoder launch that reuses
this kernel's index tile is tested in test_kernel_quantize.py."""
from __future__ import annotations

import pytest

from tests import kernel_checks as K

pytestmark = K.needs_triton

INDEX_DIMS = [(1, 3, 37, 53, 5), (2, 192, 17, 29, 192), (16, 192, 64, 64, 192), (1, 0, 4, 4, 3)]  # B, C, H, W, M
BEYOND_FP16 = ["big_h", "big_w", "big", "edge", "near"]  # K.index_inputs sets beyond the network range



# ------------------------------------------------------------------------------------------ interpreter (CPU)
@K.interpreter_case  # small shapes: the interpreter is slow in the loop over channels
@pytest.mark.parametrize("dims", [(1, 3, 37, 53, 5), (2, 48, 17, 29, 40), (2, 192, 3, 5, 192),
                                  (1, 0, 4, 4, 3), (0, 4, 4, 4, 3), (1, 5, 1, 1, 1)], ids=str)
def test_scale_indexes(dims):
    K.check_scale_indexes(*dims, "cpu")


@K.interpreter_case  # the kernel's fp16 tensor-core path must route these to its exact int64 path
@pytest.mark.parametrize("values", BEYOND_FP16)
@pytest.mark.parametrize("dims", [(1, 37, 5, 7, 5), (2, 3, 3, 3, 40), (1, 64, 4, 5, 1)], ids=str)
def test_scale_indexes_beyond_fp16(dims, values):
    K.check_scale_indexes(*dims, "cpu", *K.index_scaling(values), values=values)


@K.interpreter_case  # fast and exact chunks in one tile: per (pixel block, row block, channel chunk)
def test_scale_indexes_mixed_chunks():
    K.check_scale_indexes(1, 80, 13, 23, 80, "cpu", *K.index_scaling("mixed"), values="mixed")


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
@pytest.mark.parametrize("values", BEYOND_FP16 + ["mixed"])
@pytest.mark.parametrize("dims", [(1, 37, 5, 7, 5), (2, 80, 13, 23, 80), (2, 192, 17, 29, 192)], ids=str)
def test_gpu_scale_indexes_beyond_fp16(dims, values):
    K.check_scale_indexes(*dims, "cuda", *K.index_scaling(values), values=values)


@K.gpu_test
def test_gpu_opcheck():
    K.check_opcheck("cuda", "scale_indexes")
