"""The prepared GPU job: tests, kernel and latency benchmarks, SD-1.5-architecture decode, in one command.

    python benchmarks/gpu/prepare.py          # on a machine with PyPI access: wheels, contexts, budget
    bash benchmarks/gpu/run.sh                # on the GPU machine (OUT=folder for the results)

Each section runs in its own process under its own time limit, inside one overall budget (default
540 s), so a section that hangs or breaks costs only its share and the others still report. Results go
to --out (at most 8 files: run.log, gpu-tests.txt, kernels-*.json/.md, latency-*.json/.md, sd15-*.json).
Without CUDA it runs the CPU subset (the GPU tests are collected and skipped, the kernels are checked
under the Triton interpreter, latency and SD-1.5 run tiny smoke configurations) and says so: that is how
CI keeps this job working between GPU runs.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
JOB = ROOT / ".gpu-job"
SECTIONS = ("env", "tests", "kernels", "latency", "sd15")

ENV_PROBE = r"""
import importlib, platform, sys, torch
print("python", sys.version.split()[0], platform.machine())
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"{p.total_memory / 2**30:.1f} GiB", p.multi_processor_count, "SMs", f"cc {p.major}.{p.minor}")
for m in ("triton", "diffusers", "transformers", "compressai", "constriction", "onnxruntime", "slim_rt"):
    try:
        mod = importlib.import_module(m)
        print(m, getattr(mod, "__version__", "?"), getattr(mod, "__file__", ""))
    except Exception as e:
        print(m, "MISSING:", type(e).__name__, str(e).splitlines()[0] if str(e) else "")
