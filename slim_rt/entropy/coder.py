"""The bounds-checked entropy coder: table-driven ANS on `constriction` (Rust, memory safe).

Tables are CompressAI's *integer* CDF rows (`_quantized_cdf`, `_cdf_length`, `_offset`, 16-bit):
row k codes the values offset[k] .. offset[k] + E_k - 1 as symbols 0 .. E_k - 1 and everything
else as the escape symbol E_k = cdf_length[k] - 2. Each row becomes a constriction categorical
model from its integer frequencies f_j = cdf[j+1] - cdf[j] (passed as float64, summing to 2^16);
constriction's fixed-point quantization (24 bits) then computes
`left_j = floor(C_j * (2^24 - n) / 2^16) + j` with C_j = cdf[j]: every operand is an integer or a
dyadic fraction below 2^40, so the float64 arithmetic is exact and identical on every machine.

One stream per image, decoded in this order (docs/bitstream.md, format version 2):
  1. for each table k = 0, 1, ...: the symbols whose index is k, in raster (C) order;
  2. one escape class per escape, in the order the escapes were decoded (Uniform(3)):
     0: r < 2^8, 1: r < 2^16 (r = distance past the table range, zigzag: odd below, even above),
     2: the int32 value itself as two 16-bit halves;
  3. the class-0 payloads (Uniform(2^8)), class-1 payloads (Uniform(2^16)), class-2 halves (hi, lo);
  4. a 16-bit end marker; the stream must then be exactly used up.
Every count is known before it is read (indexes, decoded symbols), so a crafted stream can make
the decoder read at most one escape per symbol; the coder never reads outside its buffer, a
stream that ends early decodes to zeros and fails the end marker, and trailing data is refused.
"""
from __future__ import annotations

import threading

import numpy as np

from slim_rt.errors import BitstreamError, first_line

END_MARKER = 0x5A17
_U3 = _U8 = _U16 = None
_init_lock = threading.Lock()


def _constriction():
    global _U3, _U8, _U16
    import constriction
    if _U16 is None:
        with _init_lock:
            m = constriction.stream.model
            _U3, _U8, _U16 = m.Uniform(3), m.Uniform(256), m.Uniform(65536)
    return constriction.stream


class Tables:
    """constriction models for a stack of integer CDF rows (immutable; safe to share across threads)."""

    def __init__(self, cdf: np.ndarray, length: np.ndarray, offset: np.ndarray):
        cs = _constriction()
        length = np.asarray(length, np.int64).reshape(-1)
        if cdf.ndim != 2 or len(length) != cdf.shape[0] or (length < 3).any() or (length > cdf.shape[1]).any():
            raise ValueError("malformed CDF tables")
        self.offset = np.asarray(offset, np.int64).reshape(-1)
        self.escape = length - 2                       # escape symbol of each row
        self.models = []
        for row, n in zip(np.asarray(cdf, np.int64), length):
            freq = np.diff(row[:n]).astype(np.float64)
            if freq.sum() != 65536 or (freq < 0).any():
                raise ValueError("CDF rows must be nondecreasing 16-bit tables")
            self.models.append(cs.model.Categorical(freq, perfect=False))
        # int32 copies for the per-symbol arithmetic (offset wraps like the int32 output does). With
        # every coded range inside int32, `v - offset` on int32 symbols wraps only for values that
        # escape anyway, and never into [0, escape): int32 arithmetic then codes exactly like int64.
        self.offset32, self.escape32 = self.offset.astype(np.int32), self.escape.astype(np.int32)
        self.narrow = bool(((self.offset >= -2 ** 31) & (self.offset + self.escape <= 2 ** 31)).all())

    def __len__(self) -> int:
        return len(self.models)


def _zigzag(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Distance of out-of-range values past [lo, hi]: odd below lo, even above hi (int64)."""
    return np.where(values < lo, 2 * (lo - values) - 1, 2 * (values - hi) - 2)


def _unzigzag(r: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return np.where(r % 2 == 1, lo - (r + 1) // 2, hi + r // 2 + 1)


def _group(indexes: np.ndarray, n_tables: int) -> tuple[np.ndarray, np.ndarray]:
    """indexes [n] -> (order [n], counts [T]): order lists the symbols table by table, in raster order
    within a table (a stable sort), so table t's symbols are one contiguous segment of counts[t]."""
    idx = np.asarray(indexes)
    if idx.dtype.kind not in "iu":
        idx = idx.astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= n_tables):
        raise ValueError("CDF index outside the tables")
    key = idx.astype(np.uint8 if n_tables <= 256 else np.uint16 if n_tables <= 65536 else np.int64)
    return np.argsort(key, kind="stable"), np.bincount(key, minlength=n_tables)  # uint8/16: radix sort


def _segments(symbols: np.ndarray, counts: np.ndarray, tables: Tables) -> list:
    """symbols [n] grouped by table -> [(symbols of table t, model t)] for the tables in use."""
    ends = np.cumsum(counts).tolist()
    return [(symbols[ends[t] - counts[t]:ends[t]], tables.models[t]) for t in np.flatnonzero(counts)]


