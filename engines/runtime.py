"""TensorRT runtime stages: preallocated device buffers per shape, CUDA graphs for fixed shapes."""
from __future__ import annotations

import threading

from pathlib import Path

import torch
from torch import Tensor

from slim_rt.engines.builder import (EngineMismatchError, _trt, build_engines, check_engine, engine_identity,
                                     engine_path, gpu_name)
from slim_rt.export.manifest import ExportManifest, read_manifest
from slim_rt.export.specs import Profile, stage_specs


def _torch_dtype(trt, dt) -> torch.dtype:
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int64: torch.int64,
             trt.int32: torch.int32, trt.bool: torch.bool}
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    return table[dt]


class TrtStage:
    """One engine behind the named-tensor call. Per input-shape set it keeps static input/output
    buffers; after `graph_after` calls with the same shapes it captures a CUDA graph and replays it."""

    def __init__(self, key: str, plan: Path, spec, profile: Profile, device="cuda", use_graphs: bool = True,
                 graph_after: int = 2):
        trt = _trt()
        self.key, self.spec, self.profile = key, spec, profile
        self.device = torch.device(device)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self._logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(plan).read_bytes())
        if self.engine is None:
            raise EngineMismatchError(f"stage {key!r}: TensorRT cannot deserialize {plan}")
        self.context = self.engine.create_execution_context()
        self._lock = threading.Lock()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names
                       if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT}
        self.outputs = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names
                        if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT}
        self.stream = torch.cuda.Stream(self.device)
        self.use_graphs, self.graph_after = use_graphs, graph_after
        self._slots: dict[tuple, dict] = {}

    def __repr__(self) -> str:
        return f"TrtStage({self.key})"

    def _slot(self, shapes: dict[str, tuple[int, ...]]) -> dict:
        key = tuple(sorted(shapes.items()))
        slot = self._slots.get(key)
        if slot is None:
            b, h, w = self.spec.resolve_syms(shapes)
            if not self.profile.contains(b, h, w):
                raise ValueError(f"stage {self.key!r}: batch {b}, size {h}x{w} is outside the engine profile "
                                 f"{self.profile.min} .. {self.profile.max} (re-export with --size/--max-size)")
            if len(self._slots) >= 8:
                self._slots.clear()
            ins = {n: torch.empty(shapes[n], dtype=dt, device=self.device) for n, dt in self.inputs.items()}
            outs = {n: torch.empty(s, dtype=self.outputs[n], device=self.device)
                    for n, s in self.spec.output_shapes(shapes).items()}
            slot = self._slots[key] = {"in": ins, "out": outs, "calls": 0, "graph": None}
        return slot

    def _bind(self, slot: dict) -> None:
        for n, t in slot["in"].items():
            self.context.set_input_shape(n, tuple(t.shape))
            self.context.set_tensor_address(n, t.data_ptr())
        for n, t in slot["out"].items():
            self.context.set_tensor_address(n, t.data_ptr())

    def __call__(self, **inputs: Tensor) -> dict[str, Tensor]:
        with self._lock:  # one execution context and static buffers: one call at a time (threads)
            return self._call(inputs)

    def _call(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        shapes = {n: tuple(inputs[n].shape) for n in self.inputs}
        slot = self._slot(shapes)
        for n, buf in slot["in"].items():
            buf.copy_(inputs[n], non_blocking=True)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            if slot["graph"] is not None:
                slot["graph"].replay()
            else:
                self._bind(slot)
                if not self.context.execute_async_v3(self.stream.cuda_stream):
                    raise RuntimeError(f"stage {self.key!r}: TensorRT execution failed")
                slot["calls"] += 1
                if self.use_graphs and slot["calls"] >= self.graph_after:
                    slot["graph"] = self._capture(slot)
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        return {n: t.clone() for n, t in slot["out"].items()}  # the buffers are reused by the next call

    def _capture(self, slot: dict):
        """CUDA graph of one execution on the static buffers (None if capture is not possible)."""
        try:
            self._bind(slot)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, stream=self.stream):
                self.context.execute_async_v3(self.stream.cuda_stream)
            return g
        except Exception:
            self.use_graphs = False  # e.g. engines with data-dependent shapes: stay on plain execution
            return None


def trt_stages(root: str | Path, manifest: ExportManifest | None = None, device="cuda", keys: list[str] | None = None,
               rebuild: bool = False, use_graphs: bool = True) -> dict[str, TrtStage]:
    """TensorRT stages of an exported dir. A missing/stale/foreign engine raises EngineMismatchError,
    or is rebuilt first when rebuild=True."""
    trt = _trt()
    root = Path(root)
    manifest = manifest or read_manifest(root)
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError("backend 'trt' needs device='cuda'")
    gpu = gpu_name(device)
    specs = stage_specs(manifest.geometry)
    profile = manifest.profile
    keys = keys if keys is not None else list(manifest.stages)
    out = {}
    for key in keys:
        plan = engine_path(root, manifest, key, gpu, trt.__version__)
        ident = engine_identity(manifest, key, gpu, trt.__version__)
        try:
            check_engine(plan, ident)
        except EngineMismatchError:
            if not rebuild:
                raise
            build_engines(root, [key], device=device.index or 0)
            check_engine(plan, ident)
        out[key] = TrtStage(key, plan, specs[key], profile, device, use_graphs)
    return out
