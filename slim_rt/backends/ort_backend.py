"""The ONNX Runtime backend: every stage an `onnxruntime.InferenceSession` behind the named-tensor call.

    stages = ort_stages(export_dir)                      # CPU EP, or CUDA EP when available
    model = load_exported_model(export_dir)              # config, compressors, tokenizer, scheduler

On the CUDA EP, inputs and outputs stay on the GPU through IO binding; outputs go to buffers
preallocated per input shape (shapes from slim_rt.export.specs). On the CPU EP tensors go through
numpy without copies where possible. Sessions accept any input dtype: inputs are cast to what the
ONNX graph declares (fp16/bf16 exports take the pipeline's fp32 tensors).
"""
from __future__ import annotations

import threading

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from slim_rt.errors import ModelLoadError, first_line

if TYPE_CHECKING:
    from slim_rt.export.manifest import ExportManifest

_ORT_TO_TORCH = {
    "tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(bfloat16)": torch.bfloat16,
    "tensor(int64)": torch.int64, "tensor(int32)": torch.int32,
}


def available_providers() -> list[str]:
    import onnxruntime as ort
    return list(ort.get_available_providers())


def default_providers(device: str | torch.device = "cpu") -> list:
    dev = torch.device(device)
    if dev.type == "cuda":
        if "CUDAExecutionProvider" not in available_providers():
            raise ValueError("device 'cuda' requested but onnxruntime has no CUDAExecutionProvider "
                             "(install onnxruntime-gpu)")
        return [("CUDAExecutionProvider", {"device_id": dev.index or 0}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]



def ort_feed(t: Tensor):
    """A CPU tensor as an ONNX Runtime feed: numpy, or for bf16 (no numpy dtype) its bits in an OrtValue
    typed bfloat16 (a plain uint16 array is refused by a bf16 input)."""
    if t.dtype != torch.bfloat16:
        return t.numpy()
    import onnxruntime as ort
    from onnx import TensorProto
    return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(t.contiguous().view(torch.int16).numpy().view("uint16"),
                                                           onnx_element_type=TensorProto.BFLOAT16)

class OrtStage:
    """One ONNX stage. `stage(**named_tensors) -> {output name: tensor}` like every backend's stage."""

    def __init__(self, key: str, path: str | Path, providers: list | None = None, device="cpu",
                 spec=None, threads: int = 0):
        import onnxruntime as ort

        self.key, self.path, self.spec = key, Path(path), spec
        self.device = torch.device(device)
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            so.intra_op_num_threads = threads
        # no busy-waiting between runs: the exact entropy path runs on the CPU between stages and
        # spinning ORT workers would steal its cores
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), so, providers=providers or default_providers(device))
        except Exception as e:
            msg = first_line(e)
            raise ModelLoadError(f"stage {key!r}: cannot load {path}: {msg}") from None
        self.inputs = {i.name: _ORT_TO_TORCH.get(i.type, torch.float32) for i in self.session.get_inputs()}
        self.outputs = {o.name: _ORT_TO_TORCH.get(o.type, torch.float32) for o in self.session.get_outputs()}
        self.io_binding = self.device.type == "cuda" and "CUDAExecutionProvider" in self.session.get_providers()
        self._buffers: dict[tuple, dict[str, Tensor]] = {}
        self._lock = threading.Lock()  # the bound path reuses output buffers: one call at a time

    def __repr__(self) -> str:
        return f"OrtStage({self.key}, {self.session.get_providers()[0]})"

    def _cast(self, name: str, x: Tensor) -> Tensor:
        return x.to(device=self.device if self.io_binding else "cpu", dtype=self.inputs[name]).contiguous()

    def __call__(self, **inputs: Tensor) -> dict[str, Tensor]:
        missing = [n for n in self.inputs if n not in inputs]
        if missing:
            raise ValueError(f"stage {self.key!r} needs inputs {missing}")
        feeds = {n: self._cast(n, inputs[n]) for n in self.inputs}  # inputs the graph dropped are ignored
        if self.io_binding:
            with self._lock:
                return self._run_bound(feeds)
        outs = self.session.run(list(self.outputs), {n: ort_feed(t) for n, t in feeds.items()})
        res = {}
        for (n, dt), a in zip(self.outputs.items(), outs):
            t = torch.from_numpy(a)
            res[n] = t.view(torch.bfloat16) if dt == torch.bfloat16 and t.dtype != torch.bfloat16 else t
        return res

    def _run_bound(self, feeds: dict[str, Tensor]) -> dict[str, Tensor]:
        """CUDA EP: bind torch GPU memory directly; outputs into preallocated per-shape buffers."""
        import numpy as np
        np_dtype = {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64,
                    torch.int32: np.int32, torch.bfloat16: np.uint16}
        shapes = {n: tuple(t.shape) for n, t in feeds.items()}
        key = tuple(sorted(shapes.items()))
        binding = self.session.io_binding()
        dev_id = self.device.index or 0
        for n, t in feeds.items():
            binding.bind_input(n, "cuda", dev_id, np_dtype[t.dtype], list(t.shape), t.data_ptr())
        if self.spec is not None:
            bufs = self._buffers.get(key)
            if bufs is None:
                out_shapes = self.spec.output_shapes(shapes)
                bufs = {n: torch.empty(out_shapes[n], dtype=dt, device=self.device) for n, dt in self.outputs.items()}
                if len(self._buffers) > 8:
                    self._buffers.clear()
                self._buffers[key] = bufs
            for n, t in bufs.items():
                binding.bind_output(n, "cuda", dev_id, np_dtype[t.dtype], list(t.shape), t.data_ptr())
            torch.cuda.current_stream(self.device).synchronize()
            self.session.run_with_iobinding(binding)
            return {n: t.clone() for n, t in bufs.items()}  # buffers are reused by the next call
        for n in self.outputs:
            binding.bind_output(n, "cuda", dev_id)
        torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding)
        return {n: torch.from_dlpack(v.to_dlpack()) if hasattr(v, "to_dlpack") else torch.from_numpy(v.numpy())
                for n, v in zip(self.outputs, binding.get_outputs())}


def ort_stages(root: str | Path, manifest: ExportManifest | None = None, device="cpu", providers: list | None = None,
               keys: list[str] | None = None, verify: bool = True, threads: int = 0) -> dict[str, OrtStage]:
    """Sessions for the stages of an exported directory (all, or `keys`)."""
    from slim_rt.export.manifest import read_manifest, stage_files
    from slim_rt.export.specs import stage_specs

    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ModelLoadError("backend 'ort' needs onnxruntime (pip install 'slim-rt[export]')") from None
    root = Path(root)
    manifest = manifest or read_manifest(root)
    specs = stage_specs(manifest.geometry)
    providers = providers or default_providers(device)
    out = {}
    for key in (keys if keys is not None else list(manifest.stages)):
        path = stage_files(root, manifest, key, verify=verify)
        out[key] = OrtStage(key, path, providers, device, specs.get(key), threads)
    return out


__all__ = ["OrtStage", "ort_stages", "default_providers", "available_providers"]
