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
