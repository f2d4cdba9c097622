"""Bounded memory (docs/memory.md): a call's peak RSS stays within the documented per-megapixel
budget of the test model, measured in fresh subprocesses, and larger images are refused up front."""
import importlib.util
from pathlib import Path

import pytest
import torch

import slim_rt
from slim_rt import fuzzing

BUDGET_MIB_PER_MP = {"encode": 300, "decode": 400}   # docs/memory.md, tiny random test model
SLACK_MIB = 64
SIDE = 1024


def _memory_script():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "memory.py"
    spec = importlib.util.spec_from_file_location("slim_rt_bench_memory", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.timeout(600)
def test_peak_memory_within_budget(tiny_dir, tmp_path):
    mem = _memory_script()
    for op in ("encode", "decode"):  # encode writes the file decode reads
        r = mem.measure(str(tiny_dir), op, SIDE, str(tmp_path / "x.slim"))
        assert r["call_mib"] <= BUDGET_MIB_PER_MP[op] * r["mp"] + SLACK_MIB, r


def test_large_images_refused_naming_the_limit(codec):
    enc, dec = codec
    assert enc.max_pixels == dec.max_pixels == slim_rt.api.DEFAULT_MAX_PIXELS < 4096 * 4096
    with pytest.raises(slim_rt.ResourceLimitError, match=r"4096x4096 is 16\.8 MP, over this encoder's budget of 4\.2 MP"):
        enc.encode(torch.zeros(3, 4096, 4096, dtype=torch.uint8))
    data = fuzzing.bomb(enc.encode(torch.rand(3, 64, 64)), 4096, 4096)
    with pytest.raises(slim_rt.ResourceLimitError, match=r"over this decoder's budget of 4\.2 MP \(max_pixels"):
        dec.decode(data)
    small = slim_rt.Decoder(dec.pipeline, max_pixels=64 * 64)
    with pytest.raises(slim_rt.ResourceLimitError):
        small.decode(enc.encode(torch.rand(3, 64, 65)))
    assert small.decode(enc.encode(torch.rand(3, 64, 64))).size == (64, 64)
