"""The public Python API: `Encoder`, `Decoder`, `inspect`.

    enc = slim_rt.Encoder.from_pretrained("slim-tiny", rate=0)
    data = enc.encode(image)                 # bytes of a .slim file
    dec = slim_rt.Decoder.from_pretrained("slim-tiny")
    img = dec.decode(data)                   # PIL.Image
"""
from __future__ import annotations

import time
from collections import defaultdict

import torch

from slim_rt import bitstream as bsf
from slim_rt.captions import Captioner, ClassifierCaptioner
from slim_rt.errors import ResourceLimitError
from slim_rt.images import to_pil, to_tensor
from slim_rt.models.registry import DEFAULT_MODEL, default_model  # noqa: F401 (api names)
from slim_rt.models.slim import SlimModel
from slim_rt.pipeline import Pipeline
from slim_rt.refine import MachineRefiner, as_config

# Pixels one call may process (per image, and per batch of same-size images) unless the caller
# raises it; peak memory grows linearly with pixels (docs/memory.md), so this bounds memory and work
# before any is done - a 38-byte file declaring 8192x4880 is refused from its header.
DEFAULT_MAX_PIXELS = 2048 * 2048


def _budget_chunks(idx: list[int], w: int, h: int, max_pixels: int, who: str) -> list[list[int]]:
    """Same-size items -> batches of at most `max_pixels` pixels; one item over it is refused."""
    if w * h > max_pixels:
        raise ResourceLimitError(f"{w}x{h} is {w * h / 1e6:.1f} MP, over this {who}'s budget of "
                                 f"{max_pixels / 1e6:.1f} MP (max_pixels; see docs/memory.md)")
    per = max(1, max_pixels // (w * h))
    return [idx[i:i + per] for i in range(0, len(idx), per)]


def _add_other(timings: dict[str, float], t0: float) -> None:
    """'other': the call's wall time outside every stage (parsing, padding, conversions)."""
    timings["other"] = max(0.0, (time.perf_counter() - t0) * 1e3 - sum(timings.values()))


BACKENDS = ("torch", "torch.compile", "compiled")
ENGINE_BACKENDS = ("ort", "trt")


def _device(device) -> torch.device:
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown device {device!r} (use cpu, cuda or cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {str(device)!r} (use cpu, cuda or cuda:N)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA GPU is available")
    return device


def _make_pipeline(name_or_path, device, backend, dtype, local_files_only, need_unet=True,
                   impl="auto", text_encoder=None, compile_options=None) -> Pipeline:
    from slim_rt.backends.torch_backend import torch_stages

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} for from_pretrained "
                         "(exported engines load with from_engines)")
    device = _device(device)
    dtype = dtype or torch.float32
    model = SlimModel.from_pretrained(name_or_path, device=device, dtype=dtype,
                                      local_files_only=local_files_only, need_unet=need_unet,
                                      text_encoder=text_encoder)
    if backend == "compiled":
        from slim_rt.backends.compiled_backend import compiled_stages
        stages = compiled_stages(model, device, compile_options)
    else:
        stages = torch_stages(model, compile=backend == "torch.compile")
    return Pipeline(model, stages, device, impl, dtype)


