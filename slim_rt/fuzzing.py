"""A deterministic fuzzer for the decoder and the image reader, run in worker subprocesses.

    cases = slim_cases(valid_files, n, seed) + image_cases(n, seed)
    results = run_cases(cases, model_dir)        # one outcome per case
    summary(results)                             # {"BitstreamError": 812, "ok": 40, ...}

A worker process decodes (or reads) the cases in order and reports one line per case; a case that
kills the worker (a signal) or runs past `timeout_s` is recorded as "signal N" / "hang", and a fresh
worker goes on with the next case. Allowed outcomes (ALLOWED): a clean BitstreamError,
ModelMismatchError, ResourceLimitError or ValueError, or "ok": a valid image of the declared size,
decoded twice to the same pixels. `tests/test_fuzz.py` runs a bounded set in CI;
`benchmarks/fuzz.py` a long run.
"""
from __future__ import annotations

import io
import os
import pickle
import queue
import random
import struct
import subprocess
import sys
import tempfile
import threading
import zlib
from collections import Counter
from pathlib import Path

ALLOWED = {"ok", "BitstreamError", "ModelMismatchError", "ResourceLimitError", "ValueError"}
Case = tuple  # (kind "slim" | "image" | "selftest", name, bytes)


# -- case generation ------------------------------------------------------------------------------
def _fields(data: bytes) -> dict:
    """Byte offsets of a valid .slim file's fields (docs/bitstream.md)."""
    from slim_rt import bitstream as bsf
    pos = bsf._FIXED.size
    ncap, p = bsf._read_varint(data, pos, "caption")
    cap_end = p + ncap
    nz, p2 = bsf._read_varint(data, cap_end, "z")
    ny, p3 = bsf._read_varint(data, p2, "y")
    return {"cap_len": (pos, p), "cap": (p, cap_end), "nz": (cap_end, p2), "ny": (p2, p3),
            "z": (p3, p3 + nz), "y": (p3 + nz, p3 + nz + ny)}


def _recrc(body: bytes) -> bytes:
    return body + struct.pack(">I", zlib.crc32(body))


def _rebuild(data: bytes, cap: bytes | None = None, z: bytes | None = None, y: bytes | None = None,
             fixed: bytes | None = None) -> bytes:
    from slim_rt import bitstream as bsf
    f = _fields(data)
    cap = data[slice(*f["cap"])] if cap is None else cap
    z = data[slice(*f["z"])] if z is None else z
    y = data[slice(*f["y"])] if y is None else y
    fixed = data[:bsf._FIXED.size] if fixed is None else fixed
    return _recrc(fixed + bsf._varint(len(cap)) + cap + bsf._varint(len(z)) + bsf._varint(len(y)) + z + y)


