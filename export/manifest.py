"""The exported-model directory ("engines dir") and loading it without the PyTorch base weights.

Layout written by `slim-rt export` (see onnx_export.py):
    manifest.json                  versions, opset, precision, profile, content hash, fingerprint,
                                   per-stage files, sha256 and ORT-vs-torch parity errors
    slim_config.json               the model's config, unchanged (it is part of the fingerprint)
    compressor/rate{i}.safetensors entropy tables + integer scale network (+ float nets)
    tokenizer/  scheduler/scheduler_config.json
    onnx/<stage>.onnx [.data]      one ONNX file per stage (external data for >2 GB models)
    trt/                           TensorRT engines (slim_rt.engines), when built

Only torch/safetensors are needed here (no onnx): runtimes import this module.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from slim_rt.errors import ModelLoadError, first_line
from slim_rt.export.specs import Geometry, Profile

MANIFEST_NAME = "manifest.json"
FORMAT = "slim-rt-export/1"


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


@dataclass(frozen=True)
class ExportManifest:
    """manifest.json, typed. JSON keys are the field names, written in this order (`extra`: keys this
    version does not know, kept as they were); fields left None are not written."""
    format: str
    model: dict                    # name, source, fingerprint (hex), fingerprint4
    base_configs: dict
    precision: str
    profile: Profile
    geometry: Geometry
    content_hash: str
    stages: dict                   # {stage key: {"onnx": rel path, "files": {rel path: sha256}, "inputs", ...}}
    opset: int | None = None
    exporter: str | None = None
    specs: dict | None = None
    versions: dict | None = None
    tolerance: dict | None = None
    files: list | None = None
    enhance: dict | None = None
    trt: dict | None = None        # {gpu name: {"tensorrt": version, "engines": {stage key: rel path}}}
    extra: dict = dataclasses.field(default_factory=dict)

    ORDER = ("format", "model", "base_configs", "precision", "opset", "exporter", "profile", "geometry", "specs",
             "versions", "content_hash", "tolerance", "files", "enhance", "stages", "trt")
    REQUIRED = {"format": str, "model": dict, "base_configs": dict, "precision": str, "profile": dict,
                "geometry": dict, "content_hash": str, "stages": dict}

    @property
    def fingerprint(self) -> str:
        return self.model["fingerprint"]

    def to_dict(self) -> dict:
        d = {}
        for k in self.ORDER:
            v = getattr(self, k)
            if v is not None:
                d[k] = v.to_json() if k == "profile" else dataclasses.asdict(v) if k == "geometry" else v
        return {**d, **self.extra}

    @classmethod
    def from_dict(cls, m: dict, where: str = "manifest") -> "ExportManifest":
        """Validate a parsed manifest; ModelLoadError (one line, naming `where`) when malformed."""
        if not isinstance(m, dict):
            raise ModelLoadError(f"{where}: malformed manifest (a JSON object expected, got {type(m).__name__})")
        if m.get("format") != FORMAT:
            raise ModelLoadError(f"{where}: unsupported export format {m.get('format')!r} (expected {FORMAT!r})")
        for k, t in cls.REQUIRED.items():
            if not isinstance(m.get(k), t):
                raise ModelLoadError(f"{where}: malformed manifest: {k!r} is missing or not a {t.__name__}")
        if not isinstance(m["model"].get("fingerprint"), str):
            raise ModelLoadError(f"{where}: malformed manifest: 'model' has no 'fingerprint'")
        for key, info in m["stages"].items():
            if not (isinstance(info, dict) and isinstance(info.get("onnx"), str) and isinstance(info.get("files"), dict)):
                raise ModelLoadError(f"{where}: malformed manifest: stage {key!r} lacks 'onnx' or 'files'")
        try:
            geometry, profile = Geometry(**m["geometry"]), Profile.from_json(m["profile"])
        except (TypeError, KeyError) as e:
            raise ModelLoadError(f"{where}: malformed manifest: bad geometry or profile ({first_line(e)})") from None
        known = {k: m[k] for k in cls.ORDER if k in m}
        return cls(**{**known, "geometry": geometry, "profile": profile},
                   extra={k: v for k, v in m.items() if k not in known})

    @classmethod
    def from_json(cls, path: str | Path) -> "ExportManifest":
        p = Path(path)
        try:
            m = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"{p}: unreadable manifest ({first_line(e)})") from None
        return cls.from_dict(m, str(p))

    def to_json(self, path: str | Path) -> None:
        """Write atomically (tmp file + replace): a reader never sees half a manifest."""
        p = Path(path)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        tmp.replace(p)


def read_manifest(root: str | Path) -> ExportManifest:
    root = Path(root)
    p = root / MANIFEST_NAME
    if not root.is_dir():
        raise ModelLoadError(f"no exported model directory at {str(root)!r}")
    if not p.is_file():
        raise ModelLoadError(f"{root} has no {MANIFEST_NAME}: not an exported model directory "
                             "(create one with `slim-rt export`)")
    return ExportManifest.from_json(p)


def stage_files(root: Path, manifest: ExportManifest, key: str, verify: bool = True) -> Path:
    """Path of a stage's ONNX file after checking it (and its external data) exist and match."""
    info = manifest.stages.get(key)
    if info is None:
        raise ModelLoadError(f"{root}: the export has no stage {key!r}")
    for rel, digest in info["files"].items():
        f = root / rel
        if not f.is_file():
            raise ModelLoadError(f"{root}: stage {key!r}: missing file {rel}")
        if verify and sha256_file(f) != digest:
            raise ModelLoadError(f"{root}: stage {key!r}: {rel} is corrupt (sha256 differs from the manifest)")
    return root / info["onnx"]


