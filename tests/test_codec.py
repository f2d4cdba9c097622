import io

import numpy as np
import pytest
import torch
from PIL import Image

import slim_rt
from slim_rt.errors import ModelMismatchError
from tests.conftest import rand_image


@pytest.mark.parametrize("hw", [(65, 97), (300, 201), (64, 64)])
def test_roundtrip_odd_sizes_and_bpp(codec, hw):
    enc, dec = codec
    img = rand_image(*hw)
    data = enc.encode(img)
    out = dec.decode(data, output="tensor")
    assert out.shape == (3, *hw)
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    info = slim_rt.inspect(data)
    assert info["bpp"] == 8 * len(data) / (hw[0] * hw[1])
    pil = dec.decode(data)
    assert pil.size == (hw[1], hw[0])


def test_y_hat_identical_on_encoder_and_decoder(codec):
    enc, dec = codec
    pipe = enc.pipeline
    comp = pipe.model.compressors[1]
    for hw in [(64, 64), (65, 97), (130, 200)]:
        img = rand_image(*hw)[None]
        x = slim_rt.images.pad_to_multiple(img * 2 - 1, pipe.model.pixel_multiple)
        with torch.inference_mode():
            lat = pipe.model.base.encode_latent(x)
            y = comp.g_a(lat)
            out = comp.compress_with(y, comp.h_a(y), comp.h_s_mean)
            y_dec = comp.decompress_with(out["strings"], out["z_shape"], comp.h_s_mean)
        assert torch.equal(out["y_hat"], y_dec)


def test_rates_differ_and_are_recorded(codec):
    enc, dec = codec
    img = rand_image(128, 128)
    d0, d1 = enc.encode(img, rate=0), enc.encode(img, rate=1)
    assert slim_rt.inspect(d0)["rate"] == 0 and slim_rt.inspect(d1)["rate"] == 1
    assert len(d0) < len(d1)
    assert dec.decode(d1, output="tensor").shape == (3, 128, 128)
    with pytest.raises(ValueError, match="rate"):
        enc.encode(img, rate=5)


def test_caption_bytes_count(codec):
    enc, _ = codec
    img = rand_image(64, 64)
    a, b = enc.encode(img, caption=""), enc.encode(img, caption="x" * 30)
    assert len(b) - len(a) == 30
    assert slim_rt.inspect(a)["caption"] == ""
    with pytest.raises(ValueError, match="caption"):
        enc.encode(img, caption="x" * 1000)


def test_auto_caption_only_when_enhancement_is_suggested(codec):
    from slim_rt import bitstream as bsf
    from slim_rt.captions import FixedCaptioner
    enc, dec = codec
    img = rand_image(64, 64)
    k1 = slim_rt.Encoder(enc.pipeline, captioner=FixedCaptioner("a photo of a cat"), steps=1)
    k0 = slim_rt.Encoder(enc.pipeline, captioner=FixedCaptioner("a photo of a cat"), steps=0)
    with_cap, without = k1.encode(img), k0.encode(img)
    assert slim_rt.inspect(with_cap)["caption"] == "a photo of a cat"
    assert slim_rt.inspect(without)["caption"] == "" and slim_rt.inspect(without)["bytes"]["caption"] == 0
    assert slim_rt.inspect(k0.encode(img, caption="kept"))["caption"] == "kept"  # an explicit one is sent
    # the coded streams do not depend on the caption: with_caption gives the encoder's own bytes
    k0_written = bsf.parse(without)
    assert bsf.with_caption(with_cap, "") == bsf.pack(bsf.Bitstream(
        bsf.Header(64, 64, 0, 1, "", k0_written.header.fingerprint), k0_written.z, k0_written.y))
    assert len(without) == len(with_cap) - len("a photo of a cat")  # its length byte stays (0)
    assert torch.equal(dec.decode(without, steps=0, output="tensor"), dec.decode(with_cap, steps=0, output="tensor"))


def test_decode_is_deterministic_and_steps_override(codec):
    enc, dec = codec
    data = enc.encode(rand_image(64, 96))
    a = dec.decode(data, output="tensor")
    b = dec.decode(data, output="tensor")
    assert torch.equal(a, b)
    k0 = dec.decode(data, steps=0, output="tensor")
    assert not torch.equal(a, k0)  # steps=1 from the bitstream ran the UNet
    assert set(dec.timings) >= {"entropy_decode", "latent_synthesis", "vae_decoder"}


def test_batch_matches_single(codec):
    enc, dec = codec
    imgs = [rand_image(64, 64), rand_image(64, 64), rand_image(65, 97)]
    datas = enc.encode_batch(imgs, captions=["a", "b", "c"])
    singles = [enc.encode(im, caption=c) for im, c in zip(imgs, "abc")]
    assert datas == singles
    outs = dec.decode_batch(datas, output="tensor")
    for d, o in zip(datas, outs):
        assert torch.allclose(dec.decode(d, output="tensor"), o, atol=1e-5)


def test_foreign_model_raises_mismatch(codec, foreign_dir):
    enc, _ = codec
    other = slim_rt.Decoder.from_pretrained(str(foreign_dir))
    with pytest.raises(ModelMismatchError):
        other.decode(enc.encode(rand_image(64, 64)))


def _png(img: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    buf.seek(0)
    return Image.open(buf)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "I;16", "CMYK"])
def test_image_modes(codec, mode):
    enc, dec = codec
    rgb = Image.fromarray((np.random.rand(70, 80, 3) * 255).astype(np.uint8))
    if mode == "I;16":
        img = Image.fromarray((np.random.rand(70, 80) * 65535).astype(np.uint16))
        img = _png(img)
    elif mode == "CMYK":
        img = rgb.convert("CMYK")
    else:
        img = _png(rgb.convert(mode))
    out = dec.decode(enc.encode(img))
    assert out.size == (80, 70) and out.mode == "RGB"


def test_input_types_and_errors(codec):
    enc, _ = codec
    arr = (np.random.rand(64, 64, 3) * 255).astype(np.uint8)
    assert enc.encode(arr) == enc.encode(torch.from_numpy(arr).permute(2, 0, 1).contiguous())
    with pytest.raises(ValueError, match="at least 64"):
        enc.encode(rand_image(32, 100))
    with pytest.raises(ValueError, match="larger than"):
        enc.encode(Image.new("RGB", (9000, 64)))
    with pytest.raises(ValueError):
        enc.encode(np.zeros((64, 64, 3), dtype=np.float64))
    with pytest.raises(ValueError):
        enc.encode(torch.full((3, 64, 64), float("nan")))
    with pytest.raises(ValueError, match="unsupported image type"):
        enc.encode(12)


def test_exif_orientation(codec, tmp_path):
    enc, dec = codec
    img = Image.fromarray((np.random.rand(64, 128, 3) * 255).astype(np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90
    p = tmp_path / "o.jpg"
    img.save(p, exif=exif)
    out = dec.decode(enc.encode(p))
    assert out.size == (64, 128)


def test_warmup_and_timings(codec):
    _, dec = codec
    dec.warmup((64, 64))
    assert dec.timings["vae_decoder"] > 0
