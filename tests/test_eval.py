"""`slim-rt eval` (slim_rt.evaluation): bpp accounting, outputs, BD-rate."""
import csv
import importlib.util
import json
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ev():
    from slim_rt.evaluation import baselines, metrics, protocol, runner
    return types.SimpleNamespace(run_eval=runner.run_eval, avif_status=baselines.avif_status,
                                 pil_encode=baselines.pil_encode, load_images=protocol.load_images,
                                 center_crop_square=protocol.center_crop_square, EvalImage=protocol.EvalImage,
                                 captions=protocol.captions, bd_rate=metrics.bd_rate)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("evaldata")
    rng = np.random.default_rng(0)
    rows = [("a.png", 281, "n02123045", "tabby", 300, 260), ("b.jpg", 1, "n01443537", "goldfish", 256, 400),
            ("c.png", 207, "n02099601", "golden retriever", 512, 384), ("d.jpg", 948, "n07742313", "Granny Smith", 257, 257)]
    for name, *_, w, h in rows:
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(d / name)
    with (d / "labels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "class_index", "wnid", "class_name", "width", "height"])
        w.writerows(rows)
    return d


def test_run_eval_outputs_and_bpp(ev, data_dir, tiny_dir, tmp_path):
    import slim_rt
    from slim_rt.captions import FixedCaptioner

    ok_avif, _ = ev.avif_status()
    codecs = "slim,jpeg,webp" + (",avif" if ok_avif else "")
    q = {"jpeg": [1, 20], "webp": [0, 20], "avif": [0, 30]}
    res = ev.run_eval(data_dir, model=str(tiny_dir), out_dir=tmp_path, steps=[0, 1], codecs=codecs,
                      qualities=q, baseline_scales=(1.0, 0.5), batch=3, threads=1, log=lambda m: None)
    files = {k: Path(v) for k, v in res["files"].items()}
    assert set(files) == {"csv", "json", "md", "png"} and all(p.is_file() and p.stat().st_size > 0
                                                               for p in files.values())
    assert files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert files["json"].name == "eval-tiny-random-evaldata0.json"
    js = json.loads(files["json"].read_text())
    assert js["n_images"] == 4 and js["steps"] == [0, 1]

    with files["csv"].open() as f:
        rows = list(csv.DictReader(f))
    curves = {r["curve"] for r in rows}
    assert {"original", "slim-k0", "slim-k1", "jpeg", "jpeg@0.5x", "webp", "webp@0.5x"} <= curves
    assert ok_avif == ("avif" in curves)
    # every row: bpp = 8 * bytes / (256 * 256); accuracy fields are 0/1, metrics sane
    for r in rows:
        assert float(r["bpp"]) == pytest.approx(8 * int(r["bytes"]) / (256 * 256), rel=1e-5)
        assert r["top1"] in ("0", "1") and r["top5"] in ("0", "1")
        assert int(r["top5"]) >= int(r["top1"])
        assert 0 <= float(r["msssim"]) <= 1
    for a in js["settings"] + [js["reference"]]:
        assert 0 <= a["top1"] <= a["top5"] <= 1
    assert len(js["settings"]) == 2 * 2 + 2 * 2 * (3 if ok_avif else 2)

    # ... and `bytes` is the real file: re-encode the same crops and compare lengths
    imgs = {im.file: im for im in ev.load_images(data_dir)}
    enc = slim_rt.Encoder.from_pretrained(str(tiny_dir), captioner=FixedCaptioner(""))
    for r in (r for r in rows if r["codec"] == "slim"):
        data = enc.encode(imgs[r["file"]].image, caption=r["caption"], rate=int(r["rate"]))
        if r["steps"] == "0":  # a K=0 decode never reads the caption: the file carries none
            assert r["caption"] == ""
        else:
            assert r["caption"].startswith("a photo of a ")  # auto caption
        assert int(r["bytes"]) == len(data)
        assert slim_rt.inspect(data)["bpp"] == pytest.approx(float(r["bpp"]), rel=1e-5)
    for r in (r for r in rows if r["curve"] in ("jpeg", "webp")):
        assert int(r["bytes"]) == len(ev.pil_encode(imgs[r["file"]].image, r["codec"], int(r["quality"])))
    # the K variants share the coded streams; K=0 files lack only the caption's text
    by = {(r["file"], r["rate"], r["steps"]): r for r in rows if r["codec"] == "slim"}
    for f, rt, _ in by:
        k1 = by[(f, rt, "1")]
        assert int(by[(f, rt, "0")]["bytes"]) == int(k1["bytes"]) - len(k1["caption"].encode())


def test_protocol_crop(ev):
    img = Image.fromarray(np.zeros((300, 500, 3), np.uint8))
    img.info["icc_profile"] = b"x" * 1000
    c = ev.center_crop_square(img)
    assert c.size == (256, 256) and c.mode == "RGB" and "icc_profile" not in c.info


def test_captions_modes(ev):
    ims = [ev.EvalImage("a", 0, "tench", None), ev.EvalImage("b", 999, "toilet tissue", None)]
    t = "a photo of a {}"
    assert ev.captions("none", ims, t, None, None, []) == ["", ""]
    assert ev.captions("label", ims, t, None, None, []) == ["a photo of a tench", "a photo of a toilet tissue"]
    wrong = ev.captions("wrong", ims, t, None, None, [])
    assert all(w != r and w.startswith("a photo of a ") for w, r in zip(wrong, ["a photo of a tench",
                                                                                 "a photo of a toilet tissue"]))
    assert ev.captions("auto", ims, t, [1, 2], None, [])[0] == "a photo of a goldfish"


@pytest.mark.parametrize("method", ["pchip", "cubic"])
def test_bd_rate_synthetic(ev, method):
    bpp = np.array([0.05, 0.1, 0.2, 0.4, 0.8])
    acc = np.array([0.1, 0.35, 0.55, 0.7, 0.8])
    assert ev.bd_rate(bpp, acc, bpp / 2, acc, method) == pytest.approx(-50, abs=1)
    assert ev.bd_rate(bpp, acc, bpp * 2, acc, method) == pytest.approx(100, abs=1)
    assert ev.bd_rate(bpp, acc, bpp, acc, method) == pytest.approx(0, abs=1e-6)
    # partial overlap: test only covers accuracies 0.35..0.8 but is 30% cheaper everywhere
    assert ev.bd_rate(bpp, acc, bpp[1:] * 0.7, acc[1:], method) == pytest.approx(-30, abs=1)
    # disjoint accuracy ranges -> None ("no overlap")
    assert ev.bd_rate(bpp, acc, [0.01, 0.02], [0.01, 0.05], method) is None
    # noisy, non-monotone points: the upper envelope is used (a dip doesn't break the fit)
    noisy_acc = np.array([0.1, 0.35, 0.30, 0.7, 0.8])
    v = ev.bd_rate(bpp, noisy_acc, bpp / 2, noisy_acc, method)
    assert v == pytest.approx(-50, abs=1)


def test_cli_parser_has_eval():
    from slim_rt.cli import build_parser
    a = build_parser().parse_args(["eval", "--data", "d", "--steps", "0,1", "--limit", "5", "--threads", "1"])
    assert a.fn.__name__ == "cmd_eval" and a.steps == ["0,1"] and a.limit == 5 and a.caption_mode == "auto"


def test_teacher_eval_and_enhancement_report(ev, data_dir, tiny_dir, tmp_path):
    """A many-step guided decode (beyond the bitstream's K limit) is evaluated on the same bitstreams,
    UNet time is recorded, and benchmarks/enhance_report.py merges student, teacher and ablations."""
    kw = dict(model=str(tiny_dir), out_dir=tmp_path, codecs="slim", batch=4, threads=1, log=lambda m: None)
    main = ev.run_eval(data_dir, steps=[0, 1, 2], **kw)
    teacher = ev.run_eval(data_dir, steps=[12], guidance=2.0, tag="teacher", **kw)
    none = ev.run_eval(data_dir, steps=[1], caption_mode="none", **kw)
    assert teacher["guidance"] == 2.0 and {a["curve"] for a in teacher["settings"]} == {"slim-k12-g2"}
    t = {a["rate"]: a for a in teacher["settings"]}
    m = {(a["rate"], a["steps"]): a for a in main["settings"]}
    for r, a in t.items():
        assert a["bytes"] == m[(r, 1)]["bytes"]  # same bitstreams (K=0 files carry no caption)
        assert a["unet_ms"] > m[(r, 1)]["unet_ms"] > 0 == m[(r, 0)]["unet_ms"]
    spec = importlib.util.spec_from_file_location("slim_rt_enh_report", ROOT / "benchmarks" / "enhance_report.py")
    rep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rep)
    out = tmp_path / "enh"
    assert rep.main(["--main", main["files"]["json"], "--teacher", teacher["files"]["json"],
                     "--ablation", f"none={none['files']['json']}", "--out", str(out)]) == 0
    md = out.with_suffix(".md").read_text()
    assert "teacher (12 steps, CFG 2)" in md and "none caption" in md
    s = json.loads(out.with_suffix(".json").read_text())
    for r, v in s["rates"].items():
        assert v["teacher"] == t[int(r)]["top1"] and v["best_k"] in (1, 2)
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_eval_and_bench_run_from_the_package(tmp_path):
    """`slim-rt eval` and `slim-rt bench` come from slim_rt.evaluation: no file under benchmarks/ is
    opened (an installed wheel has none) and no script is loaded as a module."""
    import subprocess
    import sys
    code = f"""
import sys
bench = {str(ROOT / "benchmarks")!r}
opened = []
def hook(event, args):
    if event == "open" and isinstance(args[0], str) and args[0].startswith(bench):
        opened.append(args[0])
sys.addaudithook(hook)
from slim_rt.cli import main
for argv in (["eval", "--help"], ["bench", "latency", "--help"], ["bench", "serve", "--help"]):
    try:
        main(argv)
    except SystemExit as e:
        assert e.code == 0, (argv, e.code)
import slim_rt.evaluation.latency, slim_rt.evaluation.runner, slim_rt.evaluation.serve_load
assert not opened, opened
assert not [m for m in sys.modules if m.startswith(("benchmarks", "slim_rt_bench"))]
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]
    assert "usage: slim-rt bench latency" in r.stdout and "usage: slim-rt eval" in r.stdout


def test_eval_script_is_the_package(data_dir, tiny_dir, tmp_path):
    """benchmarks/eval.py keeps its options and result files: a baselines-only run through the script."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "eval.py"), "--data", str(data_dir), "--codecs",
                        "jpeg,webp", "--quality", "jpeg=5,30", "--quality", "webp=5", "--out-dir", str(tmp_path),
                        "--limit", "2", "--threads", "1"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    js = json.loads((tmp_path / f"eval-baselines-{data_dir.name}-first2.json").read_text())
    assert js["n_images"] == 2 and {a["curve"] for a in js["settings"]} == {"jpeg", "webp"}
    assert "BD-rate" not in r.stdout and "| jpeg | q5 |" in r.stdout


