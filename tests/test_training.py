"""Smoke tests: every training stage runs a few steps on tiny models, resumes, and the result loads."""
import csv
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import slim_rt
from slim_rt.captions import FixedCaptioner
from slim_rt.cli import main
from slim_rt.config import SlimConfig
from slim_rt.training import PRESETS, with_overrides
from slim_rt.training.run import assemble


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    rows = []
    for i in range(4):
        Image.fromarray((np.random.rand(80, 96, 3) * 255).astype(np.uint8)).save(d / f"im{i}.png")
        rows.append({"file": f"im{i}.png", "class_index": 281 + i, "wnid": "n0", "class_name": f"cat{i}",
                     "width": 96, "height": 80})
    with (d / "labels.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return d


def test_overrides():
    cfg = with_overrides(PRESETS["smoke-compressor"], ["steps=7", "lambdas=1,2,3", "roi=none"])
    assert (cfg.steps, cfg.lambdas, cfg.roi) == (7, (1.0, 2.0, 3.0), "none")
    with pytest.raises(ValueError, match="unknown training option"):
        with_overrides(cfg, ["nope=1"])


def _changed(before: dict, after: dict) -> int:
    """How many tensors of a state dict differ after training (same keys required)."""
    assert set(before) == set(after)
    return sum(not torch.equal(before[k].to(after[k].dtype), after[k]) for k in before)


def test_all_stages_train_resume_and_load(data, tmp_path):
    base = tmp_path / "base"
    assert main(["train", "base-vae", "--data", str(data), "--out", str(base), "--preset", "smoke-vae"]) == 0
    assert (base / "vae" / "config.json").is_file()
    assert main(["train", "base-unet", "--data", str(data), "--out", str(base), "--base", str(base),
                 "--preset", "smoke-unet"]) == 2  # base-vae checkpoint in that folder: refused
    unet = tmp_path / "unet"
    assert main(["train", "base-unet", "--data", str(data), "--out", str(unet), "--base", str(base),
                 "--preset", "smoke-unet"]) == 0
    comp = tmp_path / "comp"
    assert main(["train", "compressor", "--data", str(data), "--out", str(comp), "--base", str(unet),
                 "--preset", "smoke-compressor"]) == 0
    assert len(list((comp / "roi-cache").glob("*.png"))) == 4  # Grad-CAM masks cached
    vae_file = "vae/diffusion_pytorch_model.safetensors"
    assert _changed(load_file(str(base / vae_file)), load_file(str(unet / vae_file))) == 0  # base-unet: VAE kept
    rates = [load_file(str(comp / "compressor" / f"rate{r}.safetensors")) for r in (0, 1)]
    # resume: more steps continue from the checkpoint, and move only the resumed rate's weights
    assert main(["train", "compressor", "--data", str(data), "--out", str(comp), "--base", str(unet),
                 "--preset", "smoke-compressor", "--set", "steps=4", "--set", "rate=0"]) == 0
    steps = [json.loads(line)["step"] for line in (comp / "rate0" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert _changed(rates[0], load_file(str(comp / "compressor" / "rate0.safetensors"))) > len(rates[0]) // 2
    assert _changed(rates[1], load_file(str(comp / "compressor" / "rate1.safetensors"))) == 0
    turbo = tmp_path / "comp-turbo"  # the SD-Turbo preset: the assembled model gets the one-step schedule
    shutil.copytree(comp, turbo)
    assemble(turbo, unet, with_overrides(PRESETS["smoke-compressor"], ["enhance_preset=sd-turbo"]), "t")
    assert SlimConfig.load(turbo).enhance.timesteps == {"1": [499]}
    enh = tmp_path / "enh"
    assert main(["train", "enhancer", "--data", str(data), "--out", str(enh), "--base", str(comp),
                 "--preset", "smoke-enhancer"]) == 0
    assert (enh / "base" / "unet" / "config.json").is_file() and (enh / "base" / "vae").is_dir()
    assert (enh / "slim_config.json").is_file()  # the teacher is a SLIM model directory
    unet_file = "unet/diffusion_pytorch_model.safetensors"
    init_unet, teacher = load_file(str(unet / unet_file)), load_file(str(enh / "base" / unet_file))
    assert _changed(init_unet, teacher) > len(init_unet) // 2  # the enhancer fine-tuned the base UNet
    dist = tmp_path / "dist"
    assert main(["train", "distill", "--data", str(data), "--out", str(dist), "--base", str(enh),
                 "--preset", "smoke-distill"]) == 0
    student = SlimConfig.load(dist)
    assert student.enhance.distilled == (1, 2) and student.enhance.steps == 1
    assert _changed(teacher, load_file(str(dist / "base" / unet_file))) > len(teacher) // 2  # the student moved
    enc = slim_rt.Encoder.from_pretrained(str(dist), captioner=FixedCaptioner("a photo of a cat"))
    data_k = enc.encode(Image.fromarray((np.random.rand(64, 64, 3) * 255).astype(np.uint8)), rate=0)
    assert slim_rt.inspect(data_k)["steps"] == 1  # the student's K is the encoder's suggestion
    dec = slim_rt.Decoder(enc.pipeline)
    a, b = dec.decode(data_k, output="tensor"), dec.decode(data_k, output="tensor")
    assert torch.equal(a, b) and not torch.equal(a, dec.decode(data_k, steps=0, output="tensor"))
    enc = slim_rt.Encoder.from_pretrained(str(comp), captioner=FixedCaptioner("a photo of a cat"))
    dec = slim_rt.Decoder(enc.pipeline)
    img = Image.fromarray((np.random.rand(64, 80, 3) * 255).astype(np.uint8))
    assert dec.decode(enc.encode(img, rate=1)).size == (80, 64)


def test_compressor_loss_falls_on_a_fixed_batch(data, tmp_path):
    """The compressor stage's optimizer groups and loss train it: a dozen steps on one batch lower the
    rate-distortion loss, the RoI distortion, the rate and the bottleneck's aux loss, and move its weights."""
    from slim_rt.testing import build_tiny_base
    from slim_rt.training.data import ImageFolder
    from slim_rt.training.masks import MaskProvider
    from slim_rt.training.stages import CompressorStage
    from slim_rt.training.trainer import _collate
    torch.manual_seed(0)
    cfg = with_overrides(PRESETS["smoke-compressor"], ["roi=none"])
    ds = ImageFolder(data, cfg.crop, cfg.resize, align=8, train=False)
    stage = CompressorStage(cfg, build_tiny_base(tmp_path / "base", seed=0), 2.0, MaskProvider("none", ds), ds)
    batch = _collate([ds[0], ds[1]])
    init = {k: v.clone() for k, v in stage.comp.state_dict().items()}
    opt = torch.optim.Adam([{"params": p, "lr": lr} for p, lr in stage.parameters_groups()])
    stage.comp.eval()  # deterministic (rounding, no quantization noise): the same batch, the same loss surface
    logs = []
    for step in range(12):
        loss, log = stage.loss(batch, step)
        logs.append(log)
        opt.zero_grad()
        loss.backward()
        opt.step()
    first, last = logs[0], logs[-1]
    assert last["loss"] < 0.8 * first["loss"] and last["mse_roi"] < 0.7 * first["mse_roi"], logs
    assert last["bpp"] < first["bpp"] and last["aux"] < first["aux"], logs
    assert _changed(init, stage.comp.state_dict()) > len(init) // 2


def test_machine_stage_on_a_tae_model_from_two_folders(data, tmp_path):
    """The machine fine-tune (through the frozen decoder and classifier) runs on a TAE base, reads
    several data folders, changes the compressor and leaves a model that decodes."""
    from slim_rt.testing import build_tiny_random
    model = build_tiny_random(tmp_path / "tae", seed=1, autoencoder="tae")
    more = tmp_path / "more"
    more.mkdir()
    Image.fromarray((np.random.rand(90, 72, 3) * 255).astype(np.uint8)).save(more / "extra.png")  # unlabelled
    out = tmp_path / "machine"
    assert main(["train", "machine", "--data", str(data), str(more), "--out", str(out), "--base", str(model),
                 "--preset", "smoke-machine", "--set", "rate=1"]) == 0
    cfg = SlimConfig.load(out)
    assert cfg.autoencoder == "tae" and len(cfg.rates) == 2
    before, after = load_file(str(model / cfg.rates[1])), load_file(str(out / cfg.rates[1]))
    assert not torch.equal(before["g_s.0.weight"], after["g_s.0.weight"])        # fine-tuned
    assert torch.equal(load_file(str(model / cfg.rates[0]))["g_s.0.weight"],
                       load_file(str(out / cfg.rates[0]))["g_s.0.weight"])      # rate 0 untouched
    assert "kl" in json.loads((out / "rate1" / "log.jsonl").read_text().splitlines()[-1])
    enc = slim_rt.Encoder.from_pretrained(str(out), captioner=FixedCaptioner(""), steps=0)
    assert slim_rt.Decoder(enc.pipeline).decode(enc.encode(torch.rand(3, 64, 64), rate=1)).size == (64, 64)


def test_machine_loss_falls_on_a_fixed_batch(data, tmp_path):
    """A few steps on one batch lower the SLIM distortion, and the machine term reaches the compressor
    through the frozen decoder and classifier (a random tiny decoder makes the KL itself nearly flat)."""
    from slim_rt.models.slim import SlimModel
    from slim_rt.testing import build_tiny_random
    from slim_rt.training.data import ImageFolder
    from slim_rt.training.machine import MachineStage
    from slim_rt.training.masks import MaskProvider
    from slim_rt.training.stages import encode_dataset
    from slim_rt.training.trainer import _collate
    torch.manual_seed(0)
    model = SlimModel.from_pretrained(build_tiny_random(tmp_path / "tae", seed=2, autoencoder="tae"), need_unet=False)
    cfg = with_overrides(PRESETS["smoke-machine"], ["lambdas=20"])
    ds = ImageFolder(data, cfg.crop, cfg.resize, align=8, train=False)
    stage = MachineStage(cfg, model, 0, MaskProvider("none", ds), encode_dataset(model.base, ds))
    batch = _collate([ds[0], ds[1]])
    stage.comp.eval()  # deterministic (no quantization noise): the same batch, the same loss surface
    kl_grad = torch.autograd.grad(stage.loss(batch, 0)[0] * 0 + _kl(stage, batch), stage.comp.g_s[0].weight)[0]
    assert kl_grad.abs().sum() > 0
    opt = torch.optim.Adam(stage.parameters_groups()[0][0], lr=1e-3)
    mse, losses = [], []
    for step in range(12):
        loss, logs = stage.loss(batch, step)
        mse.append(logs["mse_roi"])
        losses.append(logs["loss"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert mse[-1] < 0.7 * mse[0] and losses[-1] < losses[0], (mse, losses)


def _kl(stage, batch):
    from slim_rt.training.enhance import machine_kl
    from slim_rt.training.stages import crop_latents
    x_hat = stage.comp(crop_latents(stage.latents, batch, stage.cfg.crop))["x_hat"]
    return machine_kl(stage.clf, ((stage.base.decode_latent(x_hat) + 1) / 2).clamp(0, 1), batch["image"])


def test_machine_only_distill_starts_at_the_identity(tiny_dir, data):
    """latent_weight=0 trains the student on the machine term alone (no teacher run); student_init=identity
    starts it at K = 0's output (its first loss is K = 0's KL); `rates` restricts the rate points;
    caption_drop=1 trains an unconditional student (every caption empty)."""
    from slim_rt.training.data import ImageFolder
    from slim_rt.training.enhance import DistillStage, machine_kl
    from slim_rt.training.masks import MaskProvider
    from slim_rt.training.trainer import _collate
    torch.manual_seed(0)
    cfg = with_overrides(PRESETS["smoke-distill"], ["latent_weight=0", "task_weight=1", "student_init=identity",
                                                    "rates=1", "roi=none", "student_steps=1", "caption_drop=1"])
    ds = ImageFolder(data, cfg.crop, cfg.resize, align=8)
    masks = MaskProvider("none", ds)
    for bad, match in ((["task_weight=0"], "machine term"), (["rates=2"], "rate points"),
                       (["student_init=random"], "student_init")):
        with pytest.raises(ValueError, match=match):
            DistillStage(with_overrides(cfg, bad), tiny_dir, masks, ds)
    stage = DistillStage(cfg, tiny_dir, masks, ds)
    assert stage.rates == [1] and stage.cache["x_hat"][0] is None and stage.cache["teacher"] == [None, None]
    assert not stage.unet.conv_out.weight.any()
    batch = _collate([ds[i] for i in range(2)])
    x_hat, ref = stage.cache["x_hat"][1][batch["index"]], stage.cache["image"][batch["index"]]
    ctx = stage.context([ds.captions[i] for i in batch["index"].tolist()])
    out = stage.sampler.run(stage.unet_fn, x_hat, ctx, 1)
    torch.testing.assert_close(out, x_hat, rtol=0, atol=1e-5)  # the identity: K = 1 decodes as K = 0
    batch["crop"][:, 2] = 0  # no flip: the loss sees the cached crops as they are
    seen, context = [], stage.context
    stage.context = lambda caps: (seen.extend(caps), context(caps))[1]
    loss, logs = stage.loss(batch, 0)
    assert logs["rate"] == 1 and "mse_teacher_roi" not in logs and seen == ["", ""]
    torch.testing.assert_close(loss, machine_kl(stage.clf, stage.decode01(x_hat), ref), rtol=1e-4, atol=1e-5)
    opt = torch.optim.Adam(stage.unet.parameters(), lr=1e-3)
    loss.backward()
    opt.step()
    assert stage.unet.conv_out.weight.any()  # the machine term reaches the zeroed output conv
