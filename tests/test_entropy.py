import torch

from slim_rt.entropy import ExactGaussianConditional, FactorizedEntropy


def test_gaussian_coding_roundtrip_with_tails():
    gc = ExactGaussianConditional(64, 0.11, 64.0)
    gc.update()
    idx = torch.randint(0, 64, (3, 8, 5, 7), dtype=torch.int32)
    scales = gc.scale_table[idx.long()]
    sym = torch.round(torch.randn(idx.shape) * scales * 1.5).to(torch.int32)
    sym[0, 0, 0, 0] = 10_000  # far outside every CDF: escape coded
    sym[1, 0, 0, 0] = -7_777
    strings = gc.encode(sym, idx)
    assert len(strings) == 3
    assert torch.equal(gc.decode(strings, idx), sym)


def test_factorized_roundtrip():
    eb = FactorizedEntropy(6)
    eb.update(force=True)
    z = torch.randn(2, 6, 3, 5) * 4
    sym, z_hat = eb.quantize_symbols(z)
    assert torch.equal(sym, torch.round(z - eb.medians()).to(torch.int32))
    strings = eb.encode(sym)
    dec = eb.decode(strings, (3, 5))
    assert torch.equal(dec, sym)
    assert torch.allclose(eb.dequantize_symbols(dec), z_hat)


def test_tables_cached():
    gc = ExactGaussianConditional(16, 0.11, 16.0)
    gc.update()
    a = gc._tables.get(gc)
    assert gc._tables.get(gc) is a


# -- the bounds-checked coder (slim_rt.entropy.coder) ---------------------------------------------
import hashlib  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from slim_rt.entropy import coder  # noqa: E402
from slim_rt.errors import BitstreamError  # noqa: E402


def _integer_tables(n_tables=5):
    """Hand-made integer CDF rows (no float step anywhere): row k has 3 + 2k regular symbols."""
    width = 3 + 2 * (n_tables - 1) + 2
    cdf = np.zeros((n_tables, width), np.int32)
    lengths, offsets = [], []
    for k in range(n_tables):
        n = 3 + 2 * k + 1                        # regular symbols + escape
        f = np.array([(j + 1) * (n - j) for j in range(n)], np.int64)
        f = f * 60000 // f.sum()
        f[n // 2] += 65536 - f.sum()
        cdf[k, 1:n + 1] = np.cumsum(f)
        lengths.append(n + 1)
        offsets.append(-(n // 2))
    return coder.Tables(cdf, np.array(lengths), np.array(offsets))


def _symbols(tables, n=3000, seed=0):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(tables), n)
    sym = np.round(rng.standard_normal(n) * (1 + idx)).astype(np.int32)
    sym[::97] = rng.integers(-2**31 + 128, 2**31 - 128, len(sym[::97]))  # every escape class
    sym[5::211] = rng.integers(-300, 300, len(sym[5::211]))
    return sym, idx.astype(np.int32)


def test_coder_roundtrip_all_escape_classes():
    t = _integer_tables()
    sym, idx = _symbols(t)
    data = coder.encode(sym, idx, t)
    assert np.array_equal(coder.decode(data, idx, t), sym)
    assert np.array_equal(coder.decode(coder.encode(sym[:0], idx[:0], t), idx[:0], t), sym[:0])


def test_coder_golden_stream():
    """The stream bytes are the format: a constriction upgrade that changed them must fail here."""
    t = _integer_tables()
    sym, idx = _symbols(t, seed=1)
    data = coder.encode(sym, idx, t)
    assert hashlib.sha256(data).hexdigest()[:16] == GOLDEN, hashlib.sha256(data).hexdigest()[:16]


GOLDEN = "ea8d564a30c59f72"  # constriction 0.5.0, format version 2


@pytest.mark.parametrize("stream", [b"\xff" * (1 << 20), b"\xff" * 4096, b"\x00\x00\x00\x01", b"",
                                    b"\x00" * 64, bytes(range(256)) * 16])
def test_coder_crafted_streams_raise(stream):
    t = _integer_tables()
    _, idx = _symbols(t, n=20000)
    with pytest.raises(BitstreamError):
        coder.decode(stream, idx, t)


def test_coder_truncated_extended_and_flipped():
    t = _integer_tables()
    sym, idx = _symbols(t)
    data = coder.encode(sym, idx, t)
    for bad in (data[:-4], data[4:], data + b"\x01\0\0\0", data[:-1]):
        with pytest.raises(BitstreamError):
            coder.decode(bad, idx, t)
    rng = np.random.default_rng(0)
    for _ in range(50):  # a flipped bit: an error, or (rarely) other symbols of the same count
        b = bytearray(data)
        b[rng.integers(len(b))] ^= 1 << int(rng.integers(8))
        try:
            assert coder.decode(bytes(b), idx, t).shape == sym.shape
        except BitstreamError:
            pass


@pytest.mark.parametrize("impl", ["reference", "auto"])
def test_minimum_scale_still_learns(impl, monkeypatch):
    """An element whose scale index rounds to 0 sits exactly AT the likelihood's lower bound. Its rate
    must still have a gradient on the index (a bigger scale costs fewer bits for a far-off y): a zero
    there froze such elements for good and put a floor under every model's bitrate."""
    from slim_rt import kernels
    g = ExactGaussianConditional(64, 0.11, 64.0)
    s = torch.tensor([0.2, 0.2, 3.0], requires_grad=True)  # continuous indexes: 0, 0 and 3 after rounding
    scales = g.scales_from_index(s)
    assert scales[0].item() == pytest.approx(0.11) and scales[0] == scales[1]
    y, means = torch.tensor([1.0, 0.0, 1.0]), torch.zeros(3)
    lik = kernels.gaussian_likelihood(y, means, scales, g.smin, impl=impl)
    (-torch.log2(lik)).sum().backward()
    assert s.grad[0] < 0 and s.grad[2] < 0  # growing the scale saves bits for y far from the mean
    assert s.grad[1] > 0  # ... and costs bits for y at the mean