def _tables_of(positions: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """positions [e] in the table-by-table order -> the table of each [e]."""
    return np.searchsorted(np.cumsum(counts), positions, side="right")


def encode(symbols: np.ndarray, indexes: np.ndarray, tables: Tables) -> bytes:
    """symbols, indexes: 1-D int arrays of one image -> one stream."""
    cs = _constriction()
    order, counts = _group(indexes, len(tables))
    sym = np.asarray(symbols)
    if tables.narrow and np.can_cast(sym.dtype, np.int32):   # int32 arithmetic codes exactly like int64
        v = sym.astype(np.int32, copy=False)[order]          # [n] table by table
        s = v - np.repeat(tables.offset32, counts)
        esc = np.flatnonzero(s.view(np.uint32) >= np.repeat(tables.escape32.view(np.uint32), counts))
    else:
        v = sym.astype(np.int64, copy=False)[order]
        s = v - np.repeat(tables.offset, counts)
        esc = np.flatnonzero(s.view(np.uint64) >= np.repeat(tables.escape.view(np.uint64), counts))
    # esc: [e] positions (in v) outside their table's range: s < 0 or s >= escape, as one unsigned test
    ke = _tables_of(esc, counts)                                     # [e] their tables
    s[esc] = tables.escape[ke]
    ve, lo = v[esc].astype(np.int64), tables.offset[ke]
    r = _zigzag(ve, lo, lo + tables.escape[ke] - 1)
    cls = np.where(r < 256, 0, np.where(r < 65536, 1, 2)).astype(np.int32)
    big = ve[cls == 2].astype(np.int32).view(np.uint32).astype(np.int64)
    halves = np.stack([big >> 16, big & 0xFFFF], 1).reshape(-1)
    segments = _segments(s, counts, tables)                           # in decode order
    segments += [(cls, _U3), (r[cls == 0], _U8), (r[cls == 1], _U16), (halves, _U16),
                 (np.array([END_MARKER]), _U16)]
    coder = cs.stack.AnsCoder()
    for syms, model in reversed(segments):                          # a stack: last pushed, first read
        if len(syms):
            coder.encode_reverse(np.ascontiguousarray(syms, np.int32), model)
    return coder.get_compressed().astype("<u4").tobytes()


def decode(data: bytes, indexes: np.ndarray, tables: Tables) -> np.ndarray:
    """Inverse of `encode`: -> int32 symbols shaped like `indexes`. Raises BitstreamError."""
    cs = _constriction()
    if len(data) % 4:
        raise BitstreamError("corrupt bitstream: entropy stream is not whole 32-bit words")
    order, counts = _group(indexes, len(tables))
    try:
        coder = cs.stack.AnsCoder(np.frombuffer(data, "<u4").astype(np.uint32))
        s = np.empty(len(order), np.int32)                          # [n] table by table
        for seg, model in _segments(s, counts, tables):
            seg[:] = coder.decode(model, len(seg))
        esc = np.flatnonzero(s == np.repeat(tables.escape32, counts))  # [e] escaped positions in s
        cls = coder.decode(_U3, len(esc)).astype(np.int64) if len(esc) else np.zeros(0, np.int64)
        n0, n1, n2 = (int((cls == c).sum()) for c in range(3))
        r0 = coder.decode(_U8, n0) if n0 else np.zeros(0, np.int32)
        r1 = coder.decode(_U16, n1) if n1 else np.zeros(0, np.int32)
        h = coder.decode(_U16, 2 * n2).astype(np.int64).reshape(-1, 2) if n2 else np.zeros((0, 2), np.int64)
        end = int(coder.decode(_U16, 1)[0])
        empty = coder.is_empty()
    except BitstreamError:
        raise
    except Exception as e:  # constriction reports malformed input as ValueError
        raise BitstreamError(f"corrupt bitstream: entropy stream rejected ({first_line(e)})") from None
    if end != END_MARKER:
        raise BitstreamError("corrupt bitstream: entropy stream ends early or does not match the model")
    if not empty:
        raise BitstreamError("corrupt bitstream: trailing data after the entropy stream")
    s += np.repeat(tables.offset32, counts)                         # values (int32, as stored below)
    if len(esc):
        ke = _tables_of(esc, counts)                                 # [e] tables of the escapes
        lo = tables.offset[ke]
        r = np.zeros(len(cls), np.int64)
        r[cls == 0], r[cls == 1] = r0, r1
        ev = _unzigzag(r, lo, lo + tables.escape[ke] - 1)
        ev[cls == 2] = ((h[:, 0] << 16) | h[:, 1]).astype(np.uint32).view(np.int32)
        if (ev < -(2 ** 31)).any() or (ev >= 2 ** 31).any():
            raise BitstreamError("corrupt bitstream: escaped value outside the int32 range")
        s[esc] = ev
    out = np.empty(len(s), np.int32)
    out[order] = s
    return out.reshape(np.shape(indexes))
