"""Joint device-resident training (slim_rt.training.joint) on CPU: pack, both phases, assemble, code."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import slim_rt
from slim_rt.captions import FixedCaptioner
from slim_rt.training.joint import load_states, main, parse_points, save_states, split_indices, window_step


def test_points_parse_and_reject():
    assert [(p.scale, p.target) for p in parse_points("0.5:0.012,1:0.1")] == [(0.5, 0.012), (1.0, 0.1)]
    for bad in ("", "0.5", "2:0.1", "0.5:-1", "a:b"):
        with pytest.raises(ValueError, match="scale"):
            parse_points(bad)


def test_held_out_images_and_their_mirrors_are_never_trained_on():
    held, train = split_indices(7, 3)                  # rows 0-6 originals, 7-13 their mirrors
    assert held.tolist() == [4, 5, 6] and train.tolist() == [0, 1, 2, 3, 7, 8, 9, 10]
    assert not set(train.tolist()) & ({4, 5, 6} | {11, 12, 13})
    held, train = split_indices(4, 0)
    assert held.numel() == 0 and train.tolist() == list(range(8))
    for bad in (-1, 4, 9):
        with pytest.raises(ValueError, match="--holdout must leave training images"):
            split_indices(4, bad)


def test_window_offsets_are_whole_latents_at_every_scale():
    assert window_step([1.0]) == 8 and window_step([0.5, 1.0]) == 16
    assert window_step([0.25, 1.0]) == 32 and window_step([0.75]) == 32   # 0.75: 24 px would be 2.25 latents
    from types import SimpleNamespace

    from slim_rt.training.joint import Run
    gen = torch.Generator().manual_seed(0)
    run = SimpleNamespace(crop=256, views=[256, 288], step_px=16)
    seen = {Run.draw_window(run, gen) for _ in range(300)}     # the whole 256 view, or a window of the 288 one
    assert seen == {(256, 0, 0)} | {(288, y, x) for y in (0, 16, 32) for x in (0, 16, 32)}  # none past the edge
    assert Run.draw_window(SimpleNamespace(crop=256, views=[256], step_px=16), gen) is None


def test_pack_train_assemble_and_code(tmp_path):
    from slim_rt.testing import build_tiny_base
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):  # smooth images with some texture, one of them portrait
        h, w = (150, 130) if i == 0 else (130, 170)
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        img = np.stack([np.sin(6 * xx + i), np.cos(5 * yy - i), xx * yy], -1) * 0.4 + 0.5
        img += rng.normal(0, 0.05, img.shape)
        Image.fromarray((img.clip(0, 1) * 255).astype(np.uint8)).save(data / f"im{i}.png")
    pack = tmp_path / "pack.pt"
    main(["pack", "--data", str(data), "--size", "128", "--out", str(pack)])
    packed = torch.load(pack, weights_only=False)
    assert len(packed["webp"]) == 6 and packed["mask"].shape == (6, 16, 16) and packed["size"] == 128
    assert packed["label"].tolist() == [-1] * 6  # no labels.csv: unlabelled (the machine term needs none)

    base = build_tiny_base(tmp_path / "base", seed=1, autoencoder="tae")
    out = tmp_path / "train"
    main(["train", "--pack", str(pack), "--base", str(base), "--points", "0.5:0.05,1:0.2", "--preset", "test",
          "--batch", "4", "--latent-seconds", "4", "--machine-seconds", "4", "--holdout", "2", "--out", str(out)])
    meta = json.loads((out / "points.json").read_text())
    assert set(meta["phases"]) == {"latent", "machine"} and meta["images"] == 4 and meta["holdout"] == 2
    assert all(meta["phases"][p]["steps"] > 0 for p in meta["phases"])
    logs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    machine = [rec for rec in logs if rec.get("phase") == "machine" and "points" in rec]
    assert machine and all("kl" in pt for rec in machine for pt in rec["points"])
    # every machine record scores the 2 held-out images, per rate point
    held = [h for rec in machine for h in rec["held_out"]]
    assert len(held) == 2 * len(machine) and all(h["kl"] >= 0 and 0 <= h["agree"] <= 1 for h in held)
    with pytest.raises(ValueError, match="--holdout must leave training images"):
        main(["train", "--pack", str(pack), "--base", str(base), "--points", "1:0.2", "--preset", "test",
              "--machine-seconds", "1", "--holdout", "6", "--out", str(tmp_path / "none-left")])
    # random windows: 128 x 128 windows of the 192 crops resized to 128, 160 and 192, offsets in whole
    # latents at 0.5x (16 px); both phases train, the held-out images are scored on the whole 128 view
    big = tmp_path / "pack192.pt"
    main(["pack", "--data", str(data), "--size", "192", "--out", str(big)])
    win = tmp_path / "windows"
    main(["train", "--pack", str(big), "--base", str(base), "--points", "0.5:0.05,1:0.2", "--preset", "test",
          "--batch", "4", "--latent-seconds", "2", "--machine-seconds", "3", "--holdout", "2", "--crop", "128",
          "--out", str(win)])
    wmeta = json.loads((win / "points.json").read_text())
    assert wmeta["crop"] == 128 and all(wmeta["phases"][p]["steps"] > 0 for p in ("latent", "machine"))
    wlogs = [json.loads(line) for line in (win / "log.jsonl").read_text().splitlines()]
    assert any("held_out" in rec for rec in wlogs)
    for bad in ("136", "256", "64"):  # not a multiple of 16, larger than the pack, 32 coded px at 0.5x
        with pytest.raises(ValueError, match="--crop"):
            main(["train", "--pack", str(big), "--base", str(base), "--points", "0.5:0.05,1:0.2", "--preset",
                  "test", "--machine-seconds", "1", "--crop", bad, "--out", str(tmp_path / "bad-crop")])
    lat, mach = load_states(out, "latent"), load_states(out, "machine")
    assert set(lat) == set(mach) == {0, 1}
    for r in range(2):  # the machine phase moved the weights the latent phase left
        a, b = lat[r], mach[r]
        assert set(a) == set(b) and any(not torch.equal(a[k], b[k]) for k in a)
    save_states(tmp_path / "chunks", "x", [lat[0], lat[1]], max_bytes=1)  # one point a file when they must
    assert len(list((tmp_path / "chunks").glob("x-*.safetensors"))) == 2
    assert all(torch.equal(load_states(tmp_path / "chunks", "x")[1][k], lat[1][k]) for k in lat[1])

    model = tmp_path / "model"
    main(["assemble", str(out), "--phase", "machine", "--base", str(base), "--rates", "1,0", "--name", "joint",
          "--out", str(model)])
    cfg = slim_rt.config.SlimConfig.load(model)
    assert cfg.scales == (1.0, 0.5) and cfg.autoencoder == "tae" and len(cfg.rates) == 2
    enc = slim_rt.Encoder.from_pretrained(str(model), captioner=FixedCaptioner("a cat"), steps=0)
    dec = slim_rt.Decoder(enc.pipeline)
    img = torch.rand(3, 64, 96)
    sizes = []
    for rate in (0, 1):
        bits = enc.encode(img, rate=rate)
        out_img = dec.decode(bits, output="tensor")
        assert out_img.shape == (3, 64, 96) and torch.isfinite(out_img).all()
        sizes.append(len(bits))
    # a later run continues from the assembled model (its weights and lambdas), e.g. on another GPU session
    more = tmp_path / "more"
    main(["train", "--pack", str(pack), "--base", str(base), "--points", "1:0.2,0.5:0.05", "--preset", "test",
          "--batch", "4", "--latent-seconds", "0", "--machine-seconds", "2", "--init", str(model), "--out", str(more)])
    lams = json.loads((more / "points.json").read_text())["phases"]["machine"]["lambdas"]
    assert len(lams) == 2 and all(lam > 0 for lam in lams)
    with pytest.raises(ValueError, match="must match"):
        main(["train", "--pack", str(pack), "--base", str(base), "--points", "1:0.2", "--preset", "test",
              "--machine-seconds", "1", "--init", str(model), "--out", str(tmp_path / "bad")])
    with pytest.raises(ValueError, match="no trained"):
        from slim_rt.training.joint import assemble
        (out / "points.json").write_text(json.dumps({**meta, "phases": {"latent": meta["phases"]["latent"]}}))
        assemble(out, "machine", base, tmp_path / "m2")