@dataclass
class ExportedBase:
    """Stand-in for models.base.BaseModel: what the pipeline needs when the base runs exported."""
    tokenizer: object | None
    scheduler_config: dict
    base_configs: dict
    source: str
    unet: object | None = None
    text_encoder: object | None = None
    vae: object | None = None

    def configs(self) -> dict:
        return self.base_configs

    @property
    def vae_factor(self) -> int:
        """Pixels per latent pixel, from the exported VAE config (as models.base.BaseModel.vae_factor)."""
        c = self.base_configs.get("vae", {})
        if c.get("downscale_factor"):
            return int(c["downscale_factor"])
        return 2 ** (len(c.get("block_out_channels") or c["encoder_block_out_channels"]) - 1)


def load_exported_model(root: str | Path, manifest: ExportManifest | None = None):
    """An exported dir -> SlimModel (config, compressors, tokenizer, scheduler; no base weights).

    The fingerprint is recomputed from the copied config and compressors and the base configs kept in
    the manifest, and must equal the exporting model's (else ModelLoadError)."""
    from slim_rt.models.slim import SlimModel, fingerprint, load_config_and_compressors

    root = Path(root)
    manifest = manifest or read_manifest(root)
    cfg, comps = load_config_and_compressors(root)
    tokenizer = None
    if (root / "tokenizer").is_dir():
        from transformers import AutoTokenizer
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(root / "tokenizer"), local_files_only=True)
        except Exception as e:
            raise ModelLoadError(f"{root}/tokenizer: cannot load ({first_line(e)})") from None
    sched_file = root / "scheduler" / "scheduler_config.json"
    sched = json.loads(sched_file.read_text()) if sched_file.is_file() else {}
    base = ExportedBase(tokenizer, sched, manifest.base_configs, str(root))
    fp = fingerprint(cfg, comps, manifest.base_configs)
    if fp != manifest.fingerprint:
        raise ModelLoadError(f"{root}: the config/compressor files do not match the exported model "
                             f"(fingerprint {fp[:8]} != {manifest.fingerprint[:8]})")
    return SlimModel(cfg, base, comps, root, fp)


__all__ = ["MANIFEST_NAME", "FORMAT", "ExportManifest", "read_manifest", "stage_files", "load_exported_model", "ExportedBase",
           "sha256_file"]