def test_eval_decodes_through_an_export(ev, data_dir, tiny_dir, exported, tmp_path):
    """--decoder-export: the same files (torch encoder) decoded by ONNX Runtime on an exported directory;
    --encoder-export: files encoded by ONNX Runtime, decoded by the torch model."""
    kw = dict(model=str(tiny_dir), out_dir=tmp_path, codecs="slim", steps=[0], batch=4, threads=1, log=lambda m: None)
    a = ev.run_eval(data_dir, **kw)
    b = ev.run_eval(data_dir, decoder_export=exported[0], tag="ort", **kw)
    assert a["decoder_export"] is None
    assert b["decoder_export"]["content_hash"] == exported[1].content_hash
    assert b["decoder_export"]["dtypes"]["vae_decoder"] == "fp32" and b["decoder_export"]["int8"] == {}
    sa = {x["setting"]: x for x in a["settings"]}
    for x in b["settings"]:  # same bytes; fp32 ONNX decodes to (nearly) the same pixels
        assert x["bytes"] == sa[x["setting"]]["bytes"]
        assert x["psnr"] == pytest.approx(sa[x["setting"]]["psnr"], abs=0.05)
    c = ev.run_eval(data_dir, encoder_export=exported[0], tag="ort-enc", **kw)  # ORT encodes, torch decodes
    assert c["encoder_export"]["content_hash"] == exported[1].content_hash and c["decoder_export"] is None
    for x in c["settings"]:  # fp32 ONNX latents may round a symbol differently now and then: nearly equal
        assert x["bpp"] == pytest.approx(sa[x["setting"]]["bpp"], rel=0.05)
        assert x["psnr"] == pytest.approx(sa[x["setting"]]["psnr"], abs=0.5)


