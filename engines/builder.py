"""Build TensorRT engines from the ONNX files of an exported directory (TensorRT 10 Python API)."""
from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path

from slim_rt.errors import ModelLoadError, first_line
from slim_rt.export.manifest import MANIFEST_NAME, ExportManifest, read_manifest, sha256_file, stage_files
from slim_rt.export.specs import Profile, stage_specs

ENGINE_DIR = "trt"


class EngineMismatchError(ModelLoadError):
    """A TensorRT engine was built for other weights/ONNX, another GPU or another TensorRT version."""


def trt_available() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


def _trt():
    try:
        import tensorrt as trt
    except ImportError:
        raise ModelLoadError("TensorRT is not installed (`import tensorrt` failed): pip install 'slim-rt[gpu]'") from None
    return trt


def gpu_name(device=0) -> str:
    import torch
    if not torch.cuda.is_available():
        # like Encoder/Decoder(device="cuda") without a GPU: a ValueError (the caller's request), not a load failure
        raise ValueError("TensorRT engines need a CUDA GPU and none is available")
    return torch.cuda.get_device_name(device)


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", s).strip("-")


def engine_identity(manifest: ExportManifest, key: str, gpu: str, trt_version: str) -> dict:
    """What an engine must match to be used."""
    info = manifest.stages[key]
    return {"stage": key, "content_hash": manifest.content_hash, "onnx_sha256": info["files"][info["onnx"]],
            "gpu": gpu, "tensorrt": trt_version, "precision": manifest.precision,
            "profile": manifest.profile.to_json()}


def engine_path(root: str | Path, manifest: ExportManifest, key: str, gpu: str, trt_version: str) -> Path:
    name = f"{key.replace('/', '_')}-{manifest.content_hash[:16]}-{_slug(gpu)}-trt{trt_version}.plan"
    return Path(root) / ENGINE_DIR / name


def check_engine(plan: Path, identity: dict) -> None:
    """Raise EngineMismatchError unless `plan` exists and its sidecar matches `identity` exactly."""
    meta = plan.with_suffix(".json")
    if not plan.is_file() or not meta.is_file():
        raise EngineMismatchError(f"stage {identity['stage']!r}: no TensorRT engine at {plan} "
                                  "(build it with `slim-rt export --trt` or build_engines())")
    try:
        got = json.loads(meta.read_text())
    except ValueError:
        raise EngineMismatchError(f"stage {identity['stage']!r}: unreadable engine metadata {meta}") from None
    diff = [k for k in identity if got.get(k) != identity[k]]
    if diff:
        raise EngineMismatchError(f"stage {identity['stage']!r}: engine {plan.name} is stale or foreign "
                                  f"({', '.join(diff)} differ); rebuild it")
    if got.get("plan_sha256") != sha256_file(plan):
        raise EngineMismatchError(f"stage {identity['stage']!r}: engine {plan.name} is corrupt (sha256)")


def build_engine(onnx_path: Path, spec, profile: Profile, precision: str, out: Path,
                 timing_cache: str | None = None, workspace_gb: float = 8.0) -> Path:
    """ONNX -> serialized engine at `out` (one optimization profile from the spec)."""
    trt = _trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # resolves external data next to the file
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path.name}: {errs}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if spec.kind == "base":  # compressor stages stay fp32 (see slim_rt.export.onnx_export)
        if precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        elif precision == "bf16":
            config.set_flag(trt.BuilderFlag.BF16)
        elif precision == "int8":  # a QDQ graph (slim_rt.export.quantize): explicit quantization
            config.set_flag(trt.BuilderFlag.INT8)
    opt_profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in spec.profile_shapes(profile).items():
        opt_profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(opt_profile)
    cache = None
    if timing_cache:
        blob = Path(timing_cache).read_bytes() if Path(timing_cache).is_file() else b""
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine for {spec.key}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".plan.tmp")
    tmp.write_bytes(bytes(plan))
    tmp.replace(out)
    if cache is not None:
        Path(timing_cache).write_bytes(bytes(cache.serialize()))
    return out


def build_engines(root: str | Path, stages: list[str] | None = None, timing_cache: str | None = None,
                  force: bool = False, device: int = 0, progress=None) -> dict[str, Path]:
    """Build (or keep, when up to date) the engine of every exported stage; returns their paths."""
    trt = _trt()
    say = progress or (lambda s: print(s, file=sys.stderr, flush=True))
    root = Path(root)
    manifest = read_manifest(root)
    specs = stage_specs(manifest.geometry)
    profile = manifest.profile
    gpu = gpu_name(device)
    out: dict[str, Path] = {}
    for key in stages or list(manifest.stages):
        onnx_path = stage_files(root, manifest, key)
        plan = engine_path(root, manifest, key, gpu, trt.__version__)
        ident = engine_identity(manifest, key, gpu, trt.__version__)
        if not force:
            try:
                check_engine(plan, ident)
                say(f"trt {key:<22} up to date")
                out[key] = plan
                continue
            except EngineMismatchError:
                pass
        try:
            precision = manifest.stages[key].get("dtype", manifest.precision)  # "int8" for a quantized stage
            build_engine(onnx_path, specs[key], profile, precision, plan, timing_cache)
        except Exception as e:
            msg = first_line(e)
            say(f"trt {key:<22} FAILED: {msg}")
            raise RuntimeError(f"stage {key}: TensorRT build failed: {msg}") from e
        plan.with_suffix(".json").write_text(json.dumps({**ident, "plan_sha256": sha256_file(plan)}, indent=2))
        for stale in plan.parent.glob(f"{key.replace('/', '_')}-*.plan"):  # older engines of this stage
            if stale != plan:
                stale.unlink()
                stale.with_suffix(".json").unlink(missing_ok=True)
        say(f"trt {key:<22} built {plan.name}")
        out[key] = plan
    built = {"tensorrt": trt.__version__, "engines": {k: str(p.relative_to(root)) for k, p in out.items()}}
    dataclasses.replace(manifest, trt={**(manifest.trt or {}), gpu: built}).to_json(root / MANIFEST_NAME)
    return out
