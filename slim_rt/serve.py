"""`slim-rt serve`: the codec as NVIDIA Triton Inference Server models, bound through PyTriton.

    from slim_rt.serve import ServeConfig, Server
    with Server(ServeConfig(model="slim-tiny", http_port=8000)) as srv:   # starts, warms up, ready
        print(srv.urls)                                                    # http, grpc, metrics, health

Two models, each with Triton's dynamic batcher (max batch and max queue delay configurable) and one
instance per device (the Python callables run in this process; Triton does HTTP/gRPC, batching,
health and Prometheus metrics):

  slim_decode  in:  data  BYTES [1]     the .slim file
                    steps INT32 [1]     optional: enhancement steps K (default: the file's)
               out: image UINT8 [H,W,3] the decoded image (1x1 black when the request failed)
                    png   BYTES [1]     the image as PNG, computed only when this output is requested
                    error BYTES [1]     "" or "BitstreamError: <one-line reason>" for this request
  slim_encode  in:  image UINT8 [H,W,C] pixels (C = 1, 3 or 4)  } exactly one of the two
                    file  BYTES [1]     a PNG/JPEG/... file      }
                    rate  INT32 [1]     optional: rate point (default: the server's --rate)
                    caption BYTES [1]   optional UTF-8 caption (absent: automatic, "": none)
               out: data  BYTES [1]     the .slim file
                    error BYTES [1]     as above

Errors are per request: Triton's Python binding can only fail a whole batch, so a bad request (corrupt
or foreign file, oversized image, unknown rate, bad pixels) gets its one-line reason in `error` while
the other requests of its batch are decoded as usual; a batch whose batched call fails is redone one
item at a time. `slim_rt.client.Client` raises the matching exception (BitstreamError, ...).
Nothing here runs at import time; pytriton is imported when a server starts.
"""
from __future__ import annotations

import io
import logging
import os
import re
import signal
import socket
import sys
import sysconfig
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from slim_rt.errors import first_line
from slim_rt.images import open_image_bytes
from slim_rt.models.registry import DEFAULT_MODEL

DECODE_MODEL = "slim_decode"
ENCODE_MODEL = "slim_encode"
LOG = logging.getLogger("slim_rt.serve")


# -- per-request error text ------------------------------------------------------------------------
def error_text(e: BaseException) -> str:
    """'<ExceptionClass>: <first line of the message>' (what the `error` output carries)."""
    msg = first_line(e)
    return type(e).__name__ if msg == type(e).__name__ else f"{type(e).__name__}: {msg}"


def _scalars(req, name: str, n: int) -> list | None:
    """Per-item values of an optional [n, 1] input (None when the request did not send it)."""
    if name not in req.keys():
        return None
    a = np.asarray(req[name])
    if a.shape[0] != n or a.size != n:
        raise ValueError(f"input '{name}' must hold one value per item, got shape {list(a.shape)}")
    return [x for x in a.reshape(n)]


def _batch_size(req) -> int:
    """Items in one request (its inputs' first dimension; Triton makes them agree)."""
    return int(np.asarray(next(iter(req.values()))).shape[0])


def _as_bytes(x) -> bytes:
    if isinstance(x, (bytes, bytearray, np.bytes_)):
        return bytes(x)
    if isinstance(x, str):
        return x.encode("utf-8")
    raise ValueError(f"expected bytes, got {type(x).__name__}")


def _requested(req, name: str) -> bool:
    names = getattr(req, "requested_output_names", None)
    return names is None or name in names


