"""TensorRT engines built from an exported directory (`slim-rt export ... --trt`), TensorRT 10 API.

    build_engines(export_dir, timing_cache="trt.cache")      # -> {stage key: engine path}
    stages = trt_stages(export_dir, manifest, "cuda")         # named-tensor stages (api.from_engines)

Engines live in `<export_dir>/trt/<stage>-<content hash[:16]>-<gpu>-trt<version>.plan` with a JSON
sidecar (content hash, ONNX sha256, GPU, TensorRT version, precision, profile). A stage whose engine
was built for another content hash, ONNX file, GPU or TensorRT version is refused with
`EngineMismatchError` (or rebuilt with rebuild=True): never silently used. Profiles (min/opt/max)
come from slim_rt.export.specs. Nothing here runs without `tensorrt` and a CUDA GPU.
"""
from slim_rt.engines.builder import EngineMismatchError, build_engine, build_engines, engine_path, trt_available
from slim_rt.engines.runtime import TrtStage, trt_stages

__all__ = ["build_engines", "build_engine", "engine_path", "trt_available", "trt_stages", "TrtStage",
           "EngineMismatchError"]
