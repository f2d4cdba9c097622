"""Named models: the one place a model name ("slim-tiny") becomes a folder.

    resolve("slim-tiny")        -> the bundled folder (ModelLoadError when this build lacks it)
    resolve("runs/my-model")    -> that SLIM model directory
    default_model()             -> what runs when no model is named (the CLI, eval, bench, api defaults)

A name is a folder under slim_rt/weights/ shipped in the package; add one by adding a NamedModel.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from slim_rt.config import CONFIG_NAME
from slim_rt.errors import ModelLoadError


@dataclass(frozen=True)
class NamedModel:
    name: str
    description: str
    folder: str                    # under slim_rt/weights/


MODELS = {m.name: m for m in (
    NamedModel("slim-tiny", "the trained offline default: base, compressors and the distilled few-step enhancer "
               "(26 MiB; model card slim_rt/weights/slim-tiny/README.md)", "slim-tiny"),
)}
DEFAULT_MODEL = "slim-tiny"
MODEL_HELP = f"model name ({', '.join(MODELS)}) or SLIM model directory (default: {DEFAULT_MODEL})"  # --model


def names() -> list[str]:
    return list(MODELS)


def bundled_dir(name: str) -> Path | None:
    """Path of a named model shipped inside the package, or None when this build lacks it."""
    m = MODELS.get(name)
    if m is None:
        raise ModelLoadError(f"unknown model name {name!r} (known: {', '.join(MODELS)})")
    p = Path(str(resources.files("slim_rt"))) / "weights" / m.folder
    return p if (p / CONFIG_NAME).is_file() else None


def resolve(name_or_path: str | Path) -> Path:
    """A model name or a local SLIM model directory -> its path (ModelLoadError otherwise)."""
    s = str(name_or_path)
    if s in MODELS:
        p = bundled_dir(s)
        if p is None:
            raise ModelLoadError(f"model {s!r} is not bundled in this build of slim-rt")
        return p
    p = Path(s).expanduser()
    if not p.is_dir():
        raise ModelLoadError(f"no SLIM model directory at {s!r} (give a directory with {CONFIG_NAME} "
                             f"or a model name: {', '.join(MODELS)})")
    if not (p / CONFIG_NAME).is_file():
        raise ModelLoadError(f"{s} has no {CONFIG_NAME}: not a SLIM model directory "
                             "(a plain diffusers base needs a trained compressor: see `slim-rt train`)")
    return p


def default_model(note=None) -> str:
    """The model used when none is named: DEFAULT_MODEL when bundled, else the untrained tiny random model
    (its folder path); `note(msg)` hears about the fallback."""
    if bundled_dir(DEFAULT_MODEL) is not None:
        return DEFAULT_MODEL
    from slim_rt.testing import tiny_random_cache_dir
    if note is not None:
        note(f"{DEFAULT_MODEL} is not bundled in this build; using the untrained tiny random model")
    return str(tiny_random_cache_dir())


__all__ = ["NamedModel", "MODELS", "DEFAULT_MODEL", "MODEL_HELP", "names", "bundled_dir", "resolve", "default_model"]