# -- slim_decode ------------------------------------------------------------------------------------
class DecodeModel:
    """PyTriton infer callable for one Decoder (one device): a list of requests -> a list of outputs."""

    def __init__(self, decoder):
        self.decoder = decoder

    def __call__(self, requests) -> list[dict]:
        from slim_rt.api import _budget_chunks
        from slim_rt.pipeline import MAX_DECODE_STEPS

        pipe = self.decoder.pipeline
        items, errors, results = [], {}, {}  # items: (request index, data, steps); keyed by flat index
        spans = []
        for r, req in enumerate(requests):
            start = len(items)
            try:
                data = np.asarray(req["data"])
                n = data.shape[0]
                if data.size != n:
                    raise ValueError(f"input 'data' must be one .slim file per item, got shape {list(data.shape)}")
                steps = _scalars(req, "steps", n) or [None] * n
                for d, k in zip(data.reshape(n), steps):
                    items.append((r, d, None if k is None else int(k)))
            except Exception as e:  # a malformed request: all its items fail, the others go on
                del items[start:]
                for _ in range(_batch_size(req)):
                    items.append((r, None, None))
                    errors[len(items) - 1] = error_text(e)
            spans.append((start, len(items)))
        # validate each item from its header before any work (corrupt, foreign, oversized, bad steps)
        parsed = {}
        for i, (_, d, k) in enumerate(items):
            if i in errors:
                continue
            try:
                bs = pipe.parse(_as_bytes(d))
                _budget_chunks([i], bs.header.width, bs.header.height, self.decoder.max_pixels, "decoder")
                pipe.check_steps(bs.header.steps if k is None else k, MAX_DECODE_STEPS)
                parsed[i] = _as_bytes(d)
            except Exception as e:
                errors[i] = error_text(e)
        groups = defaultdict(list)  # decode_batch takes one steps override: group by it
        for i in parsed:
            groups[items[i][2]].append(i)
        for k, idx in groups.items():
            self._decode(idx, [parsed[i] for i in idx], k, results, errors)
        return [self._response(req, range(*span), results, errors) for req, span in zip(requests, spans)]

    def _decode(self, idx, datas, steps, results, errors) -> None:
        imgs = _batch_or_each(idx, datas, lambda ds: self.decoder.decode_batch(ds, steps=steps, output="tensor"),
                              lambda d: self.decoder.decode(d, steps=steps, output="tensor"), errors)
        for i, im in zip(idx, imgs):
            if im is not None:
                results[i] = to_uint8_hwc(im)

    @staticmethod
    def _response(req, idx, results, errors) -> dict:
        idx = list(idx)
        shapes = {results[i].shape for i in idx if i in results}
        if len(shapes) > 1:  # one request's images must stack into one tensor
            for i in idx:
                if i in results:
                    del results[i]
                    errors[i] = "ValueError: the .slim files of one request decode to different sizes; " \
                                "send one file per request"
            shapes = set()
        shape = shapes.pop() if shapes else (1, 1, 3)  # a failed request's image: 1x1 (PyTriton: no empty)
        out = {"error": np.array([[errors.get(i, "").encode()] for i in idx], dtype=object)}
        if _requested(req, "image"):
            out["image"] = np.stack([results.get(i, np.zeros(shape, np.uint8)) for i in idx])
        if _requested(req, "png"):
            out["png"] = np.array([[to_png(results[i]) if i in results else b""] for i in idx], dtype=object)
        return out


def to_uint8_hwc(x) -> np.ndarray:
    """A decoded float [3,H,W] tensor in [0,1] -> uint8 HWC, rounded exactly as Decoder.decode's PIL."""
    from slim_rt.images import to_pil
    return np.asarray(to_pil(x))