def _mutate(rng: random.Random, data: bytes, others: list[bytes]) -> tuple[str, bytes]:
    body = data[:-4]
    f = _fields(data)
    kind = rng.choice(["truncate", "flip", "flip-crc", "flip-stream", "field", "stream", "splice",
                       "insert-delete", "varint"])
    if kind == "truncate":
        return kind, data[:rng.randrange(len(data))]
    if kind == "flip":
        b = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        return kind, bytes(b)
    if kind in ("flip-crc", "flip-stream"):
        b = bytearray(body)
        lo, hi = (f["z"][0], len(body)) if kind == "flip-stream" else (0, len(body))
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(lo, hi)] ^= 1 << rng.randrange(8)
        return kind, _recrc(bytes(b))
    if kind == "field":
        b = bytearray(body)
        off, fmt, vals = rng.choice([(9, ">H", [0, 1, 63, 64, 65, 127, 8192, 8193, 4880, 65535]),
                                     (11, ">H", [0, 1, 63, 64, 65, 127, 8192, 8193, 4880, 65535]),
                                     (13, ">B", [0, 1, 2, 3, 255]), (14, ">B", [0, 1, 8, 9, 255]),
                                     (4, ">B", [0, 1, 2, 3, 255]), (5, ">I", [0, 0xFFFFFFFF])])
        v = rng.choice(vals) if rng.random() < 0.7 else rng.randrange(1 << (8 * struct.calcsize(fmt)))
        struct.pack_into(fmt, b, off, v)
        if rng.random() < 0.3:  # both sides
            struct.pack_into(">HH", b, 9, rng.choice([1, 64, 70, 8192, 4880]), rng.choice([1, 64, 90, 4880, 8192]))
        return kind, _recrc(bytes(b))
    if kind == "stream":
        which = rng.choice(["z", "y"])
        n = rng.choice([0, 4, 8, 64, 4096, 1 << 16, 1 << 20])
        fill = rng.choice(["ff", "00", "random", "ff-end1", "words"])
        if fill == "ff":
            s = b"\xff" * n
        elif fill == "00":
            s = b"\x00" * n
        elif fill == "ff-end1":
            s = b"\xff" * max(n - 4, 0) + b"\x01\x00\x00\x00"
        elif fill == "words":
            s = struct.pack(f"<{n // 4}I", *[rng.choice([0, 1, 0x5A17, 0xFFFF0000, 0x80000000]) for _ in range(n // 4)])
        else:
            s = rng.randbytes(n)
        return f"stream-{which}-{fill}-{n}", _rebuild(data, **{which: s})
    if kind == "splice" and others:
        o = rng.choice(others)
        fo = _fields(o)
        part = rng.choice(["z", "y", "both"])
        z = o[slice(*fo["z"])] if part in ("z", "both") else None
        y = o[slice(*fo["y"])] if part in ("y", "both") else None
        return f"splice-{part}", _rebuild(data, z=z, y=y)
    if kind == "insert-delete":
        b = bytearray(body)
        for _ in range(rng.randint(1, 3)):
            p = rng.randrange(len(b) + 1)
            if rng.random() < 0.5 and p < len(b):
                del b[p:p + rng.randint(1, 4)]
            else:
                b[p:p] = rng.randbytes(rng.randint(1, 4))
        return kind, _recrc(bytes(b))
    # varint / caption edits
    choice = rng.choice(["overlong", "huge-cap", "bad-utf8", "long-cap", "cap-len"])
    lo, hi = f["cap_len"]
    if choice == "overlong":
        return "varint-overlong", _recrc(body[:lo] + bytes([body[lo] | 0x80, 0x00]) + body[hi:])
    if choice == "huge-cap":
        return "varint-huge-caption", _recrc(body[:lo] + b"\xff\xff\xff\xff\x0f" + body[hi:])
    if choice == "bad-utf8":
        return "caption-bad-utf8", _rebuild(data, cap=b"\xc3\x28\xff")
    if choice == "long-cap":
        return "caption-long", _rebuild(data, cap=b"a" * rng.choice([255, 256, 5000]))
    return "varint-caption-len", _recrc(body[:lo] + bytes([rng.randrange(256)]) + body[hi:])


def bomb(valid: bytes, w: int = 8192, h: int = 4880) -> bytes:
    """The issue's 38-byte decode bomb: a valid header declaring w x h, two 8-byte streams."""
    return _recrc(valid[:9] + struct.pack(">HH", w, h) + valid[13:15] + b"\x00\x08\x08" + b"\x00" * 16)


def slim_cases(valid: list[bytes], n: int, seed: int = 0) -> list[Case]:
    """The valid files themselves, fixed crafted files (the issue's), then `n` random mutations."""
    rng = random.Random(seed)
    cases: list[Case] = [("slim", "valid", d) for d in valid]
    d = valid[0]
    cases += [("slim", "z-1MiB-ff", _rebuild(d, z=b"\xff" * (1 << 20))),
              ("slim", "y-1MiB-ff", _rebuild(d, y=b"\xff" * (1 << 20))),
              ("slim", "bomb-8192x4880", bomb(d)),
              ("slim", "overlong-caption-varint", _recrc(d[:15] + b"\x80\x80\x00" + d[16:-4]))]
    while len(cases) < len(valid) + 4 + n:
        base = rng.choice(valid)
        name, data = _mutate(rng, base, [v for v in valid if v is not base])
        cases.append(("slim", name, data))
    return cases


def _png_bomb(w: int, h: int) -> bytes:
    def chunk(t, payload):
        return struct.pack(">I", len(payload)) + t + payload + struct.pack(">I", zlib.crc32(t + payload))
    idat = zlib.compress(b"\0" * (1 + w * 3) * min(h, 4))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def image_cases(n: int, seed: int = 0) -> list[Case]:
    """Valid, truncated, bit-flipped and garbage PNG/JPEG/WebP files, and decompression bombs."""
    import numpy as np
    from PIL import Image
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    valid = []
    for fmt, size in (("PNG", (80, 64)), ("JPEG", (96, 72)), ("WEBP", (64, 64)), ("PNG", (64, 200))):
        buf = io.BytesIO()
        Image.fromarray(nrng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format=fmt)
        valid.append((fmt.lower(), buf.getvalue()))
    cases: list[Case] = [("image", f"valid-{f}", b) for f, b in valid]
    cases += [("image", "png-bomb-100000x100000", _png_bomb(100000, 100000)),
              ("image", "png-bomb-8192x8192", _png_bomb(8192, 8192)),
              ("image", "png-9000x64", _png_bomb(9000, 64)), ("image", "empty", b"")]
    while len(cases) < n:
        f, b = rng.choice(valid)
        kind = rng.choice(["truncate", "flip", "garbage", "header-only"])
        if kind == "truncate":
            b = b[:rng.randrange(len(b))]
        elif kind == "flip":
            bb = bytearray(b)
            for _ in range(rng.randint(1, 8)):
                bb[rng.randrange(len(bb))] ^= 1 << rng.randrange(8)
            b = bytes(bb)
        elif kind == "garbage":
            b = rng.randbytes(rng.choice([1, 16, 1000, 100000]))
        else:
            b = b[:rng.choice([8, 16, 32, 64])] + rng.randbytes(64)
        cases.append(("image", f"{f}-{kind}", b))
    return cases


# -- running in workers ----------------------------------------------------------------------------
def _worker(model_dir: str, cases_file: str, start: int) -> None:
    import torch
    import slim_rt
    from slim_rt.errors import BitstreamError, ModelMismatchError, ResourceLimitError
    from slim_rt.images import to_tensor
    torch.set_num_threads(1)
    with open(cases_file, "rb") as fh:
        cases = pickle.load(fh)
    dec = None  # loaded on the first .slim case
    tmp = Path(tempfile.mkdtemp())
    print("ready", flush=True)
    for i in range(start, len(cases)):
        kind, name, data = cases[i]
        try:
            if kind == "selftest":
                if name == "crash":
                    os.kill(os.getpid(), 11)
                if name == "hang":
                    threading.Event().wait()
                outcome = "ok"
            elif kind == "image":
                p = tmp / "case.bin"
                p.write_bytes(data)
                t = to_tensor(p)
                outcome = "ok" if t.ndim == 3 and t.shape[0] == 3 and bool(torch.isfinite(t).all()) else "bad-image"
            else:
                dec = dec or slim_rt.Decoder.from_pretrained(model_dir)
                img = dec.decode(data, output="tensor")
                h = slim_rt.inspect(data)
                if tuple(img.shape) != (3, h["height"], h["width"]) or not bool(torch.isfinite(img).all()):
                    outcome = "bad-size"
                elif not torch.equal(img, dec.decode(data, output="tensor")):
                    outcome = "nondeterministic"
                else:
                    outcome = "ok"
        except (BitstreamError, ModelMismatchError, ResourceLimitError) as e:
            outcome = type(e).__name__
        except ValueError:
            outcome = "ValueError"
        except Exception as e:  # noqa: BLE001 - every other type is a finding
            outcome = f"unexpected {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        print(f"{i}\t{outcome}", flush=True)


def _no_core_dumps() -> None:
    import resource
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _lines(stream, q: queue.Queue) -> None:
    for line in stream:
        q.put(line)
    q.put(None)


def run_cases(cases: list[Case], model_dir: str | Path, timeout_s: float = 30.0,
              startup_s: float = 300.0) -> list[dict]:
    """Run every case in worker subprocesses -> [{"kind", "name", "outcome"}] in case order."""
    out: list[str | None] = [None] * len(cases)
    with tempfile.TemporaryDirectory() as d:
        cases_file = Path(d) / "cases.pkl"
        cases_file.write_bytes(pickle.dumps(list(cases)))
        start = 0
        while start < len(cases):
            proc = subprocess.Popen([sys.executable, "-m", "slim_rt.fuzzing", "worker", str(model_dir),
                                     str(cases_file), str(start)], stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True,
                                    preexec_fn=_no_core_dumps)
            q: queue.Queue = queue.Queue()
            threading.Thread(target=_lines, args=(proc.stdout, q), daemon=True).start()
            nxt, ready = start, False
            while nxt < len(cases):
                try:
                    line = q.get(timeout=timeout_s if ready else startup_s)
                except queue.Empty:
                    proc.kill()
                    proc.wait()
                    if not ready:
                        raise RuntimeError("fuzz worker did not start") from None
                    out[nxt], nxt = "hang", nxt + 1
                    break
                if line is None:
                    rc = proc.wait()
                    if not ready:
                        raise RuntimeError(f"fuzz worker failed to start (exit {rc})")
                    out[nxt], nxt = (f"signal {-rc}" if rc < 0 else f"exit {rc}"), nxt + 1
                    break
                if line.strip() == "ready":
                    ready = True
                    continue
                i, outcome = line.rstrip("\n").split("\t", 1)
                out[int(i)], nxt = outcome, int(i) + 1
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            start = nxt
    return [{"kind": c[0], "name": c[1], "outcome": o} for c, o in zip(cases, out)]


def summary(results: list[dict]) -> dict[str, int]:
    return dict(Counter(r["outcome"] for r in results).most_common())


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "worker":
    _worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))