def _make_engine_pipeline(export_dir, backend, device, stages=None, overrides=None, verify=True,
                          providers=None, impl="auto") -> Pipeline:
    """An exported directory (`slim-rt export`) -> Pipeline on ONNX Runtime or TensorRT stages.

    overrides: {stage key: "ort" | "trt" | "torch"} ("torch" only for compressor stages: the export
    keeps their weights, not the base's); stages: {stage key: Stage} replaces stages outright."""
    from slim_rt.backends import COMPRESSOR_NETS, FnStage
    from slim_rt.export.manifest import load_exported_model, read_manifest

    if backend not in ENGINE_BACKENDS:
        raise ValueError(f"backend must be one of {ENGINE_BACKENDS} for from_engines")
    device = _device(device)
    manifest = read_manifest(export_dir)
    model = load_exported_model(export_dir, manifest)
    for c in model.compressors:
        c.to(device)
    stages, overrides = dict(stages or {}), dict(overrides or {})
    for key, kind in overrides.items():
        if key not in manifest.stages and key not in stages:
            raise ValueError(f"override for unknown stage {key!r}")
        if kind not in ("ort", "trt", "torch"):
            raise ValueError(f"override {key!r}: backend must be 'ort', 'trt' or 'torch', got {kind!r}")
    wanted = {k: overrides.get(k, backend) for k in manifest.stages if k not in stages}
    built: dict = {}
    ort_keys = [k for k, b in wanted.items() if b == "ort"]
    if ort_keys:
        from slim_rt.backends.ort_backend import ort_stages
        built.update(ort_stages(export_dir, manifest, device, providers, ort_keys, verify))
    trt_keys = [k for k, b in wanted.items() if b == "trt"]
    if trt_keys:
        from slim_rt.engines import trt_stages
        built.update(trt_stages(export_dir, manifest, device, trt_keys))
    for k in (k for k, b in wanted.items() if b == "torch"):
        name, _, r = k.partition("/r")
        if name not in COMPRESSOR_NETS:
            raise ValueError(f"stage {k!r} cannot run on 'torch' from an export (no PyTorch base weights "
                             "in it): pass a callable with stages={...}")
        built[k] = FnStage(k, getattr(model.compressors[int(r)], COMPRESSOR_NETS[name]))
    built.update(stages)
    return Pipeline(model, built, device, impl, torch.float32)


def _refiner(refine, device) -> MachineRefiner | None:
    """None | steps (int) | RefineConfig | MachineRefiner -> a refiner (for RefineConfig.machines:
    EfficientNet-Lite0 by default)."""
    if isinstance(refine, MachineRefiner):
        return refine
    cfg = as_config(refine)
    return None if cfg is None else MachineRefiner.for_machines(cfg, device)


