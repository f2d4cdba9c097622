"""Export of SLIM models: stage specs (the single source of truth for shapes), ONNX export with
ORT parity checks, and the exported-directory manifest/loader.

`specs` and `manifest` need only torch; `onnx_export` needs onnx + onnxruntime (extra "export")."""
from slim_rt.export.manifest import MANIFEST_NAME, ExportManifest, load_exported_model, read_manifest
from slim_rt.export.specs import Geometry, Profile, StageSpec, stage_specs


def export_model(*args, **kwargs):
    """See slim_rt.export.onnx_export.export_model (imported lazily: it needs onnx)."""
    from slim_rt.export.onnx_export import export_model as _export
    return _export(*args, **kwargs)


__all__ = ["Geometry", "Profile", "StageSpec", "stage_specs", "export_model", "MANIFEST_NAME",
           "ExportManifest", "read_manifest", "load_exported_model"]
