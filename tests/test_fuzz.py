"""Bounded, deterministic fuzzing of the decoder and the image reader, each case in a worker
subprocess (slim_rt.fuzzing): only clean errors or valid images of the declared size, never a
signal, a hang or another exception type. The long run is benchmarks/fuzz.py."""
import pytest
import torch

import slim_rt
from slim_rt import fuzzing
from slim_rt.captions import FixedCaptioner

SEED = 12
SLIM_CASES = 300
IMAGE_CASES = 80


def valid_files(model_dir) -> list[bytes]:
    enc = slim_rt.Encoder.from_pretrained(str(model_dir), captioner=FixedCaptioner(""))
    g = torch.Generator().manual_seed(SEED)
    return [enc.encode(torch.rand(3, 64, 64, generator=g), "a cat", rate=0),
            enc.encode(torch.rand(3, 70, 90, generator=g), "", rate=1),
            enc.encode(torch.rand(3, 128, 64, generator=g), "ü photo", rate=1)]


@pytest.mark.timeout(300)
def test_fuzz_decoder_and_image_reader(tiny_dir):
    cases = fuzzing.slim_cases(valid_files(tiny_dir), SLIM_CASES, SEED) + fuzzing.image_cases(IMAGE_CASES, SEED)
    results = fuzzing.run_cases(cases, tiny_dir, timeout_s=60)
    counts = fuzzing.summary(results)
    bad = [r for r in results if r["outcome"] not in fuzzing.ALLOWED]
    assert not bad, (counts, bad[:10])
    named = {r["name"]: r["outcome"] for r in results}
    assert named["z-1MiB-ff"] == named["y-1MiB-ff"] == "BitstreamError"
    assert named["bomb-8192x4880"] == "ResourceLimitError"
    assert named["overlong-caption-varint"] == "BitstreamError"
    assert named["png-bomb-100000x100000"] == named["png-bomb-8192x8192"] == "ValueError"
    assert [r["outcome"] for r in results if r["name"] == "valid"] == ["ok"] * 3
    assert counts.get("ok", 0) > 3 + 4 and counts["BitstreamError"] > SLIM_CASES // 2  # both paths exercised


@pytest.mark.timeout(300)
def test_harness_detects_signals_and_hangs(tiny_dir):
    cases = [("selftest", "ok", b""), ("selftest", "crash", b""), ("selftest", "ok", b""), ("selftest", "hang", b"")]
    out = [r["outcome"] for r in fuzzing.run_cases(cases, tiny_dir, timeout_s=3)]
    assert out == ["ok", "signal 11", "ok", "hang"]


def test_decode_bomb_refused_from_header(codec):
    enc, dec = codec
    data = fuzzing.bomb(enc.encode(torch.rand(3, 64, 64)))
    assert len(data) == 38 and slim_rt.inspect(data)["width"] == 8192
    with pytest.raises(slim_rt.ResourceLimitError, match="budget"):
        dec.decode(data)
    assert set(dec.timings) <= {"other"}  # refused before any stage ran
