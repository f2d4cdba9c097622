"""Decoding must never desynchronise: the scale indexes are bit-identical across execution paths."""
import numpy as np
import torch

from slim_rt.config import COMPRESSOR_PRESETS
from slim_rt.models.compressor import SlimCompressor
from slim_rt.models.intnet import ACT_FRAC, ACT_MAX, W_FRAC, Z_CLAMP


def _numpy_int_indexes(z: np.ndarray, p: dict, levels: int) -> np.ndarray:
    """Independent int64 implementation of the integer scale network (no torch, no float)."""
    def up2(x):
        return x.repeat(2, axis=-2).repeat(2, axis=-1)

    def conv(x, w, b, shift, lo, hi):
        B, C, H, W = x.shape
        O, _, k, _ = w.shape
        r = k // 2
        xp = np.pad(x, ((0, 0), (0, 0), (r, r), (r, r)))
        acc = np.zeros((B, O, H, W), dtype=np.int64) + b[None, :, None, None]
        for dy in range(k):
            for dx in range(k):
                acc += np.einsum("oc,bchw->bohw", w[:, :, dy, dx], xp[:, :, dy:dy + H, dx:dx + W])
        return np.clip((acc + (1 << (shift - 1))) >> shift, lo, hi)

    P = {k: v.numpy().astype(np.int64) for k, v in p.items()}
    x = np.clip(z.astype(np.int64), -Z_CLAMP, Z_CLAMP)
    x = conv(up2(x), P["w1"], P["b1"], W_FRAC - ACT_FRAC, 0, ACT_MAX)
    x = conv(up2(x), P["w2"], P["b2"], W_FRAC, 0, ACT_MAX)
    return conv(x, P["w3"], P["b3"], ACT_FRAC + W_FRAC, 0, levels - 1)


def _model():
    m = SlimCompressor(COMPRESSOR_PRESETS["test"]).eval()
    with torch.no_grad():  # make the integer network use its whole range
        for c in (m.h_s_scale.conv1, m.h_s_scale.conv2, m.h_s_scale.conv3):
            c.weight.normal_(0, 0.3)
            c.bias.normal_(0, 2.0)
    return m


def test_indexes_bit_identical_across_paths():
    m = _model()
    net = m.h_s_scale
    p = net.int_params()
    threads = torch.get_num_threads()
    used = set()
    try:
        for i in range(100):
            h, w = np.random.randint(1, 6, size=2)
            z = torch.randint(-40, 41, (np.random.randint(1, 3), m.cfg.N, h, w), dtype=torch.int32)
            torch.set_num_threads(threads)
            a = net.indexes(z, p, impl="reference")
            torch.set_num_threads(1)
            b = net.indexes(z, p, impl="reference")
            c = torch.from_numpy(_numpy_int_indexes(z.numpy(), p, net.levels)).to(torch.int32)
            assert torch.equal(a, b) and torch.equal(a, c), f"latent {i}: index mismatch"
            used |= set(a.unique().tolist())
    finally:
        torch.set_num_threads(threads)
    assert len(used) > 10  # the test exercised many CDF rows, not a constant


def test_training_simulation_matches_integer_path():
    """The float STE simulation used in training picks (almost always) the coded index."""
    m = _model()
    z = torch.randint(-20, 21, (2, m.cfg.N, 4, 4), dtype=torch.int32)
    s = m.h_s_scale(z.float())
    sim = torch.floor(s.clamp(0, m.cfg.scale_levels - 1) + 0.5).to(torch.int32)
    exact = m.h_s_scale.indexes(z, impl="reference")
    assert (sim == exact).float().mean() > 0.99