class Encoder:
    """refine: optimise each image's coded latent for the machine at encode time (`slim_rt.refine`):
    a number of steps, a RefineConfig or a MachineRefiner (default machine: EfficientNet-Lite0).
    Slower encodes, the same format and decoder."""

    def __init__(self, pipeline: Pipeline, rate: int = 0, captioner: Captioner | None = None,
                 steps: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS, refine=None):
        pipeline.check_rate(rate)
        self.refiner = _refiner(refine, pipeline.device)
        self.pipeline = pipeline
        self.rate = rate
        self.max_pixels = max_pixels
        self._captioner = captioner
        self.steps = pipeline.model.config.enhance.steps if steps is None else steps
        if "unet" not in pipeline.stages:
            self.steps = 0
        pipeline.check_steps(self.steps)

    @classmethod
    def from_pretrained(cls, name_or_path: str = DEFAULT_MODEL, *, rate: int = 0, device="cpu",
                        backend: str = "torch", captioner: Captioner | None = None, steps: int | None = None,
                        dtype: torch.dtype | None = None, local_files_only: bool = False,
                        max_pixels: int = DEFAULT_MAX_PIXELS, text_encoder=None, compile_options=None,
                        refine=None) -> "Encoder":
        """backend: "torch" (eager), "torch.compile" or "compiled" (compiled stages + CUDA graphs,
        see slim_rt.backends.compiled_backend; `compile_options` tunes it). text_encoder: a context-table
        folder to use instead of the base's text encoder (slim_rt.models.context_table)."""
        return cls(_make_pipeline(name_or_path, device, backend, dtype, local_files_only,
                                  text_encoder=text_encoder, compile_options=compile_options),
                   rate, captioner, steps, max_pixels, refine)

    @classmethod
    def from_engines(cls, export_dir, backend: str = "ort", *, rate: int = 0, device="cpu",
                     captioner: Captioner | None = None, steps: int | None = None, stages: dict | None = None,
                     overrides: dict | None = None, verify: bool = True, providers: list | None = None,
                     max_pixels: int = DEFAULT_MAX_PIXELS) -> "Encoder":
        """An Encoder on an exported directory (`slim-rt export`): backend "ort" or "trt"; per-stage
        `overrides={"unet": "torch"|"ort"|"trt"}` or `stages={key: callable}`."""
        return cls(_make_engine_pipeline(export_dir, backend, device, stages, overrides, verify, providers),
                   rate, captioner, steps, max_pixels)

    def warmup(self, sizes: list[tuple[int, int]], batch_sizes: tuple[int, ...] = (1,), caption: str = "") -> None:
        """Encode (and decode) random images at these sizes and batch sizes at this encoder's rate and
        steps: compiles and captures the compiled backend's graphs ahead of real traffic."""
        warmup(self.pipeline, sizes, batch_sizes, (self.rate,), self.steps, caption)

    @property
    def model(self) -> SlimModel:
        return self.pipeline.model

    @property
    def captioner(self) -> Captioner:
        if self._captioner is None:  # loaded once, on first need
            self._captioner = ClassifierCaptioner(template=self.model.config.caption_template,
                                                  device=self.pipeline.device)
        return self._captioner

    @property
    def timings(self) -> dict[str, float]:
        """Per-stage milliseconds of this thread's last call ("other": time outside the stages)."""
        return dict(self.pipeline.timings)

    def encode(self, image, caption: str | None = None, *, rate: int | None = None) -> bytes:
        """Image (PIL, ndarray, CHW tensor or path) -> .slim bytes. caption=None: an automatic caption
        when the encoder suggests enhancement (steps >= 1), none at steps 0 (a K=0 decode never reads
        it); caption="" stores no caption, a string stores that one."""
        return self.encode_batch([image], None if caption is None else [caption], rate=rate)[0]

    def encode_batch(self, images: list, captions: list[str | None] | None = None, *,
                     rate: int | None = None) -> list[bytes]:
        rate = self.rate if rate is None else rate
        t0 = time.perf_counter()
        with self.pipeline.call_timer() as timer:
            out = self._encode_batch(images, captions, rate)
            _add_other(timer.timings, t0)
        return out

    def _encode_batch(self, images: list, captions: list[str | None] | None, rate: int) -> list[bytes]:
        tensors = [to_tensor(im) for im in images]
        if captions is not None and len(captions) != len(tensors):
            raise ValueError(f"{len(captions)} captions for {len(tensors)} images")
        groups = defaultdict(list)
        for i, t in enumerate(tensors):
            groups[tuple(t.shape)].append(i)
        batches = [b for shape, idx in groups.items()
                   for b in _budget_chunks(idx, shape[2], shape[1], self.max_pixels, "encoder")]
        caps: list[str | None] = list(captions) if captions is not None else [None] * len(tensors)
        for i in [i for i, c in enumerate(caps) if c is None]:  # per image: images may differ in size
            # the caption conditions enhancement only: at steps 0 its bytes would buy nothing
            caps[i] = self.captioner(tensors[i][None].to(self.pipeline.device))[0] if self.steps else ""
        out: list[bytes | None] = [None] * len(tensors)
        for idx in batches:
            batch = torch.stack([tensors[i] for i in idx])
            for i, data in zip(idx, self.pipeline.encode(batch, [caps[i] for i in idx], rate, self.steps,
                                                         self.refiner)):
                out[i] = data
        return out  # type: ignore[return-value]


