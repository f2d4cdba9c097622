import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from slim_rt.cli import main


@pytest.fixture()
def imgs(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for i, (h, w) in enumerate([(64, 64), (70, 90)]):
        Image.fromarray((np.random.rand(h, w, 3) * 255).astype(np.uint8)).save(d / f"im{i}.png")
    (d / "notes.txt").write_text("not an image")
    return d


def test_compress_decompress_info(tiny_dir, imgs, tmp_path, capsys):
    m = ["--model", str(tiny_dir)]
    out = tmp_path / "a.slim"
    assert main(["compress", str(imgs / "im1.png"), "-o", str(out), "--caption", "a cat", *m]) == 0
    assert main(["info", str(out)]) == 0
    assert "a cat" in capsys.readouterr().out
    png = tmp_path / "a.png"
    assert main(["decompress", str(out), "-o", str(png), *m]) == 0
    assert Image.open(png).size == (90, 70)
    # existing output is not clobbered
    assert main(["decompress", str(out), "-o", str(png), *m]) == 2
    assert "exists" in capsys.readouterr().err


def test_folder_mode(tiny_dir, imgs, tmp_path):
    m = ["--model", str(tiny_dir)]
    assert main(["compress", str(imgs), "-o", str(tmp_path / "s"), "--caption", "", *m]) == 0
    files = sorted((tmp_path / "s").glob("*.slim"))
    assert [f.name for f in files] == ["im0.slim", "im1.slim"]
    assert main(["decompress", str(tmp_path / "s"), "-o", str(tmp_path / "p"), *m]) == 0
    assert len(list((tmp_path / "p").glob("*.png"))) == 2


def test_bad_inputs_one_line_errors(tiny_dir, tmp_path, capsys):
    bad = tmp_path / "bad.slim"
    bad.write_bytes(b"SLIM garbage that is long enough to have a header")
    notimg = tmp_path / "x.png"
    notimg.write_text("hello")
    m = ["--model", str(tiny_dir)]
    for argv in (["decompress", str(bad), "-o", str(tmp_path / "o.png"), *m],
                 ["info", str(bad)],
                 ["compress", str(notimg), "-o", str(tmp_path / "o.slim"), *m],
                 ["compress", str(tmp_path / "missing.png"), *m],
                 ["compress", str(notimg), "--model", str(tmp_path / "nomodel")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("slim-rt: error:") and err.count("\n") == 1, err
    assert not (tmp_path / "o.png").exists() and not (tmp_path / "o.slim").exists()


def test_no_traceback_subprocess(tmp_path):
    bad = tmp_path / "bad.slim"
    bad.write_bytes(b"\x00" * 10)
    r = subprocess.run([sys.executable, "-m", "slim_rt.cli", "info", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "not a .slim" in r.stderr


def test_folder_collision_refused(tiny_dir, tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    for ext in ("png", "bmp"):
        Image.fromarray((np.random.rand(64, 64, 3) * 255).astype(np.uint8)).save(d / f"a.{ext}")
    assert main(["compress", str(d), "-o", str(tmp_path / "o"), "--model", str(tiny_dir)]) == 2
    assert "both be written" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def _one_line_error(capsys, code, argv, needle):
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.startswith("slim-rt: error:") and err.count("\n") == 1 and needle in err, err


def test_bad_device_output_format_and_folder_errors(tiny_dir, imgs, tmp_path, capsys):
    m = ["--model", str(tiny_dir)]
    src = str(imgs / "im0.png")
    _one_line_error(capsys, 2, ["compress", src, "-o", str(tmp_path / "a.slim"), "--device", "bogus", *m],
                    "unknown device 'bogus'")
    _one_line_error(capsys, 2, ["compress", src, "-o", str(tmp_path / "a.png"), *m], "must end in .slim")
    (tmp_path / "afile").write_text("x")
    _one_line_error(capsys, 2, ["compress", src, "-o", str(tmp_path / "afile" / "x.slim"), *m], "is a file")
    assert main(["compress", src, "-o", str(tmp_path / "a.slim"), "--caption", "", *m]) == 0
    _one_line_error(capsys, 2, ["decompress", str(tmp_path / "a.slim"), "-o", str(tmp_path / "a.gif"), *m],
                    "must end in")
    assert not (tmp_path / "a.gif").exists()
    assert main(["decompress", str(tmp_path / "a.slim"), "-o", str(tmp_path / "a.jpg"), *m]) == 0
    assert Image.open(tmp_path / "a.jpg").format == "JPEG"
    _one_line_error(capsys, 2, ["decompress", str(tmp_path / "a.slim"), "-o", str(tmp_path / "b.png"),
                                "--max-pixels", "100", *m], "budget")


def test_skip_existing_folder(tiny_dir, imgs, tmp_path, capsys):
    m = ["--model", str(tiny_dir), "--caption", ""]
    out = tmp_path / "s"
    out.mkdir()
    (out / "im0.slim").write_bytes(b"kept")
    assert main(["compress", str(imgs), "-o", str(out), *m]) == 2      # without the flag: refused
    assert "--skip-existing" in capsys.readouterr().err
    assert main(["compress", str(imgs), "-o", str(out), "--skip-existing", *m]) == 0
    assert (out / "im0.slim").read_bytes() == b"kept" and (out / "im1.slim").stat().st_size > 20
    assert main(["compress", str(imgs), "-o", str(out), "--skip-existing", *m]) == 0
    assert "nothing to do" in capsys.readouterr().out
