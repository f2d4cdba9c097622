"""Encode and decode through named stages (any backend) and the exact entropy path.

encode: image -> vae_encoder -> latent -> latent_analysis -> y -> hyper_analysis -> z
        -> [exact] z symbols, rANS(z) -> hyper_synthesis(z_hat) -> means
        -> [exact] integer scale net -> indexes; quantize y -> rANS(y) -> .slim
decode: .slim -> [exact] z symbols -> hyper_synthesis -> means; indexes -> rANS^-1(y) -> y_hat
        -> latent_synthesis -> latent_hat -> K enhancement steps (unet, caption context)
        -> vae_decoder -> image
"""
from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager

import torch
from torch import Tensor
from torch.nn import functional as F

from slim_rt import bitstream as bsf
from slim_rt.backends import Stage, stage_key
from slim_rt.errors import BitstreamError, ModelMismatchError
from slim_rt.config import coded_size
from slim_rt.images import from_coded, pad_to_multiple, to_coded
from slim_rt.models.base import tokenize
from slim_rt.models.slim import SlimModel
from slim_rt.sampler import FewStepSampler

MAX_DECODE_STEPS = 100  # a decoder may override the bitstream's K (<= bsf.MAX_STEPS) up to this
CONTEXT_CACHE_BYTES = 32 << 20  # caption-context cache: captions (<= 255 bytes each) + their tensors


class StageTimer:
    """Per-call stage timings: exclusive wall milliseconds per stage name (nested time counted once).
    One per call and thread, so concurrent calls on a shared Pipeline never mix their clocks.
    sync: on a GPU, synchronise at every stage boundary so each stage's time is its own (costs the
    overlap of CPU launches with GPU work); without it the times are the CPU's, GPU work lands later."""

    def __init__(self, device: torch.device, sync: bool = True):
        self.device = device
        self.sync = sync and device.type == "cuda"
        self.timings: dict[str, float] = {}
        self._children: list[float] = []

    @contextmanager
    def timed(self, name: str):
        if self.sync:
            torch.cuda.synchronize(self.device)
        self._children.append(0.0)
        t = time.perf_counter()
        try:
            yield
        finally:
            if self.sync:
                torch.cuda.synchronize(self.device)
            dt = (time.perf_counter() - t) * 1e3
            nested = self._children.pop()
            if self._children:
                self._children[-1] += dt
            self.timings[name] = self.timings.get(name, 0.0) + dt - nested