import slim_rt.backends.compiled_backend, slim_rt.kernels
print("triton kernels usable:", slim_rt.kernels.triton_available())
"""


def commands(gpu: bool, out: Path, quick: bool) -> dict[str, tuple[list[str], float, str | None]]:
    """section -> (argv, time limit s, file its output goes to (None: run.log only))."""
    py = sys.executable
    ctx = JOB / "contexts" / "slim-tiny"
    if gpu:
        # rate 2: slim-tiny's lowest-rate point coded at full resolution (rates 0 and 1 code a half-size
        # image: less GPU work), so these are the heavier figures
        lat = ["--model", "slim-tiny", "--device", "cuda", "--sizes", "512", "256", "768x512", "--batch", "1", "8",
               "--steps", "0", "1", "2", "--rate", "2", "--backends", "torch", "torch-fp16", "compiled-fp16",
               "--repeats", "50", "--warmup", "1", "--stage-runs", "5", "--compile-shapes", "dynamic",
               "--time-budget-s", "250"]
        if ctx.is_dir():
            lat += ["--text-encoder", str(ctx)]
        sd = ["--budget-s", "100"]
        # from the H100 runs of 2026-11-26: kernel tests ~40 s, kernels 24 s, SD-1.5 91 s (66 s of it
        # compiling); the compiled backend's first warm-up of slim-tiny v2 (TAEF2) 172 s (v1: 58 s), later
        # shapes only capture graphs (no duck sizing), batch 8 recompiles once. Latency runs batch 1 at
        # every size first, then batch 8; sd15 (measured before, model independent) gets what is left.
        # H200 run of 2026-11-27: env 14 s, kernels 29 s, the batch-1 grid (3 sizes x 3 backends) in ~190 s of
        # the latency section, then batch 8's compile ran past 360 s unmeasured; the tests' compiled codec
        # fixture needs more than 100 s cold. So the tests get 150 s, latency 320 s (configs start until 250 s).
        limits = {"env": 30, "tests": 150, "kernels": 45, "latency": 320, "sd15": 115}
    else:  # the CPU subset: same code paths, tiny configurations
        lat = ["--sizes", "64", "--batch", "1", "--steps", "0", "1", "--backends", "torch", "torch-bf16",
               "--repeats", "2", "--warmup", "1", "--stage-runs", "1"]
        sd = ["--smoke", "--runs", "2"]
        limits = {"env": 120, "tests": 300, "kernels": 300, "latency": 300, "sd15": 300}
    tests = [py, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-rs",
             "--continue-on-collection-errors", "--durations=8"]
    # the kernels first (quick, and what a new kernel needs checked), then the compile-heavy codec tests
    # Files are named one by one: with the "tests" folder among the arguments pytest collected in folder
    # order (the H200 run of 2026-11-27 spent the section's 100 s compiling test_gpu_codec before any kernel test).
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py"))
    first = [f for f in files if f.startswith("tests/test_kernel")] + ["tests/test_gpu_codec.py"]
    tests += first + [f for f in files if f not in first]
    if quick:
        tests += ["-k", "gpu_codec"]
    return {
        "env": ([py, "-c", ENV_PROBE], limits["env"], None),
        "tests": (tests, limits["tests"], "gpu-tests.txt"),
        "kernels": ([py, str(ROOT / "benchmarks" / "kernels.py"), "--out", str(out)], limits["kernels"], None),
        "latency": ([py, str(ROOT / "benchmarks" / "latency.py"), *lat, "--out", str(out)], limits["latency"], None),
        "sd15": ([py, str(ROOT / "benchmarks" / "gpu" / "sd15.py"), *sd, "--out", str(out)], limits["sd15"], None),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "benchmarks" / "results" / "gpu-run"))
    ap.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    ap.add_argument("--budget-s", type=float, default=540.0, help="the whole job's wall-clock budget (the device call's 600 s less the install)")
    ap.add_argument("--quick", action="store_true", help="CPU smoke for CI: fewer tests")
    args = ap.parse_args(argv)
    import torch

    gpu = torch.cuda.is_available()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "run.log", "a", buffering=1)

    def say(msg: str) -> None:
        print(msg, flush=True)
        log.write(msg + "\n")

    t0 = time.perf_counter()
    say(f"== slim-rt GPU job, {time.strftime('%Y-%m-%d %H:%M:%S')}, "
        + ("CUDA: " + torch.cuda.get_device_name() if gpu else
           "no CUDA device: running the CPU subset (GPU tests skip, nothing GPU is measured)"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # slim_rt: installed (editable) by install.sh
    env.pop("TRITON_INTERPRET", None)  # the kernel benchmark sets it itself where there is no GPU
    env["SLIM_TEST_FAILURES"] = str(out / "gpu-tests.txt")  # failures land there at once (conftest.py)
    status = {}
    cmds = commands(gpu, out, args.quick)
    for name in args.sections:
        argv_, limit, dest = cmds[name]
        left = args.budget_s - (time.perf_counter() - t0)
        if left < 10:
            status[name] = "skipped: job budget spent"
            say(f"== {name}: skipped (job budget spent)")
            continue
        limit = min(limit, left)
        say(f"== {name} (limit {limit:.0f} s): {' '.join(argv_[:3])} ...")
        t = time.perf_counter()
        sink = open(out / dest, "a") if dest else None
        try:
            proc = subprocess.run(argv_, cwd=ROOT, env=env, timeout=limit, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
            text, rc = proc.stdout, proc.returncode
        except subprocess.TimeoutExpired as e:
            text = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            rc = "timeout"
        dt = time.perf_counter() - t
        if sink:
            sink.write(text)
            sink.close()
        tail = text if len(text) < 6000 or not dest else "...\n" + text[-3000:]
        log.write(tail + ("\n" if not tail.endswith("\n") else ""))
        print(text[-2500:], flush=True)
        status[name] = f"rc={rc} in {dt:.0f} s"
        say(f"== {name}: {status[name]}")
    say("== summary: " + "; ".join(f"{k} {v}" for k, v in status.items())
        + f"; total {time.perf_counter() - t0:.0f} s")
    log.close()
    return 0 if all(v.startswith("rc=0") for v in status.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
