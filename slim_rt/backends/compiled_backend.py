"""The compiled backend (`backend="compiled"`): `torch.compile` per stage, CUDA graphs per static shape.

    dec = slim_rt.Decoder.from_pretrained("slim-tiny", device="cuda", backend="compiled", dtype=torch.float16)
    dec.warmup(sizes=[(512, 512)], batch_sizes=[1, 8], steps=1)    # compile, then capture the graphs

Per stage (the networks only; the exact entropy path never runs here):
- the network function is compiled with inductor (`CompileOptions.mode`; "max-autotune-no-cudagraphs"
  tunes kernels longer). Dynamic shapes are left to dynamo's default: a second size recompiles once with
  symbolic sizes, later sizes reuse that code.
- on a GPU, each (input shapes, dtypes) is captured once into a `torch.cuda.CUDAGraph` with static input
  buffers: a call copies its inputs into them, replays the graph and returns copies of the static
  outputs. All graphs of a backend share one memory pool. A new shape is compiled (if its sizes need
  it) and captured on first use, in that caller's call: warm up the shapes you serve
  (`Decoder.warmup(sizes=..., batch_sizes=...)`) so no request pays that. Shapes past `max_graphs` per
  stage, or whose capture fails, run the compiled function without a graph (the clean fallback).
- the model's networks are converted to channels-last in place (a pipeline owns its model).
- channels-last memory layout for the convolutional stages on a GPU, where cuDNN is faster with it.
- fp16/bf16: the base networks run in the pipeline's dtype (`dtype=`); the compressor's networks stay
  fp32 (they are small, and their outputs feed the quantizer).
On the CPU it is inductor without graphs (needs a C++ compiler, as torch.compile does).
"""
from __future__ import annotations

import contextlib
import threading
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from slim_rt.errors import first_line
from slim_rt.backends import STAGES, FnStage, Stage, own_code, stage_networks
from slim_rt.models.slim import SlimModel


@dataclass(frozen=True)
class CompileOptions:
    mode: str = "default"            # torch.compile mode: "default" | "max-autotune-no-cudagraphs" | ...
    dynamic: bool | None = None      # torch.compile's: None = static first, symbolic sizes on a recompile
    cuda_graphs: bool = True         # capture one CUDA graph per static shape (GPU only)
    channels_last: bool = True       # NHWC activations for the conv stages (GPU only)
    max_graphs: int = 32             # per stage; further shapes run compiled without a graph
    warmup_calls: int = 2            # compiled calls before a capture (compile + allocator warm-up)


def _no_duck_sizing():
    """torch's config patch that turns duck sizing off while dynamo traces (a private torch config: where
    this torch lacks it, tracing keeps torch's default)."""
    try:
        from torch.fx.experimental import _config as fx_config
        return fx_config.patch(use_duck_shape=False)
    except (ImportError, AttributeError):
        return contextlib.nullcontext()


_CONV_STAGES = ("vae_encoder", "vae_decoder", "latent_analysis", "hyper_analysis", "hyper_synthesis",
                "latent_synthesis", "unet")


class _Graph:
    __slots__ = ("graph", "inputs", "outputs")

    def __init__(self, graph, inputs: list[Tensor], outputs: Tensor):
        self.graph, self.inputs, self.outputs = graph, inputs, outputs


class CompiledStage:
    """One stage: compiled function, plus captured CUDA graphs keyed by input shapes and dtypes."""

    def __init__(self, name: str, fn: Callable[..., Tensor], device: torch.device, opts: CompileOptions,
                 lock: threading.RLock, pool=None):
        self.name = name
        self.inputs, self.outputs = STAGES[name.split("/")[0]]
        self.device = device
        self.opts = opts
        self._compiled = torch.compile(own_code(fn, name), mode=None if opts.mode == "default" else opts.mode,
                                       dynamic=opts.dynamic)
        self.graphs: dict[tuple, _Graph | None] = {}   # None: this shape runs without a graph
        self._lock = lock                               # one per backend: captures and replays serialise
        self._pool = pool
        self._nhwc = opts.channels_last and device.type == "cuda" and name.split("/")[0] in _CONV_STAGES

    def __repr__(self) -> str:
        return f"CompiledStage({self.name}, graphs={sum(g is not None for g in self.graphs.values())})"

    def fn(self, *args: Tensor) -> Tensor:
        """The compiled function. Traced without duck sizing: by default dynamo assumes that sizes equal
        at the first call stay equal (H == W for a square image), so one compile with symbolic sizes
        would recompile (minutes for the autoencoder) at the first non-square shape."""
        with _no_duck_sizing():
            return self._compiled(*args)

    def _args(self, inputs: dict[str, Tensor]) -> list[Tensor]:
        args = [inputs[n] for n in self.inputs]
        if self._nhwc:
            args = [a.contiguous(memory_format=torch.channels_last) if a.dim() == 4 else a for a in args]
        return args

    def __call__(self, **inputs: Tensor) -> dict[str, Tensor]:
        args = self._args(inputs)
        if not (self.opts.cuda_graphs and self.device.type == "cuda"):
            return {self.outputs[0]: self.fn(*args)}
        key = tuple((tuple(a.shape), a.dtype, a.device) for a in args)
        with self._lock:
            if key not in self.graphs:
                self.graphs[key] = self._capture(args) if len(self.graphs) < self.opts.max_graphs else None
            g = self.graphs[key]
            if g is None:
                return {self.outputs[0]: self.fn(*args)}
            for buf, a in zip(g.inputs, args):
                buf.copy_(a, non_blocking=True)
            g.graph.replay()
            return {self.outputs[0]: g.outputs.clone()}

    def _capture(self, args: list[Tensor]) -> _Graph | None:
        """Warm up on a side stream (compiles), then capture one graph with static inputs."""
        try:
            static = [torch.empty_like(a, device=self.device).copy_(a) for a in args]
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(self.opts.warmup_calls):
                    self.fn(*static)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # thread_local: other threads' CUDA work (a server's other requests) neither breaks nor
            # enters this capture
            with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                out = self.fn(*static)
            return _Graph(graph, static, out)
        except Exception as e:  # a stage that cannot be captured still runs, compiled
            msg = first_line(e)
            warnings.warn(f"compiled backend: stage {self.name} shape {[tuple(a.shape) for a in args]} "
                          f"runs without a CUDA graph ({msg})", RuntimeWarning, stacklevel=3)
            return None


def compiled_stages(model: SlimModel, device: torch.device | str, opts: CompileOptions | None = None) -> dict[str, Stage]:
    """Every network stage of `model` compiled (and graph-captured on a GPU); see the module doc."""
    opts = opts or CompileOptions()
    device = torch.device(device)
    base = model.base
    if opts.channels_last and device.type == "cuda":
        for m in (base.vae, base.unet, *model.compressors):
            if m is not None:
                m.to(memory_format=torch.channels_last)
    lock = threading.RLock()
    pool = torch.cuda.graph_pool_handle() if device.type == "cuda" and opts.cuda_graphs else None
    stages: dict[str, Stage] = {}
    for key, fn in stage_networks(model).items():
        if key == "text_encoder":  # once per caption, cached
            stages[key] = FnStage(key, fn)
        else:
            stages[key] = CompiledStage(key, fn, device, opts, lock, pool)
    return stages


__all__ = ["CompileOptions", "CompiledStage", "compiled_stages"]