class Decoder:
    """max_pixels: the most pixels one call decodes (per image and per batch), checked from the header
    before any work; bitstreams over it raise ResourceLimitError (see docs/memory.md for the memory)."""

    def __init__(self, pipeline: Pipeline, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.pipeline = pipeline
        self.max_pixels = max_pixels

    @classmethod
    def from_pretrained(cls, name_or_path: str = DEFAULT_MODEL, *, device="cpu", backend: str = "torch",
                        dtype: torch.dtype | None = None, local_files_only: bool = False,
                        max_pixels: int = DEFAULT_MAX_PIXELS, text_encoder=None, compile_options=None) -> "Decoder":
        """backend and text_encoder as for `Encoder.from_pretrained`."""
        return cls(_make_pipeline(name_or_path, device, backend, dtype, local_files_only,
                                  text_encoder=text_encoder, compile_options=compile_options), max_pixels)

    @classmethod
    def from_engines(cls, export_dir, backend: str = "ort", *, device="cpu", stages: dict | None = None,
                     overrides: dict | None = None, verify: bool = True, providers: list | None = None,
                     max_pixels: int = DEFAULT_MAX_PIXELS) -> "Decoder":
        """A Decoder on an exported directory alone (no original model dir needed); its fingerprint is
        the exporting model's, so it decodes that model's bitstreams."""
        return cls(_make_engine_pipeline(export_dir, backend, device, stages, overrides, verify, providers),
                   max_pixels)

    @property
    def model(self) -> SlimModel:
        return self.pipeline.model

    @property
    def timings(self) -> dict[str, float]:
        """Per-stage milliseconds of this thread's last call ("other": time outside the stages)."""
        return dict(self.pipeline.timings)

    def decode(self, data: bytes, steps: int | None = None, output: str = "pil", guidance: float = 1.0):
        """.slim bytes -> PIL.Image (output="tensor": float [3,H,W] in [0,1]). steps overrides the
        bitstream's K; guidance != 1 adds classifier-free guidance (teacher-style, 2 UNet calls a step)."""
        return self.decode_batch([data], steps=steps, output=output, guidance=guidance)[0]

    def decode_batch(self, datas: list[bytes], steps: int | None = None, output: str = "pil",
                     guidance: float = 1.0) -> list:
        if output not in ("pil", "tensor"):
            raise ValueError(f"output must be 'pil' or 'tensor', got {output!r}")
        t0 = time.perf_counter()
        with self.pipeline.call_timer() as timer:
            out = self._decode_batch(datas, steps, output, guidance)
            _add_other(timer.timings, t0)
        return out

    def _decode_batch(self, datas: list[bytes], steps: int | None, output: str, guidance: float) -> list:
        streams = [self.pipeline.parse(d) for d in datas]  # validates everything before any work
        groups = defaultdict(list)
        for i, s in enumerate(streams):
            k = s.header.steps if steps is None else steps
            groups[(s.header.width, s.header.height, s.header.rate, k)].append(i)
        batches = [(k, b) for (w, h, _, k), idx in groups.items()
                   for b in _budget_chunks(idx, w, h, self.max_pixels, "decoder")]
        out: list = [None] * len(streams)
        for k, idx in batches:
            imgs = self.pipeline.decode([streams[i] for i in idx], steps=k, guidance=guidance)
            for i, im in zip(idx, imgs):
                out[i] = to_pil(im) if output == "pil" else im.cpu()
        return out

    def warmup(self, size: tuple[int, int] = (256, 256), steps: int | None = None, *,
               sizes: list[tuple[int, int]] | None = None, batch_sizes: tuple[int, ...] = (1,),
               rates: tuple[int, ...] | None = None, caption: str = "") -> None:
        """Encode and decode random images at each (H, W) in `sizes` (default: [size]), batch size and
        rate (default: all), so first-call costs are paid up front: the compiled backend compiles
        and captures its CUDA graphs for exactly these shapes here."""
        warmup(self.pipeline, sizes or [size], batch_sizes, rates, steps, caption)


def warmup(pipeline: Pipeline, sizes, batch_sizes=(1,), rates=None, steps=None, caption: str = "") -> None:
    """One encode + decode per (size, batch size, rate); see `Decoder.warmup`."""
    gen = torch.Generator().manual_seed(0)
    for rate in (range(pipeline.model.num_rates) if rates is None else rates):
        budget = max(DEFAULT_MAX_PIXELS, max(h * w * b for h, w in sizes for b in batch_sizes))
        enc = Encoder(pipeline, rate, captioner=None, steps=steps, max_pixels=budget)
        dec = Decoder(pipeline, max_pixels=budget)
        for h, w in sizes:
            for b in batch_sizes:
                datas = enc.encode_batch([torch.rand(3, h, w, generator=gen) for _ in range(b)], [caption] * b)
                dec.decode_batch(datas, output="tensor")


def inspect(data: bytes) -> dict:
    """Header fields of a .slim bitstream (validated; no model needed)."""
    bs = bsf.parse(data)
    h = bs.header
    n = len(data)
    return {
        "width": h.width, "height": h.height, "rate": h.rate, "steps": h.steps, "caption": h.caption,
        "fingerprint": h.fingerprint.hex(), "version": h.version,
        "bytes": {"total": n, "z": len(bs.z), "y": len(bs.y), "caption": len(h.caption.encode()),
                  "header": n - len(bs.z) - len(bs.y) - len(h.caption.encode())},
        "bpp": 8 * n / (h.width * h.height),
    }