def to_png(a: np.ndarray) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(a, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def _batch_or_each(idx, items, run_batch, run_one, errors) -> list:
    """run_batch(items); when it raises, run_one per item so only the culprit fails: its error text
    goes to errors[idx[k]] and its output is None."""
    try:
        return run_batch(items)
    except Exception:
        out = []
        for i, item in zip(idx, items):
            try:
                out.append(run_one(item))
            except Exception as e:
                _log_unexpected(e)
                errors[i] = error_text(e)
                out.append(None)
        return out


def _log_unexpected(e: Exception) -> None:
    if not isinstance(e, ValueError):  # SlimErrors and bad input are the client's; others are logged
        LOG.warning("request failed: %s", error_text(e), exc_info=e)


# -- slim_encode ------------------------------------------------------------------------------------


class EncodeModel:
    """PyTriton infer callable for one Encoder (one device)."""

    def __init__(self, encoder):
        self.encoder = encoder

    def __call__(self, requests) -> list[dict]:
        from slim_rt.errors import ResourceLimitError
        from slim_rt.images import to_tensor

        pipe = self.encoder.pipeline
        items, errors, results, spans = [], {}, {}, []  # items: (tensor, rate, caption)
        for req in requests:
            start = len(items)
            try:
                keys = set(req.keys())
                if len(keys & {"image", "file"}) != 1:
                    raise ValueError("send exactly one of 'image' (uint8 HxWxC pixels) or 'file' (image file bytes)")
                if "image" in keys:
                    px = np.asarray(req["image"])
                    if px.dtype != np.uint8 or px.ndim != 4:
                        raise ValueError(f"input 'image' must be uint8 HxWxC, got {px.dtype} {list(px.shape[1:])}")
                    n, srcs = px.shape[0], [np.array(x) for x in px]  # writable copies for torch
                else:
                    f = np.asarray(req["file"])
                    n = f.shape[0]
                    if f.size != n:
                        raise ValueError(f"input 'file' must be one file per item, got shape {list(f.shape)}")
                    srcs = [_as_bytes(x) for x in f.reshape(n)]
                rates = _scalars(req, "rate", n) or [self.encoder.rate] * n
                caps = _scalars(req, "caption", n) or [None] * n
                for src, rate, cap in zip(srcs, rates, caps):
                    try:
                        pipe.check_rate(int(rate))
                        c = None if cap is None else _as_bytes(cap).decode("utf-8")
                        t = to_tensor(open_image_bytes(src) if isinstance(src, bytes) else src)
                        h, w = t.shape[1:]
                        if h * w > self.encoder.max_pixels:
                            raise ResourceLimitError(
                                f"{w}x{h} is {w * h / 1e6:.1f} MP, over this encoder's budget of "
                                f"{self.encoder.max_pixels / 1e6:.1f} MP (max_pixels; see docs/memory.md)")
                        items.append((t, int(rate), c))
                    except UnicodeDecodeError:
                        items.append(None)
                        errors[len(items) - 1] = "ValueError: caption is not valid UTF-8"
                    except Exception as e:
                        items.append(None)
                        errors[len(items) - 1] = error_text(e)
            except Exception as e:  # a malformed request: all its items fail
                del items[start:]
                for i in range(start, start + _batch_size(req)):
                    items.append(None)
                    errors[i] = error_text(e)
            spans.append((start, len(items)))
        groups = defaultdict(list)
        for i, it in enumerate(items):
            if it is not None:
                groups[it[1]].append(i)
        for rate, idx in groups.items():
            self._encode(idx, [items[i][0] for i in idx], [items[i][2] for i in idx], rate, results, errors)
        out = []
        for a, b in spans:
            out.append({"data": np.array([[results.get(i, b"")] for i in range(a, b)], dtype=object),
                        "error": np.array([[errors.get(i, "").encode()] for i in range(a, b)], dtype=object)})
        return out

    def _encode(self, idx, tensors, captions, rate, results, errors) -> None:
        datas = _batch_or_each(idx, list(zip(tensors, captions)),
                               lambda its: self.encoder.encode_batch([t for t, _ in its], [c for _, c in its], rate=rate),
                               lambda it: self.encoder.encode_batch([it[0]], [it[1]], rate=rate)[0], errors)
        for i, d in zip(idx, datas):
            if d is not None:
                results[i] = d


# -- the server -------------------------------------------------------------------------------------
@dataclass
class ServeConfig:
    model: str | None = None            # name or SLIM model directory (backends torch, torch.compile, compiled)
    backend: str = "torch"              # torch | torch.compile | compiled | ort | trt
    devices: tuple[str, ...] = ("cpu",)  # one model instance per device
    export_dir: str | None = None       # for ort / trt (slim-rt export)
    text_encoder: str | None = None     # a context-table folder in place of the text encoder (torch backends)
    address: str = "127.0.0.1"          # 0.0.0.0 to listen on every interface
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch: int = 8
    max_queue_delay_us: int = 2000
    max_pixels: int | None = None       # default: slim_rt.api.DEFAULT_MAX_PIXELS
    rate: int = 0                       # slim_encode's default rate point
    warmup: tuple[int, int] | None = (256, 256)  # (H, W) encoded and decoded at each rate before serving
    log_file: str | None = None         # Triton's log (default: this process's stdout)
    exit_timeout_s: int = 5             # Triton's wait for in-flight requests on shutdown
    extra: dict = field(default_factory=dict)  # more TritonConfig fields


_UNSET = object()


def _ensure_python_libdir():
    """The Python backend's stub links against libpython; pyenv-style builds keep it out of the loader's
    path. Add this interpreter's LIBDIR to LD_LIBRARY_PATH (inherited by tritonserver and its stubs).
    Returns the previous value (`_UNSET`: none; None: nothing changed) for `Server.stop` to restore."""
    libdir = sysconfig.get_config_var("LIBDIR")
    if not libdir or not os.path.isdir(libdir):
        return None
    cur = os.environ.get("LD_LIBRARY_PATH")
    if libdir in (cur or "").split(":"):
        return None
    os.environ["LD_LIBRARY_PATH"] = f"{libdir}:{cur}" if cur else libdir
    return _UNSET if cur is None else cur


def _check_port_free(address: str, port: int, what: str) -> None:
    if not 0 < port < 65536:
        raise ValueError(f"{what} {port} is not a port number")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError as e:
            raise ValueError(f"cannot listen on {address}:{port} ({what}): {e.strerror or e}") from None


def require_pytriton() -> None:
    """ImportError with the install hint when the [serve] extra is missing."""
    try:
        import pytriton.triton  # noqa: F401
    except ImportError as e:
        raise ImportError(f"slim-rt serve needs nvidia-pytriton ({e}): pip install 'slim-rt[serve]'") from None


def build_codecs(cfg: ServeConfig, device: str):
    """(Encoder, Decoder) sharing one pipeline on `device`."""
    import slim_rt
    from slim_rt.api import DEFAULT_MAX_PIXELS, ENGINE_BACKENDS

    max_pixels = cfg.max_pixels or DEFAULT_MAX_PIXELS
    if cfg.backend in ENGINE_BACKENDS:
        if not cfg.export_dir:
            raise ValueError(f"backend {cfg.backend!r} serves an exported directory: pass --export-dir")
        dec = slim_rt.Decoder.from_engines(cfg.export_dir, cfg.backend, device=device, max_pixels=max_pixels)
    else:
        if cfg.export_dir:
            raise ValueError(f"--export-dir is for the ort and trt backends, not {cfg.backend!r}")
        dec = slim_rt.Decoder.from_pretrained(cfg.model or DEFAULT_MODEL, device=device,
                                              backend=cfg.backend, max_pixels=max_pixels,
                                              text_encoder=cfg.text_encoder)
    enc = slim_rt.Encoder(dec.pipeline, rate=cfg.rate, max_pixels=max_pixels)
    return enc, dec


def _warmup_size(cfg: ServeConfig) -> tuple[int, int] | None:
    if cfg.warmup is None or cfg.backend not in ("ort", "trt"):
        return cfg.warmup
    from slim_rt.export.manifest import read_manifest
    opt = read_manifest(cfg.export_dir).profile.opt  # engines: their optimal (batch, height, width)
    return int(opt[1]), int(opt[2])


class Server:
    """Triton Inference Server (PyTriton) serving slim_decode and slim_encode; `start()`/`stop()` or `with`."""

    def __init__(self, cfg: ServeConfig, say=None):
        self.cfg = cfg
        self._say = say or (lambda msg: None)
        self._triton = None
        self.codecs: list = []

    @property
    def urls(self) -> dict[str, str]:
        c = self.cfg
        host = "127.0.0.1" if c.address in ("0.0.0.0", "") else c.address
        return {"http": f"http://{host}:{c.http_port}", "grpc": f"grpc://{host}:{c.grpc_port}",
                "metrics": f"http://{host}:{c.metrics_port}/metrics",
                "health": f"http://{host}:{c.http_port}/v2/health/ready"}

    def start(self) -> "Server":
        require_pytriton()
        c = self.cfg
        if c.max_batch < 1:
            raise ValueError(f"max batch must be >= 1, got {c.max_batch}")
        if c.max_queue_delay_us < 0:
            raise ValueError(f"max queue delay must be >= 0 us, got {c.max_queue_delay_us}")
        ports = {"--http-port": c.http_port, "--grpc-port": c.grpc_port, "--metrics-port": c.metrics_port}
        if len(set(ports.values())) != 3:
            raise ValueError(f"the HTTP, gRPC and metrics ports must differ, got {sorted(ports.values())}")
        for what, port in ports.items():
            _check_port_free(c.address, port, what)
        if not c.devices:
            raise ValueError("no device given")
        t0 = time.perf_counter()
        self.codecs = [build_codecs(c, d) for d in c.devices]
        self._say(f"loaded {c.model or c.export_dir or 'slim-tiny'} ({c.backend}) on {', '.join(c.devices)} "
                  f"in {time.perf_counter() - t0:.1f} s")
        size = _warmup_size(c)
        if size is not None:
            t0 = time.perf_counter()
            # the compiled backend captures a CUDA graph per shape: every batch size the batcher can form
            batches = range(1, c.max_batch + 1) if c.backend == "compiled" else (1,)
            for enc, dec in self.codecs:
                dec.warmup(sizes=[size], batch_sizes=tuple(batches))
                enc.encode(np.full((*size, 3), 128, np.uint8))  # and the automatic captioner, if K >= 1
            self._say(f"warmed up at {size[1]}x{size[0]} in {time.perf_counter() - t0:.1f} s")
        self._start_triton()
        return self

    def _start_triton(self) -> None:
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
        from pytriton.triton import Triton, TritonConfig

        c = self.cfg
        self._saved_ld = _ensure_python_libdir()  # before tritonserver starts: it and its Python stubs inherit it
        tc = TritonConfig(http_address=c.address, http_port=c.http_port, grpc_address=c.address,
                          grpc_port=c.grpc_port, metrics_address=c.address, metrics_port=c.metrics_port,
                          allow_metrics=True, allow_gpu_metrics=any(d.startswith("cuda") for d in c.devices),
                          exit_timeout_secs=c.exit_timeout_s, log_file=c.log_file, **c.extra)
        triton = Triton(config=tc)
        self._triton = triton
        try:
            batcher = DynamicBatcher(max_queue_delay_microseconds=c.max_queue_delay_us)
            mc = ModelConfig(max_batch_size=c.max_batch, batcher=batcher)
            triton.bind(DECODE_MODEL, [DecodeModel(dec) for _, dec in self.codecs],
                        inputs=[Tensor(name="data", dtype=bytes, shape=(1,)),
                                Tensor(name="steps", dtype=np.int32, shape=(1,), optional=True)],
                        outputs=[Tensor(name="image", dtype=np.uint8, shape=(-1, -1, 3)),
                                 Tensor(name="png", dtype=bytes, shape=(1,)),
                                 Tensor(name="error", dtype=bytes, shape=(1,))],
                        config=mc)
            triton.bind(ENCODE_MODEL, [EncodeModel(enc) for enc, _ in self.codecs],
                        inputs=[Tensor(name="image", dtype=np.uint8, shape=(-1, -1, -1), optional=True),
                                Tensor(name="file", dtype=bytes, shape=(1,), optional=True),
                                Tensor(name="rate", dtype=np.int32, shape=(1,), optional=True),
                                Tensor(name="caption", dtype=bytes, shape=(1,), optional=True)],
                        outputs=[Tensor(name="data", dtype=bytes, shape=(1,)),
                                 Tensor(name="error", dtype=bytes, shape=(1,))],
                        config=mc)
            triton.run()
        except BaseException as e:
            self.stop()
            if isinstance(e, Exception):
                lines = [ln.strip() for ln in str(e).replace("\\n", "\n").splitlines() if ln.strip()]
                cause = [ln for ln in lines[1:] if re.match(r"^[\w.]+(Error|Exception)\b", ln)]
                why = f"{lines[0][:200]} ... {cause[-1][:200]}" if cause else error_text(e)
                raise RuntimeError(f"Triton Inference Server did not start: {why}"
                                   + (f" (Triton's log: {c.log_file})" if c.log_file else "")) from e
            raise

    def is_alive(self) -> bool:
        return self._triton is not None and self._triton.is_alive()

    def stop(self) -> None:
        """Stop Triton (SIGINT to tritonserver, which ends its Python stubs); idempotent."""
        t, self._triton = self._triton, None
        if t is not None:
            t.stop()
        saved, self._saved_ld = getattr(self, "_saved_ld", None), None
        if saved is _UNSET:  # the environment as it was before start()
            os.environ.pop("LD_LIBRARY_PATH", None)
        elif saved is not None:
            os.environ["LD_LIBRARY_PATH"] = saved

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(cfg: ServeConfig, out=None) -> int:
    """Start, print the URLs, serve until SIGINT/SIGTERM, stop. Returns 0 after a clean stop, 1 if
    Triton died on its own."""
    out = out or sys.stdout

    def say(msg: str) -> None:
        print(f"slim-rt serve: {msg}", file=out, flush=True)

    stop = threading.Event()
    old = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, lambda *_: stop.set())
    srv = Server(cfg, say)
    try:
        if stop.is_set():
            return 0
        srv.start()
        if stop.is_set():
            return 0
        u = srv.urls
        say(f"ready: models {DECODE_MODEL}, {ENCODE_MODEL} (max batch {cfg.max_batch}, "
            f"max queue delay {cfg.max_queue_delay_us} us)")
        say(f"  HTTP    {u['http']}/v2/models/{DECODE_MODEL}/infer")
        say(f"  gRPC    {u['grpc']}")
        say(f"  health  {u['health']}")
        say(f"  metrics {u['metrics']}")
        while not stop.wait(0.5):
            if not srv.is_alive():
                say("Triton Inference Server exited unexpectedly")
                return 1
        say("stopping")
        return 0
    finally:
        srv.stop()
        for sig, h in old.items():
            signal.signal(sig, h)
