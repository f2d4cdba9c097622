"""Triton kernels vs references: interpreter run on CPU (subprocess) and native GPU runs.

TRITON_INTERPRET=1 must be in the environment before triton is imported, and this pytest
process may already have imported it, so the interpreter cases (kernels_interp_cases.py) run
in a fresh interpreter. The GPU tests run the same checks natively on CUDA.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent

try:
    import triton  # noqa: F401
    HAVE_TRITON = True
except Exception:  # pragma: no cover
    HAVE_TRITON = False

needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")


INTERP_TIMEOUT_S = 90  # the run takes 20-26 s on 2 busy CPU cores: ~3.5x that, so a hang fails fast


def _text(b: bytes | str | None) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else b or ""


@needs_triton
def test_triton_kernels_under_interpreter():
    # unbuffered: a run killed at the timeout still leaves its progress to show
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONWARNINGS": "ignore", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "-x", "-p", "no:cacheprovider",
           "-W", "ignore::RuntimeWarning", str(HERE / "kernels_interp_cases.py")]
    try:
        proc = subprocess.run(cmd, cwd=HERE.parent, env=env, capture_output=True, text=True,
                              timeout=INTERP_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        tail = (_text(e.stdout) + _text(e.stderr))[-6000:]
        pytest.fail(f"interpreter kernel tests did not finish in {INTERP_TIMEOUT_S} s "
                    f"(kernels_interp_cases.py under TRITON_INTERPRET=1); output so far:\n{tail}", pytrace=False)
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, f"interpreter kernel tests failed (rc={proc.returncode}):\n{tail}"
    summary = proc.stdout.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary) and not re.search(r"skipped|failed|error", summary), tail


# ------------------------------------------------------------------------------------------ GPU
gpu = [pytest.mark.gpu, needs_triton,
       pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)")]


def _checks():
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        pytest.skip("TRITON_INTERPRET is set: GPU tests must run natively")
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import kernel_checks
    return kernel_checks


@pytest.mark.parametrize("shape", [(1, 3, 37, 53), (2, 192, 17, 29), (16, 192, 64, 64), (0, 4, 5, 6)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("special", [False, True])
def test_gpu_quantize(shape, dtype, special):
    K = _checks()
    K.check_quantize(shape, dtype, "cuda", with_means=True, special=special)
    K.check_quantize(shape, dtype, "cuda", with_means=False, special=special)


for _m in gpu:
    test_gpu_quantize = _m(test_gpu_quantize)


@pytest.mark.parametrize("dims", [(1, 3, 37, 53, 5), (2, 192, 17, 29, 192), (16, 192, 64, 64, 192), (1, 0, 4, 4, 3)],
                         ids=str)
def test_gpu_scale_indexes_and_fused(dims):
    K = _checks()
    K.check_scale_indexes(*dims, "cuda")
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        K.check_quantize_with_indexes(*dims, dt, "cuda")


@pytest.mark.parametrize("shape", [(1, 3, 37, 53), (2, 192, 17, 29), (0, 2, 3, 3)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_gpu_gaussian_likelihood(shape, dtype):
    K = _checks()
    K.check_likelihood(shape, dtype, "cuda", with_means=True)
    K.check_likelihood(shape, dtype, "cuda", with_means=False)
    K.check_likelihood_special(dtype, "cuda")


def test_gpu_compile_and_opcheck():
    K = _checks()
    K.check_compile("cuda")
    K.check_opcheck("cuda")


def test_gpu_auto_dispatch_picks_triton():
    _checks()
    from slim_rt import kernels
    assert kernels.triton_available()
    from slim_rt.kernels import triton_ops
    y = torch.randn(4, 192, 16, 16, device="cuda")
    assert kernels._pick("auto", y) is triton_ops
    assert kernels._pick("auto", y.cpu()) is kernels.reference


for _f in ("test_gpu_scale_indexes_and_fused", "test_gpu_gaussian_likelihood", "test_gpu_compile_and_opcheck",
           "test_gpu_auto_dispatch_picks_triton"):
    _fn = globals()[_f]
    for _m in gpu:
        _fn = _m(_fn)
    globals()[_f] = _fn