def test_reused_baselines_must_be_scored_by_the_same_machine(tmp_path):
    import json

    from slim_rt.evaluation.baselines import reuse_baselines
    data = tmp_path / "dev"
    data.mkdir()
    settings = [{"codec": "webp", "curve": "webp", "setting": "q0", "bpp": 0.1, "top1": 0.5},
                {"codec": "slim", "curve": "slim-k0", "setting": "r0-k0", "bpp": 0.03, "top1": 0.2}]
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"n_images": 1, "split": "dev", "classifier": "EfficientNet-Lite0",
                                "settings": settings}))
    assert reuse_baselines(path, ["im"], data, "efficientnet-lite0") == settings[:1]
    with pytest.raises(ValueError, match="scored by"):
        reuse_baselines(path, ["im"], data, "efficientnet-lite2")


def test_eval_refined_rates_and_machine_names(ev, data_dir, tiny_dir, tmp_path):
    """--rates runs only those points; --refine N encodes with slim_rt.refine (curve and file names say so)."""
    from slim_rt.refine import RefineConfig
    res = ev.run_eval(data_dir, model=str(tiny_dir), out_dir=tmp_path, codecs="slim", steps=[0], rates=[1],
                      refine=RefineConfig(steps=2, rate_weight=50.0, refine_z=True), batch=4, threads=1,
                      log=lambda m: None)
    assert res["rates"] == [1] and res["refine"] == 2 and res["classifier"] == "efficientnet-lite0"
    assert res["refine_config"]["refine_z"] and res["refine_config"]["rate_weight"] == 50.0
    assert {s["setting"] for s in res["settings"]} == {"r1-k0"}
    assert {s["curve"] for s in res["settings"]} == {"slim-k0-refine2-w50-z"}
    assert Path(res["files"]["json"]).name == "eval-tiny-random-evaldata0-refine2-w50-z.json"
    with pytest.raises(ValueError, match="rate must be"):
        ev.run_eval(data_dir, model=str(tiny_dir), codecs="slim", rates=[7], write=False, log=lambda m: None)
    with pytest.raises(ValueError, match="unknown machine"):
        ev.run_eval(data_dir, model=str(tiny_dir), codecs="slim", machine="resnet", write=False, log=lambda m: None)


