"""A client for `slim-rt serve` (NVIDIA Triton Inference Server), on `tritonclient`.

    from slim_rt.client import Client
    with Client("http://127.0.0.1:8000") as c:     # or "grpc://127.0.0.1:8001"
        data = c.encode(open("cat.png", "rb").read(), rate=0)   # or uint8 HxWxC pixels
        img = c.decode(data)                        # np.ndarray uint8 HxWx3
        png = c.decode(data, format="png")          # PNG bytes

A request the server refuses raises the same exception as in-process decoding (BitstreamError,
ModelMismatchError, ResourceLimitError, ValueError) with the server's one-line reason; transport and
server failures raise `ServerError`. One Client per thread (tritonclient connections are not shared).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from slim_rt import errors as _errors
from slim_rt.errors import SlimError

DECODE_MODEL = "slim_decode"
ENCODE_MODEL = "slim_encode"


class ServerError(SlimError, RuntimeError):
    """The server could not be reached, or failed a request for a reason of its own."""


_KNOWN = {"BitstreamError": _errors.BitstreamError, "ModelMismatchError": _errors.ModelMismatchError,
          "ResourceLimitError": _errors.ResourceLimitError, "ModelLoadError": _errors.ModelLoadError,
          "ValueError": ValueError}


def raise_for(error: str) -> None:
    """Raise the exception a server `error` output names ("Class: reason"); nothing when empty."""
    if not error:
        return
    name, _, msg = error.partition(": ")
    cls = _KNOWN.get(name)
    if cls is None:
        raise ServerError(error)
    raise cls(msg or name)


class Client:
    def __init__(self, url: str = "http://127.0.0.1:8000", timeout_s: float = 60.0):
        scheme, sep, rest = url.partition("://")
        if not sep:
            scheme, rest = "http", url
        if scheme not in ("http", "grpc"):
            raise ValueError(f"url must start with http:// or grpc://, got {url!r}")
        self.url, self.scheme, self.timeout_s = url, scheme, timeout_s
        self._rest = rest.rstrip("/")
        self._client = None
        self._mod = None

    def _conn(self):
        if self._client is None:
            try:
                if self.scheme == "http":
                    import tritonclient.http as mod
                    self._client = mod.InferenceServerClient(self._rest, connection_timeout=self.timeout_s,
                                                             network_timeout=self.timeout_s)
                else:
                    import tritonclient.grpc as mod
                    self._client = mod.InferenceServerClient(self._rest)
            except ImportError as e:
                raise ImportError(f"slim_rt.client needs tritonclient ({e}): pip install 'slim-rt[serve]'") from None
            self._mod = mod
        return self._client, self._mod

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def ready(self) -> bool:
        """True when the server and both models are ready (/v2/health/ready)."""
        try:
            c, _ = self._conn()
            return bool(c.is_server_ready())
        except Exception:
            return False

    def _infer(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        c, mod = self._conn()  # first: it names the package to install when tritonclient is missing
        from tritonclient.utils import InferenceServerException, np_to_triton_dtype
        ins = []
        for name, a in inputs.items():
            t = mod.InferInput(name, list(a.shape), "BYTES" if a.dtype == object else np_to_triton_dtype(a.dtype))
            t.set_data_from_numpy(a)
            ins.append(t)
        outs = [mod.InferRequestedOutput(n) for n in outputs]
        try:
            kw = {"client_timeout": self.timeout_s} if self.scheme == "grpc" else {}
            res = c.infer(model, ins, outputs=outs, **kw)
        except InferenceServerException as e:
            msg = (e.message() or str(e)).strip().splitlines()
            raise ServerError(f"{model} at {self.url}: {msg[0] if msg else 'request failed'}") from None
        except (OSError, ConnectionError) as e:
            raise ServerError(f"cannot reach {self.url}: {e}") from None
        got = {n: res.as_numpy(n) for n in outputs}
        err = got["error"].reshape(-1)[0]
        raise_for(err.decode() if isinstance(err, bytes) else str(err))
        return got

    def decode(self, data: bytes, steps: int | None = None, format: str = "array"):
        """.slim bytes -> uint8 HxWx3 array (format="png": the PNG file's bytes)."""
        if format not in ("array", "png"):
            raise ValueError(f"format must be 'array' or 'png', got {format!r}")
        inputs = {"data": np.array([[bytes(data)]], dtype=object)}
        if steps is not None:
            inputs["steps"] = np.array([[steps]], dtype=np.int32)
        name = "image" if format == "array" else "png"
        out = self._infer(DECODE_MODEL, inputs, [name, "error"])[name]
        return out[0] if format == "array" else bytes(out.reshape(-1)[0])

    def encode(self, image, rate: int | None = None, caption: str | None = None) -> bytes:
        """Image file bytes (PNG, JPEG, ...), a path, a PIL image or uint8 HxW[xC] pixels -> .slim bytes.
        rate None: the server's default; caption None: automatic, "": none."""
        if isinstance(image, (str, Path)):
            image = Path(image).read_bytes()
        if isinstance(image, (bytes, bytearray)):
            inputs = {"file": np.array([[bytes(image)]], dtype=object)}
        else:
            a = np.asarray(image)
            if a.dtype != np.uint8 or a.ndim not in (2, 3):
                raise ValueError(f"image must be image file bytes or uint8 HxW[xC] pixels, got {a.dtype} "
                                 f"array of shape {list(a.shape)}")
            inputs = {"image": np.ascontiguousarray(a.reshape(*a.shape[:2], -1)[None])}
        if rate is not None:
            inputs["rate"] = np.array([[rate]], dtype=np.int32)
        if caption is not None:
            inputs["caption"] = np.array([[caption.encode("utf-8")]], dtype=object)
        return bytes(self._infer(ENCODE_MODEL, inputs, ["data", "error"])["data"].reshape(-1)[0])
