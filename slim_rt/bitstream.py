"""The `.slim` container (specified in docs/bitstream.md).

    offset size  field
    0      4     magic b"SLIM"
    4      1     format version (2: constriction ANS streams; 1 = CompressAI rANS, refused)
    5      4     model fingerprint (first 4 bytes of its SHA-256)
    9      2     width  (uint16, big endian, original image)
    11     2     height (uint16)
    13     1     rate index
    14     1     enhancement steps K suggested by the encoder
    15     var   caption length (canonical LEB128 varint, <= 255) + caption (UTF-8)
    ..     var   z string length (varint) + y string length (varint)
    ..           z string, y string (ANS, slim_rt.entropy.coder)
    end-4  4     CRC-32 of every byte before it (big endian)

Every field is validated on parse; anything malformed raises BitstreamError with one line.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, replace

from slim_rt.errors import BitstreamError

MAGIC = b"SLIM"
VERSION = 2
FINGERPRINT_BYTES = 4
MAX_SIDE = 8192               # the same limits as the encoder's input (slim_rt.images)
MAX_PIXELS = 40_000_000
MAX_STEPS = 8
MAX_CAPTION_BYTES = 255       # the format's cap (a model may set a lower one: config.max_caption_bytes)
_FIXED = struct.Struct(">4sB4sHHBB")  # magic, version, fingerprint, w, h, rate, steps


@dataclass(frozen=True)
class Header:
    width: int
    height: int
    rate: int
    steps: int
    caption: str
    fingerprint: bytes
    version: int = VERSION


@dataclass(frozen=True)
class Bitstream:
    header: Header
    z: bytes
    y: bytes

    @property
    def nbytes(self) -> int:
        return len(pack(self))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varint(buf: bytes, pos: int, what: str) -> tuple[int, int]:
    """Canonical LEB128 only: no overlong forms (a trailing 0x00 byte), at most 5 bytes."""
    n = shift = 0
    for i in range(5):
        if pos + i >= len(buf):
            raise BitstreamError(f"truncated bitstream: {what} length cut off")
        b = buf[pos + i]
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            if b == 0 and i:
                raise BitstreamError(f"corrupt bitstream: {what} length is an overlong varint")
            return n, pos + i + 1
    raise BitstreamError(f"corrupt bitstream: {what} length is not a valid varint")


def pack(bs: Bitstream) -> bytes:
    h = bs.header
    if not (1 <= h.width <= MAX_SIDE and 1 <= h.height <= MAX_SIDE):
        raise ValueError(f"image size {h.width}x{h.height} outside 1..{MAX_SIDE}")
    if not (0 <= h.rate < 256 and 0 <= h.steps <= MAX_STEPS):
        raise ValueError(f"rate must be in [0, 255] and steps in [0, {MAX_STEPS}]")
    if len(h.fingerprint) != FINGERPRINT_BYTES:
        raise ValueError("fingerprint must be 4 bytes")
    cap = h.caption.encode("utf-8")
    if len(cap) > MAX_CAPTION_BYTES:
        raise ValueError(f"caption longer than {MAX_CAPTION_BYTES} UTF-8 bytes")
    body = (_FIXED.pack(MAGIC, VERSION, h.fingerprint, h.width, h.height, h.rate, h.steps)
            + _varint(len(cap)) + cap + _varint(len(bs.z)) + _varint(len(bs.y)) + bs.z + bs.y)
    return body + struct.pack(">I", zlib.crc32(body))


def with_caption(data: bytes, caption: str) -> bytes:
    """The same file with another caption (e.g. "" for a K=0 decode, which never reads it): the bytes an
    encoder given that caption writes, since the coded streams do not depend on it."""
    bs = parse(data)
    return pack(Bitstream(replace(bs.header, caption=caption), bs.z, bs.y))


def parse(data: bytes) -> Bitstream:
    """bytes -> Bitstream; raises BitstreamError on any malformed, truncated or corrupt input."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BitstreamError(f"bitstream must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < 4 or data[:4] != MAGIC:
        raise BitstreamError("not a .slim bitstream (bad magic)")
    if len(data) < _FIXED.size + 3 + 4:
        raise BitstreamError(f"truncated bitstream: {len(data)} bytes is shorter than any header")
    body, crc = data[:-4], struct.unpack(">I", data[-4:])[0]
    magic, version, fp, w, h, rate, steps = _FIXED.unpack_from(body, 0)
    if version == 1:
        raise BitstreamError("unsupported .slim format version 1 (CompressAI rANS streams, not decoded "
                             "since version 2 for safety): re-encode the image")
    if version != VERSION:
        raise BitstreamError(f"unsupported .slim format version {version} (this reader knows {VERSION})")
    if zlib.crc32(body) != crc:
        raise BitstreamError("corrupt bitstream: CRC-32 mismatch (truncated or altered)")
    if not (1 <= w <= MAX_SIDE and 1 <= h <= MAX_SIDE and w * h <= MAX_PIXELS):
        raise BitstreamError(f"corrupt bitstream: image size {w}x{h} out of range")
    if steps > MAX_STEPS:
        raise BitstreamError(f"corrupt bitstream: enhancement steps {steps} > {MAX_STEPS}")
    pos = _FIXED.size
    ncap, pos = _read_varint(body, pos, "caption")
    if ncap > MAX_CAPTION_BYTES:
        raise BitstreamError(f"corrupt bitstream: caption of {ncap} bytes (at most {MAX_CAPTION_BYTES})")
    if pos + ncap > len(body):
        raise BitstreamError("truncated bitstream: caption cut off")
    try:
        caption = body[pos:pos + ncap].decode("utf-8")
    except UnicodeDecodeError:
        raise BitstreamError("corrupt bitstream: caption is not valid UTF-8") from None
    pos += ncap
    nz, pos = _read_varint(body, pos, "z stream")
    ny, pos = _read_varint(body, pos, "y stream")
    if pos + nz + ny != len(body):
        raise BitstreamError(f"corrupt bitstream: stream lengths ({nz}+{ny}) do not match the "
                             f"{len(body) - pos} payload bytes")
    for n, what in ((nz, "z"), (ny, "y")):  # ANS output: whole 32-bit words, at least the end marker
        if n < 4 or n % 4:
            raise BitstreamError(f"corrupt bitstream: {what} stream of {n} bytes is not an ANS stream")
    z, y = body[pos:pos + nz], body[pos + nz:]
    return Bitstream(Header(w, h, rate, steps, caption, fp, version), z, y)