def test_eval_scores_several_machines_from_one_encode(ev, data_dir, tiny_dir, tmp_path, monkeypatch):
    """machine="lite0,lite2": one encode and decode, scored by each machine, each written as its own
    results, equal to the single-machine runs."""
    import slim_rt
    import slim_rt.classifier as C
    base, real = C.load_machine("efficientnet-lite0"), C.load_machine

    class Mirrored:  # a second machine that needs no optional package: Lite0 on the mirrored image
        device = "cpu"

        def logits(self, x):
            return base.logits(x.flip(-1))

    monkeypatch.setattr(C, "load_machine", lambda name="efficientnet-lite0", device="cpu":
                        Mirrored() if name == "efficientnet-lite2" else real(name, device=device))
    calls = []
    encode_batch = slim_rt.Encoder.encode_batch
    monkeypatch.setattr(slim_rt.Encoder, "encode_batch", lambda self, *a, **k: calls.append(1) or
                        encode_batch(self, *a, **k))
    kw = dict(model=str(tiny_dir), codecs="slim,jpeg", steps=[0], rates=[0], qualities={"jpeg": [5]}, batch=4,
              threads=1, log=lambda m: None)
    both = ev.run_eval(data_dir, out_dir=tmp_path, machine="lite0,lite2", **kw)
    n_both = len(calls)
    assert [r["classifier"] for r in both] == ["efficientnet-lite0", "efficientnet-lite2"]
    assert [Path(r["files"]["json"]).name for r in both] == ["eval-tiny-random-evaldata0.json",
                                                              "eval-tiny-random-evaldata0-lite2.json"]
    preds = []
    for r in both:
        with Path(r["files"]["csv"]).open() as f:
            preds.append([(x["curve"], x["file"], x["pred"]) for x in csv.DictReader(f)])
        calls.clear()
        alone = ev.run_eval(data_dir, machine=r["classifier"], write=False, **kw)
        assert len(calls) == n_both  # the two machines' run encoded no more than one machine's

        def key(res):
            return {(s["curve"], s["setting"]): (s["bpp"], s["top1"], s["top5"], s["psnr"]) for s in res["settings"]}
        assert key(alone) == key(r) and alone["reference"] == r["reference"]
    assert preds[0] != preds[1]  # the two machines did score differently
    with pytest.raises(ValueError, match="one machine"):
        ev.run_eval(data_dir, machine="lite0,lite2", baselines_from=tmp_path / "x.json", write=False, **kw)
