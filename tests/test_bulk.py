"""`slim-rt bulk` on Ray Data (slim_rt.bulk): a local Ray with 2 CPUs, the tiny random model, a small
folder with two bad files; a worker killed midway, then the job resumed."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from slim_rt import bulk

GOOD = ["a0.png", "a1.png", "sub/b0.png", "sub/b1.png", "sub/b2.png", "c.png"]
BAD = {"trunc.png": "truncated", "text.png": "not a known image format"}


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401  (pyarrow must import too)
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"Ray Data is not importable ({type(e).__name__}: {e}); pip install 'slim-rt[bulk]'")
    return ray


@pytest.fixture(scope="module")
def ray_local():
    ray = _ray()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("bulk-in")
    rng = np.random.default_rng(0)
    for i, rel in enumerate(GOOD):
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        h, w = (64, 64) if i % 2 else (64, 96)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(d / rel)
    png = (d / GOOD[0]).read_bytes()
    (d / "trunc.png").write_bytes(png[: len(png) // 2])
    (d / "text.png").write_text("this is not an image")
    (d / "notes.txt").write_text("not an input")
    return d


def _cfg(mode, src, dst, tiny_dir, **kw):
    kw = {"caption": "a cat", "batch_size": 2, "workers": 1, "progress": False, "retries": 1, **kw}
    return bulk.BulkConfig(mode, str(src), str(dst), model=str(tiny_dir), **kw)


def _manifest(out) -> dict:
    lines = (out / bulk.MANIFEST).read_text().splitlines()
    recs = [json.loads(line) for line in lines]
    assert len({r["rel"] for r in recs}) == len(recs), "one record per input"
    return {r["rel"]: r for r in recs}


def _check_complete(folder, out, suffix, recs):
    """Every input: exactly one valid output and an ok record, or one recorded error and no output;
    no temporary files or manifest parts left."""
    assert sorted(recs) == sorted(GOOD + list(BAD))
    for rel in GOOD:
        r = recs[rel]
        assert r["error"] is None and r["status"] in ("coded", "kept"), r
        dst = out / rel.replace(".png", suffix)
        assert r["output"] == str(dst) and dst.stat().st_size == r["output_bytes"]
    for rel, why in BAD.items():
        assert why in recs[rel]["error"] and recs[rel]["permanent"] and "\n" not in recs[rel]["error"]
        assert not (out / rel.replace(".png", suffix)).exists()
    names = [p.name for p in out.rglob("*")]
    assert not [n for n in names if ".tmp-" in n or n == bulk.PARTS], names
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob(f"*{suffix}")) == \
        sorted(g.replace(".png", suffix) for g in GOOD)


def test_compress_then_decompress(ray_local, tiny_dir, folder, tmp_path):
    import slim_rt
    out = tmp_path / "slim"
    s = bulk.run(_cfg("compress", folder, out, tiny_dir, workers=2))
    assert (s.inputs, s.ok, s.failed, s.coded, s.kept) == (8, 6, 2, 6, 0)
    recs = _manifest(out)
    _check_complete(folder, out, ".slim", recs)
    enc = slim_rt.Encoder.from_pretrained(str(tiny_dir))
    for rel in GOOD:  # the workers' files are the in-process encoder's, byte for byte
        data = (out / rel.replace(".png", ".slim")).read_bytes()
        assert data == enc.encode(folder / rel, caption="a cat")
        info = slim_rt.inspect(data)
        r = recs[rel]
        assert (r["bytes"], r["rate"], r["caption"]) == (len(data), 0, "a cat")
        assert r["bpp"] == pytest.approx(info["bpp"]) and r["source"] == str(folder / rel)
    assert s.bytes == sum(recs[r]["bytes"] for r in GOOD)
    assert "8 files: 6 ok" in s.line("compress") and "2 failed" in s.line("compress")

    # a re-run finds everything done (or recorded as bad) and starts no job
    again = bulk.run(_cfg("compress", folder, out, tiny_dir))
    assert (again.ok, again.failed, again.coded, again.kept) == (6, 2, 0, 6)
    # other settings on the same OUT: outputs are neither kept as this job's nor replaced
    before = (out / GOOD[0].replace(".png", ".slim")).read_bytes()
    manifest = (out / bulk.MANIFEST).read_text()
    with pytest.raises(bulk.BulkError, match=r"other settings \(caption\)"):
        bulk.run(_cfg("compress", folder, out, tiny_dir, caption="a dog"))
    assert (out / GOOD[0].replace(".png", ".slim")).read_bytes() == before
    assert (out / bulk.MANIFEST).read_text() == manifest

    (out / "sub" / "junk.slim").write_bytes(b"SLIM" + b"\x00" * 40)  # a bad .slim among the inputs
    png = tmp_path / "png"
    d = bulk.run(_cfg("decompress", out, png, tiny_dir, batch_size=3, png_stage=True))  # as with GPU actors
    assert (d.inputs, d.ok, d.failed) == (7, 6, 1)
    drecs = _manifest(png)
    assert drecs["sub/junk.slim"]["error"] and drecs["sub/junk.slim"]["permanent"]
    dec = slim_rt.Decoder(enc.pipeline)
    for rel in GOOD:
        data = (out / rel.replace(".png", ".slim")).read_bytes()
        got = np.asarray(Image.open(png / rel), dtype=int)
        ref = np.asarray(dec.decode(data), dtype=int)
        assert got.shape == ref.shape == np.asarray(Image.open(folder / rel)).shape
        assert np.abs(got - ref).max() <= 2  # batched float decoding: within a level or two of one by one
        r = drecs[rel.replace(".png", ".slim")]
        assert r["bytes"] == len(data) and r["output_bytes"] == (png / rel).stat().st_size and r["error"] is None


def test_killed_worker_then_resume(ray_local, tiny_dir, folder, tmp_path, monkeypatch):
    """A worker process dies (os._exit) after its 3rd output with no restarts left: the job stops
    with a one-line error. The re-run keeps the outputs already written (also those whose record never
    reached the manifest), survives one more worker death by restarting it, and codes the rest once."""
    out = tmp_path / "slim"
    out.mkdir()
    (out / ".c.slim.tmp-" f"{'0' * 32}").write_bytes(b"half")  # a temporary file of an earlier stopped run
    monkeypatch.setenv(bulk.CRASH_AFTER_ENV, "3")
    with pytest.raises(bulk.JobStopped, match="run the same command again") as e:
        bulk.run(_cfg("compress", folder, out, tiny_dir, retries=0))
    assert "\n" not in str(e.value)
    first = {p.relative_to(out).as_posix(): p.stat().st_ino for p in out.rglob("*.slim")}
    assert len(first) == 3, first
    recorded = _manifest(out)
    assert len(recorded) < 8

    once = tmp_path / "crashed-once"
    monkeypatch.setenv(bulk.CRASH_AFTER_ENV, "1")  # the restarted job loses a worker once more
    monkeypatch.setenv(bulk.CRASH_ONCE_ENV, str(once))
    s = bulk.run(_cfg("compress", folder, out, tiny_dir, retries=1))
    assert once.exists(), "the test hook killed a worker"
    recs = _manifest(out)
    _check_complete(folder, out, ".slim", recs)
    assert (s.ok, s.failed) == (6, 2)
    assert s.coded + s.kept == 6 and s.coded <= 3  # the 3 outputs of the first run were not coded again
    for rel, ino in first.items():
        assert (out / rel).stat().st_ino == ino, f"{rel} was rewritten"
        assert recs[rel.replace(".slim", ".png")]["error"] is None


def test_foreign_outputs_are_kept_and_recorded(ray_local, tiny_dir, folder, tmp_path):
    out, png = tmp_path / "slim", tmp_path / "png"
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "b1.slim").write_bytes(b"someone else's file")
    png.mkdir()
    Image.new("RGB", (64, 64)).save(png / "a0.png")  # a PNG of another size than a0.slim declares
    s = bulk.run(_cfg("compress", folder, out, tiny_dir))
    assert (s.ok, s.failed) == (5, 3)
    assert (out / "sub" / "b1.slim").read_bytes() == b"someone else's file"
    err = _manifest(out)["sub/b1.png"]["error"]
    assert "exists and is not a valid output" in err and "--overwrite" in err
    before = (png / "a0.png").read_bytes()
    d = bulk.run(_cfg("decompress", out, png, tiny_dir, batch_size=4))  # PNGs written by the actors
    assert (d.inputs, d.ok, d.failed, d.coded) == (6, 4, 2, 4)  # a0: foreign PNG; sub/b1.slim: not a .slim
    assert (png / "a0.png").read_bytes() == before
    recs = _manifest(png)
    assert "64x64, not 96x64" in recs["a0.slim"]["error"] and recs["sub/b1.slim"]["permanent"]
    for rel in ("a1.png", "sub/b0.png", "sub/b2.png", "c.png"):
        assert Image.open(png / rel).size == Image.open(folder / rel).size


def test_cli_on_a_running_cluster(ray_local, tiny_dir, folder, tmp_path):
    """The command line as a user runs it, as a second driver on the fixture's cluster (--address)."""
    addr = ray_local.get_runtime_context().gcs_address
    out = tmp_path / "slim"
    r = subprocess.run([sys.executable, "-m", "slim_rt.cli", "bulk", "compress", str(folder), str(out),
                        "--model", str(tiny_dir), "--caption", "", "--address", addr, "--workers", "1",
                        "--batch-size", "4", "--device", "cpu"],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 1, r.stderr[-2000:]  # two bad inputs
    assert "bulk compress: 8 files: 6 ok (6 coded now, 0 already done), 2 failed" in r.stdout
    assert "images/s" in r.stdout and "mean" in r.stdout and "bpp" in r.stdout
    assert f"slim-rt: failed: {folder / 'text.png'}: cannot read the image file" in r.stderr
    assert "Traceback" not in r.stderr
    _check_complete(folder, out, ".slim", _manifest(out))


def test_one_line_errors_before_any_work(tmp_path, capsys):
    _ray()
    from slim_rt.cli import main
    (tmp_path / "empty").mkdir()
    for argv, needle in ((["bulk", "compress", str(tmp_path / "missing"), str(tmp_path / "o")], "no such folder"),
                         (["bulk", "compress", str(tmp_path / "empty"), str(tmp_path / "o")], "no input files"),
                         (["bulk", "decompress", str(tmp_path / "empty"), str(tmp_path / "o")], "no input files")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("slim-rt: error:") and err.count("\n") == 1 and needle in err, err


def test_atomic_writes_and_torn_manifest(tmp_path):
    _ray()
    fs, root = bulk.resolve(str(tmp_path))
    assert root == str(tmp_path) and bulk.resolve(f"file://{tmp_path}")[1] == str(tmp_path)
    p = f"{root}/x/y.slim"
    assert bulk.write_atomic(fs, p, b"one") and not bulk.write_atomic(fs, p, b"two")
    assert (tmp_path / "x" / "y.slim").read_bytes() == b"one"
    assert bulk.write_atomic(fs, p, b"two", overwrite=True) and (tmp_path / "x" / "y.slim").read_bytes() == b"two"
    assert [q.name for q in (tmp_path / "x").iterdir()] == ["y.slim"]
    (tmp_path / bulk.MANIFEST).write_text('{"rel": "a.png", "error": null}\n{"rel": "b.png", "err')
    assert list(bulk.read_manifest(fs, root)) == ["a.png"]
