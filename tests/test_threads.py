"""One Encoder/Decoder shared by many threads (what a web server does): results are bit-identical to
sequential calls, and each thread's timings are its own call's (no negative or mixed stage times)."""
import time
from concurrent.futures import ThreadPoolExecutor

import torch

import slim_rt
from slim_rt.captions import FixedCaptioner

THREADS = 6
CASES = [((64, 64), 0), ((70, 90), 1), ((128, 96), 0), ((64, 130), 1), ((96, 96), 1), ((64, 64), 1)] * 2


def _inputs():
    g = torch.Generator().manual_seed(5)
    return [(torch.rand(3, h, w, generator=g), rate, f"a photo of thing {i}") for i, ((h, w), rate) in enumerate(CASES)]


def _check_timings(timings: dict, wall_ms: float, stages: set) -> None:
    assert stages <= set(timings), timings
    assert all(v >= 0 for v in timings.values()), timings
    total = sum(timings.values())  # stages + "other" = the call's wall time, seen from inside the call
    assert 0.5 * wall_ms - 50.0 <= total <= wall_ms + 1.0, (timings, wall_ms)


def test_shared_encoder_decoder_match_sequential(tiny_dir):
    enc = slim_rt.Encoder.from_pretrained(str(tiny_dir), captioner=FixedCaptioner(""), steps=1)
    dec = slim_rt.Decoder(enc.pipeline)
    inputs = _inputs()
    ref_bytes = [enc.encode(img, cap, rate=rate) for img, rate, cap in inputs]
    ref_imgs = [dec.decode(d, output="tensor") for d in ref_bytes]
    assert len(set(ref_bytes)) == len(ref_bytes)

    def work(i):
        img, rate, cap = inputs[i]
        t = time.perf_counter()
        data = enc.encode(img, cap, rate=rate)
        _check_timings(enc.timings, (time.perf_counter() - t) * 1e3, {"vae_encoder", "entropy_encode", "other"})
        t = time.perf_counter()
        out = dec.decode(ref_bytes[i], output="tensor")
        _check_timings(dec.timings, (time.perf_counter() - t) * 1e3,
                       {"entropy_decode", "unet", "vae_decoder", "other"})
        return data, out

    order = list(range(len(inputs)))[::-1]
    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(work, order))
    for i, (data, out) in zip(order, results):
        assert data == ref_bytes[i]
        assert torch.equal(out, ref_imgs[i])


def test_caption_cache_bounded_and_shared(codec, monkeypatch):
    import slim_rt.pipeline
    limit = 256 * 1024
    monkeypatch.setattr(slim_rt.pipeline, "CONTEXT_CACHE_BYTES", limit)
    _, dec = codec
    p = dec.pipeline
    caps = [f"caption {i} " + "x" * 200 for i in range(300)]
    with ThreadPoolExecutor(4) as pool:
        ctx = list(pool.map(lambda c: p.context([c])[0], caps))
    assert p._contexts_bytes <= limit and 0 < len(p._contexts) < len(caps)
    assert sum(len(c.encode()) + t.numel() * t.element_size() for c, t in p._contexts.items()) == p._contexts_bytes
    assert torch.equal(p.context([caps[-1]])[0], ctx[-1])


def test_shared_ort_decoder_matches_sequential(codec, ort_decoder):
    enc, _ = codec
    g = torch.Generator().manual_seed(8)
    datas = [enc.encode(torch.rand(3, h, w, generator=g), f"cap {i}", rate=rate)
             for i, ((h, w), rate) in enumerate(CASES[:8])]
    ref = [ort_decoder.decode(d, output="tensor") for d in datas]

    def work(i):
        t = time.perf_counter()
        out = ort_decoder.decode(datas[i], output="tensor")
        _check_timings(ort_decoder.timings, (time.perf_counter() - t) * 1e3, {"entropy_decode", "vae_decoder"})
        return out

    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(work, list(range(len(datas))) * 2))
    for i, out in zip(list(range(len(datas))) * 2, outs):
        assert torch.equal(out, ref[i])
