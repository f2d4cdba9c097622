"""Export a SLIM model to ONNX: one file per stage, checked against PyTorch with ONNX Runtime.

    from slim_rt.export import export_model
    manifest = export_model("path/to/model", "out_dir", precision="fp32", size=(256, 256))

Steps per stage: torch.onnx.export (legacy TorchScript exporter, dynamo=False: it handles the
diffusers/transformers modules reliably and constant-folds), onnx.checker, shape inference,
external data for models over 2 GB, then ORT (CPU EP) on fresh random inputs at the opt and the
min shape vs the fp32 PyTorch reference. Errors are recorded in manifest.json.

The integer scale network is *not* exported: it runs through slim_rt.kernels from the integer
weights in the copied compressor safetensors (docs/exact-entropy.md). Compressor stages are always
fp32; `precision` applies to the base stages (VAE, text encoder, UNet). `int8=("vae_decoder",)`
replaces an autoencoder stage by its calibrated int8 graph for the CPU (slim_rt.export.quantize).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from slim_rt.backends import stage_networks
from slim_rt.errors import SlimError, first_line
from slim_rt.export.manifest import FORMAT, MANIFEST_NAME, ExportManifest, sha256_file
from slim_rt.export.specs import PRECISIONS, Geometry, Profile, StageSpec, specs_json, stage_specs
from slim_rt.models.slim import hash_tensors

TWO_GB = 2 * 1024**3
# parity tolerance on max|ort - torch| / max|torch| (relative to the output's scale), per precision
TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 6e-2}


class ExportError(SlimError, RuntimeError):
    """A stage failed to export or to match PyTorch; the message names the stage."""


# -- stage modules (positional tensors in STAGES order -> one tensor) ----------------------------
class _Call(nn.Module):
    """`fn` (a stage's tensor function) as an exportable module owning `owner`'s weights (registered as
    `name`, which prefixes the ONNX initializer names), so the ONNX graph computes exactly what the
    torch backend's stage computes."""

    def __init__(self, owner: nn.Module, fn, name: str = "owner"):
        super().__init__()
        self.add_module(name, owner)
        self.fn = fn

    def forward(self, *tensors):
        return self.fn(*tensors)


def stage_modules(model) -> dict[str, nn.Module]:
    """Stage key -> nn.Module computing exactly what the torch backend computes: the same functions
    (slim_rt.backends.stage_networks), wrapped where they are not modules themselves."""
    base = model.base
    owners = {"vae_encoder": base.vae, "vae_decoder": base.vae, "text_encoder": base.text_encoder, "unet": base.unet}
    mods: dict[str, nn.Module] = {}
    for key, fn in stage_networks(model).items():  # compressor networks are modules already
        mods[key] = fn if isinstance(fn, nn.Module) else _Call(owners[key], fn, "unet" if key == "unet" else "owner")
    return mods


# -- hashing -----------------------------------------------------------------------------------
def content_hash(model, specs: dict[str, StageSpec], flags: dict) -> str:
    """SHA-256 over every exported weight, the stage specs and the export flags. Engines are keyed
    by it: a different hash means a different engine."""
    h = hashlib.sha256()
    h.update(model.fingerprint_hex.encode())
    h.update(json.dumps(flags, sort_keys=True).encode())
    h.update(specs_json(specs).encode())
    for m in (model.base.vae, model.base.text_encoder, model.base.unet):
        if m is not None:
            hash_tensors(h, m.state_dict())
    for c in model.compressors:
        hash_tensors(h, c.state_dict())
    return h.hexdigest()


def versions() -> dict:
    import importlib.metadata as md
    out = {"torch": torch.__version__}
    for pkg, dist in (("onnx", "onnx"), ("onnxruntime", None), ("tensorrt", "tensorrt"), ("slim_rt", "slim-rt")):
        try:
            if pkg == "onnxruntime":
                import onnxruntime
                out[pkg] = onnxruntime.__version__
            elif pkg == "tensorrt":
                import tensorrt
                out[pkg] = tensorrt.__version__
            else:
                out[pkg] = md.version(dist)
        except Exception:
            out[pkg] = None
    return out


# -- ONNX --------------------------------------------------------------------------------------
def _onnx_export(mod: nn.Module, spec: StageSpec, inputs: dict[str, Tensor], path: Path, opset: int) -> list[str]:
    """Export, check, infer shapes; returns the written files (relative to path.parent)."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = path.parent / f".tmp-{path.stem}"  # the legacy exporter spills >2 GB weights next to its output
    shutil.rmtree(tmpdir, ignore_errors=True)
    tmpdir.mkdir()
    tmp = tmpdir / path.name
    args = tuple(inputs[n] for n in spec.input_names)
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            kw = {"dynamo": False} if "dynamo" in torch.onnx.export.__code__.co_varnames else {}
            torch.onnx.export(mod, args, str(tmp), input_names=spec.input_names,
                              output_names=spec.output_names, dynamic_axes=spec.dynamic_axes(),
                              opset_version=opset, do_constant_folding=True, **kw)
        for old in path.parent.glob(path.name + "*"):
            old.unlink()
        m = onnx.load(str(tmp), load_external_data=True)
        files = [path.name]
        if m.ByteSize() > TWO_GB - (64 << 20) or any(f.name != tmp.name for f in tmpdir.iterdir()):
            onnx.save_model(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=path.name + ".data", size_threshold=1024)
            files.append(path.name + ".data")
        else:
            onnx.save_model(m, str(path))
        del m
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    # checker and shape inference by path: they work for external data / >2 GB models too
    onnx.checker.check_model(str(path))
    onnx.shape_inference.infer_shapes_path(str(path), str(path))
    return files


def ort_session(path: Path, providers: list[str] | None = None):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=providers or ["CPUExecutionProvider"])


def ort_run(sess, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
    from slim_rt.backends.ort_backend import ort_feed
    names = {i.name for i in sess.get_inputs()}
    feeds = {}
    for k, v in inputs.items():
        if k in names:
            v = v.detach().cpu()
            feeds[k] = ort_feed(v)  # bf16: its bits, same shape (not a float32 reinterpretation)
    outs = sess.run(None, feeds)
    return {o.name: torch.from_numpy(a) for o, a in zip(sess.get_outputs(), outs)}


def _errors(out: Tensor, ref: Tensor) -> tuple[float, float]:
    out, ref = out.float(), ref.float()
    if out.shape != ref.shape:
        raise ExportError(f"output shape {tuple(out.shape)} != PyTorch {tuple(ref.shape)}")
    abs_err = float((out - ref).abs().max()) if ref.numel() else 0.0
    return abs_err, abs_err / max(float(ref.abs().max()) if ref.numel() else 0.0, 1e-12)


# -- the export ---------------------------------------------------------------------------------
def _copy_model_files(model, out: Path) -> list[str]:
    """Config, compressor weights, tokenizer, scheduler: what decoding needs besides the ONNX files."""
    written = []
    model.config.save(out)
    written.append("slim_config.json")
    for rel in model.config.rates:
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model.root / rel, dst)
        written.append(rel)
    base = model.base
    if base.tokenizer is not None and base.unet is not None:
        base.tokenizer.save_pretrained(str(out / "tokenizer"))
        written += sorted(str(p.relative_to(out)) for p in (out / "tokenizer").rglob("*") if p.is_file())
    (out / "scheduler").mkdir(exist_ok=True)
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(base.scheduler_config, indent=2))
    written.append("scheduler/scheduler_config.json")
    return written


def export_model(model_or_path, out_dir: str | Path, *, precision: str = "fp32", opset: int = 17,
                 size: tuple[int, int] = (256, 256), batch: int = 1, min_size: tuple[int, int] | None = None,
                 max_size: tuple[int, int] | None = None, stages: list[str] | None = None, check: bool = True,
                 local_files_only: bool = True, progress: Callable[[str], None] | None = None,
                 int8: tuple[str, ...] = (), calibration: list[Tensor] | None = None) -> ExportManifest:
    """Export every stage (or `stages`) to `out_dir`; returns the manifest (also written to disk).
    int8: autoencoder stages to quantize to int8 for the CPU (slim_rt.export.quantize), calibrated on
    `calibration` ([3,H,W] images in [0,1]); needs precision fp32."""
    from slim_rt.export import quantize as q8
    from slim_rt.models.slim import SlimModel

    say = progress or (lambda s: print(s, file=sys.stderr, flush=True))
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    model = model_or_path if isinstance(model_or_path, SlimModel) else SlimModel.from_pretrained(
        model_or_path, local_files_only=local_files_only)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    geom = Geometry.from_model(model)
    profile = Profile.make(geom, size, batch, min_size, max_size)
    specs = stage_specs(geom)
    keys = list(specs) if stages is None else stages
    for k in keys:
        if k not in specs:
            raise ValueError(f"unknown stage {k!r} (this model has: {', '.join(specs)})")
    int8 = tuple(dict.fromkeys(int8))
    for k in int8:
        if k not in q8.INT8_STAGES:
            raise ValueError(f"int8 is offered for {', '.join(q8.INT8_STAGES)}, not {k!r}")
        if k not in keys:
            raise ValueError(f"int8 stage {k!r} is not among the exported stages")
    if int8 and precision != "fp32":
        raise ValueError(f"int8 stages are quantized from fp32: use precision fp32, not {precision}")
    if int8 and not calibration:
        raise ValueError("int8 stages need calibration images")
    feeds = {k: q8.calibration_inputs(model, k, calibration) for k in int8}
    flags = {"precision": precision, "opset": opset, "profile": profile.to_json(), "exporter": "torchscript"}
    if int8:
        flags["int8"] = {k: q8.feeds_sha256(f) for k, f in feeds.items()}
    chash = content_hash(model, specs, flags)
    mods = stage_modules(model)
    pdtype = PRECISIONS[precision]

    # fp32 references first (the base is cast to `precision` afterwards, in place)
    probes = {"opt": profile.opt, "min": profile.min}
    samples: dict[str, dict] = {}
    for i, k in enumerate(keys):
        spec = specs[k]
        samples[k] = {}
        for j, (pname, shp) in enumerate(probes.items()):
            inp = spec.sample_inputs(*shp, precision="fp32", seed=1000 + 10 * i + j)  # not the trace inputs
            with torch.inference_mode():
                ref = mods[k](*(inp[n] for n in spec.input_names))
            samples[k][pname] = (inp, ref.float())
    if pdtype != torch.float32:
        model.base.to("cpu", pdtype)

    files = _copy_model_files(model, out)
    manifest = ExportManifest(
        format=FORMAT,
        model={"name": model.config.name, "source": str(model.root), "fingerprint": model.fingerprint_hex,
               "fingerprint4": model.fingerprint.hex()},
        base_configs=model.base.configs(),
        precision=precision, opset=opset, exporter="torch.onnx.export(dynamo=False)",
        profile=profile, geometry=geom,
        specs=json.loads(specs_json(specs)),
        versions=versions(),
        content_hash=chash,
        tolerance={"metric": "max|ort - torch| / max|torch| (torch fp32 reference)",
                   "max_rel": TOLERANCE[precision]},
        files=files,
        enhance=enhance_schedules(model),
        stages={},  # filled stage by stage (a failed export leaves the stages done so far)
    )
    for k in keys:
        spec = specs[k]
        t0 = time.perf_counter()
        rel = Path("onnx") / spec.filename
        try:
            trace = spec.sample_inputs(*profile.opt, precision=precision, seed=7)
            written = _onnx_export(mods[k], spec, trace, out / rel, opset)
            entry = {"onnx": str(rel), "files": {str(Path("onnx") / f): sha256_file(out / "onnx" / f) for f in written},
                     "inputs": spec.input_names, "outputs": spec.output_names,
                     "dtype": precision if spec.kind == "base" else "fp32"}
            parity = {}
            if check:
                sess = ort_session(out / rel)
                tol = TOLERANCE[precision] if spec.kind == "base" else TOLERANCE["fp32"]
                for pname, (inp, ref) in samples[k].items():
                    cast = {n: v.to(t.torch_dtype(precision)) for n, v, t in
                            ((t.name, inp[t.name], t) for t in spec.inputs)}
                    got = next(iter(ort_run(sess, cast).values()))
                    a, r = _errors(got, ref)
                    parity[pname] = {"shape": list(shp_of(spec, samples[k], pname)), "max_abs": a, "max_rel": r}
                    if not r <= tol:
                        raise ExportError(f"ONNX Runtime differs from PyTorch at the {pname} shape: "
                                          f"max rel error {r:.2e} > {tol:.0e} (max abs {a:.2e})")
                parity["tolerance"] = tol
                del sess
            entry["parity"] = parity  # of the fp32 graph; an int8 stage records its own check
            note = ""
            if k in int8:
                rel8, entry["int8"] = q8.quantize_exported_stage(out, k, rel, feeds[k], len(calibration))
                entry.update(onnx=str(rel8), files={str(rel8): sha256_file(out / rel8)}, dtype="int8")
                note = f", int8 {entry['int8'].get('psnr_db', entry['int8']['snr_db']):.1f} dB from fp32"
            entry["export_s"] = round(time.perf_counter() - t0, 3)
            manifest.stages[k] = entry
            worst = max((p["max_rel"] for p in parity.values() if isinstance(p, dict)), default=float("nan"))
            say(f"export {k:<22} ok  {time.perf_counter() - t0:6.1f} s  " +
                (f"max rel err {worst:.1e}" if check else "not checked") + note)
        except Exception as e:
            msg = first_line(e)
            say(f"export {k:<22} FAILED: {msg}")
            manifest.to_json(out / MANIFEST_NAME)
            raise ExportError(f"stage {k}: {msg}") from e
    manifest.to_json(out / MANIFEST_NAME)
    return manifest


def enhance_schedules(model) -> dict:
    """The enhancement schedule the runtimes use (from slim_config.json + the scheduler config): the
    UNet graph takes the timestep as an input, and every K's timesteps and DDIM coefficients are here."""
    from slim_rt.sampler import FewStepSampler
    enh = model.config.enhance
    sampler = FewStepSampler.from_configs(model.base.scheduler_config, enh)
    ks = sorted({1, 2, 4, *enh.distilled, *([enh.steps] if enh.steps else [])})
    return {"default_steps": enh.steps, "t0": enh.t0, "distilled": list(enh.distilled),
            "schedules": {str(k): sampler.schedule(k).to_dict() for k in ks}}


def shp_of(spec: StageSpec, s: dict, pname: str) -> tuple[int, ...]:
    inp = s[pname][0]
    return tuple(inp[spec.input_names[0]].shape)


__all__ = ["export_model", "content_hash", "stage_modules", "ExportError", "TOLERANCE", "versions",
           "ort_session", "ort_run"]