class Pipeline:
    def __init__(self, model: SlimModel, stages: dict[str, Stage], device="cpu", impl: str = "auto",
                 dtype: torch.dtype = torch.float32):
        self.model = model
        self.stages = stages
        self.device = torch.device(device)
        self.impl = impl
        self.dtype = dtype
        self.sync_timings = True  # False: no GPU syncs between stages (faster; per-stage times blur)
        self.sampler = FewStepSampler.from_configs(model.base.scheduler_config, model.config.enhance)
        self._local = threading.local()       # per thread: the running call's timer, the last timings
        self._contexts: OrderedDict[str, Tensor] = OrderedDict()
        self._contexts_bytes = 0
        self._contexts_lock = threading.Lock()

    # -- helpers -----------------------------------------------------------------------------
    @property
    def timings(self) -> dict[str, float]:
        """Stage milliseconds of this thread's last encode/decode call."""
        return getattr(self._local, "last", {})

    @timings.setter
    def timings(self, value: dict[str, float]) -> None:
        self._local.last = value

    @contextmanager
    def call_timer(self):
        """Scope of one call: stages run inside it are timed into a fresh StageTimer, which becomes
        this thread's `timings` when the call ends. Nested scopes reuse the outer timer."""
        outer = getattr(self._local, "timer", None)
        if outer is not None:
            yield outer
            return
        timer = self._local.timer = StageTimer(self.device, self.sync_timings)
        try:
            yield timer
        finally:
            self._local.timer = None
            self._local.last = timer.timings

    @contextmanager
    def _timed(self, name: str):
        timer = getattr(self._local, "timer", None) or StageTimer(self.device, False)  # outside a call: untimed
        with timer.timed(name):
            yield

    def _run(self, name: str, rate: int | None = None, **inputs: Tensor) -> Tensor:
        key = stage_key(name, rate)
        if key not in self.stages:
            raise ValueError(f"this model/backend has no stage {key!r}")
        with self._timed(name):
            out = self.stages[key](**inputs)
        return next(iter(out.values()))

    def check_rate(self, rate: int) -> None:
        if not 0 <= rate < self.model.num_rates:
            raise ValueError(f"rate must be in [0, {self.model.num_rates - 1}] for this model, got {rate}")

    def check_steps(self, steps: int, limit: int = bsf.MAX_STEPS) -> None:
        """limit: bsf.MAX_STEPS for what a bitstream records, MAX_DECODE_STEPS for a decoder override."""
        if not 0 <= steps <= limit:
            raise ValueError(f"steps must be in [0, {limit}], got {steps}")
        if steps and "unet" not in self.stages:
            raise ValueError("this model has no enhancement UNet/text encoder: use steps=0")

    def context(self, captions: list[str]) -> Tensor:
        """Caption -> cross-attention context, cached per caption (decode reuses it). The cache is
        shared by threads (a lock guards it) and bounded in bytes (CONTEXT_CACHE_BYTES, LRU)."""
        found: dict[str, Tensor] = {}
        with self._contexts_lock:
            for c in dict.fromkeys(captions):
                if c in self._contexts:
                    self._contexts.move_to_end(c)
                    found[c] = self._contexts[c]
        missing = [c for c in dict.fromkeys(captions) if c not in found]
        if missing:
            tok = tokenize(self.model.base.tokenizer, missing)
            ctx = self._run("text_encoder", input_ids=tok["input_ids"].to(self.device),
                            attention_mask=tok["attention_mask"].to(self.device))
            with self._contexts_lock:
                for c, t in zip(missing, ctx):
                    found[c] = t
                    self._cache_context(c, t.clone())  # a row of its own, not a view of the batch
        return torch.stack([found[c] for c in captions])

    def _cache_context(self, caption: str, t: Tensor) -> None:
        size = len(caption.encode("utf-8")) + t.numel() * t.element_size()
        if caption in self._contexts or size > CONTEXT_CACHE_BYTES:
            return
        self._contexts[caption] = t
        self._contexts_bytes += size
        while self._contexts_bytes > CONTEXT_CACHE_BYTES:
            c, old = self._contexts.popitem(last=False)
            self._contexts_bytes -= len(c.encode("utf-8")) + old.numel() * old.element_size()

    # -- encode ------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, images: Tensor, captions: list[str], rate: int, steps: int, refiner=None) -> list[bytes]:
        """images [B,3,H,W] in [0,1] (one size) -> one .slim bytes object per image. refiner: None, or
        `refiner(model, rate, images, y, z, coded_hw) -> (y, z)`, e.g. slim_rt.refine.MachineRefiner."""
        self.check_rate(rate)
        self.check_steps(steps)
        with self.call_timer():
            return self._encode(images, captions, rate, steps, refiner)

    def _encode(self, images: Tensor, captions: list[str], rate: int, steps: int, refiner=None) -> list[bytes]:
        B, _, H, W = images.shape
        cap_bytes = [c.encode("utf-8") for c in captions]
        limit = min(self.model.config.max_caption_bytes, bsf.MAX_CAPTION_BYTES)
        if any(len(c) > limit for c in cap_bytes):
            raise ValueError(f"caption longer than {limit} UTF-8 bytes")
        img = images.to(self.device, self.dtype)
        scale = self.model.config.rate_scale(rate)
        if scale != 1.0:  # this rate point codes a smaller image (bicubic, antialiased)
            img = to_coded(img, scale).to(self.dtype)
        coded_hw = tuple(img.shape[-2:])
        x = pad_to_multiple(img * 2 - 1, self.model.pixel_multiple)
        latent = self._run("vae_encoder", image=x).float()
        y = self._run("latent_analysis", rate, latent=latent).float()
        z = self._run("hyper_analysis", rate, y=y).float()
        if not (torch.isfinite(y).all() and torch.isfinite(z).all()):  # e.g. an fp16 overflow
            raise ValueError("the analysis produced non-finite values (try dtype=float32)")
        if refiner is not None:
            with self._timed("refine"):
                y2, z2 = refiner(self.model, rate, images, y, z, coded_hw)
                y, z = y2.to(y.device, y.dtype), z2.to(z.device, z.dtype)
        comp = self.model.compressors[rate]
        with self._timed("entropy_encode"):
            out = comp.compress_with(
                y, z, lambda z_hat: self._run("hyper_synthesis", rate, z_hat=z_hat).float(), impl=self.impl,
                timed=self._timed)
        zs, ys = out["strings"]
        header = lambda i: bsf.Header(W, H, rate, steps, captions[i], self.model.fingerprint)  # noqa: E731
        return [bsf.pack(bsf.Bitstream(header(i), zs[i], ys[i])) for i in range(B)]

    # -- decode ------------------------------------------------------------------------------
    def parse(self, data: bytes) -> bsf.Bitstream:
        bs = bsf.parse(data)
        if bs.header.fingerprint != self.model.fingerprint:
            raise ModelMismatchError(
                f"bitstream was written by model {bs.header.fingerprint.hex()}, this decoder is "
                f"{self.model.fingerprint.hex()} ({self.model.config.name})")
        if bs.header.rate >= self.model.num_rates:
            raise BitstreamError(f"corrupt bitstream: rate {bs.header.rate} not in this model")
        limit = self.model.config.max_caption_bytes
        if len(bs.header.caption.encode("utf-8")) > limit:
            raise BitstreamError(f"corrupt bitstream: caption longer than this model's {limit} bytes")
        return bs

    @torch.inference_mode()
    def decode(self, streams: list[bsf.Bitstream], steps: int | None = None, guidance: float = 1.0) -> Tensor:
        """Bitstreams of one size and rate -> images [B,3,H,W] in [0,1]. steps overrides the K of the
        bitstreams (up to MAX_DECODE_STEPS, e.g. a many-step teacher); guidance != 1 runs
        classifier-free guidance (two UNet evaluations a step)."""
        with self.call_timer():
            return self._decode(streams, steps, guidance)

    def _decode(self, streams: list[bsf.Bitstream], steps: int | None, guidance: float) -> Tensor:
        h0 = streams[0].header
        if any((s.header.width, s.header.height, s.header.rate) != (h0.width, h0.height, h0.rate)
               for s in streams):
            raise ValueError("decode() needs bitstreams of one size and rate (decode_batch groups them)")
        k = h0.steps if steps is None else steps
        self.check_steps(k, MAX_DECODE_STEPS)
        if not (math.isfinite(guidance) and guidance >= 0):
            raise ValueError(f"guidance must be a finite number >= 0, got {guidance}")
        m = self.model.pixel_multiple
        scale = self.model.config.rate_scale(h0.rate)
        hc, wc = coded_size(h0.height, h0.width, scale)
        Hp, Wp = -(-hc // m) * m, -(-wc // m) * m
        z_shape = (Hp // m, Wp // m)
        comp = self.model.compressors[h0.rate]
        with self._timed("entropy_decode"):
            y_hat = comp.decompress_with(
                [[s.z for s in streams], [s.y for s in streams]], z_shape,
                lambda z_hat: self._run("hyper_synthesis", h0.rate, z_hat=z_hat).float(),
                device=self.device, impl=self.impl, timed=self._timed)
        latent = self._run("latent_synthesis", h0.rate, y_hat=y_hat).float()
        if k:
            ctx = self.context([s.header.caption for s in streams])
            unet = lambda x, t, c: self._run("unet", sample=x.to(self.dtype), timestep=t,  # noqa: E731
                                             context=c.to(self.dtype)).float()
            uncond = self.context([""]) if guidance != 1.0 else None
            latent = self.sampler.run(unet, latent, ctx, k, guidance, uncond)
        img = self._run("vae_decoder", latent=latent.to(self.dtype)).float()
        img = ((img[:, :, :hc, :wc] + 1) / 2).clamp(0, 1)
        if scale != 1.0:  # back to the size the header declares
            with self._timed("resize"):
                img = from_coded(img, (h0.height, h0.width))
        return img
