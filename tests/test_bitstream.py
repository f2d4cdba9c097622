import random

import pytest

import slim_rt
from slim_rt import bitstream as bsf
from slim_rt.errors import BitstreamError
from tests.conftest import rand_image


def _sample():
    return bsf.Bitstream(bsf.Header(300, 201, 1, 2, "a photo of a ü cat", b"\x01\x02\x03\x04"),
                         bytes(range(40)), bytes(range(100, 160)))


def test_pack_parse_roundtrip():
    bs = _sample()
    assert bsf.parse(bsf.pack(bs)) == bs


def test_every_truncation_raises():
    data = bsf.pack(_sample())
    for n in range(len(data)):
        with pytest.raises(BitstreamError):
            bsf.parse(data[:n])


def test_byte_flips_raise():
    data = bsf.pack(_sample())
    for pos in range(len(data)):
        for bit in random.sample(range(8), 3):
            bad = bytearray(data)
            bad[pos] ^= 1 << bit
            with pytest.raises(BitstreamError):
                bsf.parse(bytes(bad))


def test_appended_garbage_and_wrong_types():
    data = bsf.pack(_sample())
    with pytest.raises(BitstreamError):
        bsf.parse(data + b"\x00")
    with pytest.raises(BitstreamError):
        bsf.parse("SLIM")  # type: ignore[arg-type]
    with pytest.raises(BitstreamError, match="magic"):
        bsf.parse(b"\x89PNG\r\n\x1a\n" + b"0" * 40)
    assert issubclass(BitstreamError, ValueError)


def test_real_file_truncations_and_flips(codec):
    enc, dec = codec
    data = enc.encode(rand_image(64, 64))
    for n in range(len(data)):
        with pytest.raises(BitstreamError):
            dec.decode(data[:n])
    for pos in random.sample(range(len(data)), min(60, len(data))):
        bad = bytearray(data)
        bad[pos] ^= 1 << random.randrange(8)
        with pytest.raises(BitstreamError):
            dec.decode(bytes(bad))


def test_inspect_fields(codec):
    enc, _ = codec
    data = enc.encode(rand_image(70, 90), caption="hello")
    info = slim_rt.inspect(data)
    assert (info["width"], info["height"], info["caption"], info["rate"]) == (90, 70, "hello", 0)
    b = info["bytes"]
    assert b["total"] == len(data) == b["header"] + b["caption"] + b["z"] + b["y"]
    assert info["fingerprint"] == enc.model.fingerprint.hex()


def test_crafted_lengths_and_sizes_with_valid_crc():
    import struct
    import zlib

    def craft(w, h, z, y):
        body = (bsf._FIXED.pack(bsf.MAGIC, bsf.VERSION, b"\x01\x02\x03\x04", w, h, 0, 0)
                + bsf._varint(0) + bsf._varint(len(z)) + bsf._varint(len(y)) + z + y)
        return body + struct.pack(">I", zlib.crc32(body))

    assert bsf.parse(craft(64, 64, b"\x00" * 8, b"\x00" * 12)).header.width == 64
    for z, y in ((b"", b"\x00" * 8), (b"\x00" * 9, b"\x00" * 8), (b"\x00" * 8, b"\x00" * 10)):
        with pytest.raises(BitstreamError, match="not an ANS stream"):
            bsf.parse(craft(64, 64, z, y))
    with pytest.raises(BitstreamError, match="out of range"):
        bsf.parse(craft(8192, 8000, b"\x00" * 8, b"\x00" * 8))  # 65 MP: more than any encoder accepts
