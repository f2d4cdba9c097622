"""Bulk coding of whole folders on Ray Data: `slim-rt bulk compress|decompress IN OUT`.

    from slim_rt.bulk import BulkConfig, run
    summary = run(BulkConfig("compress", "photos/", "s3://bucket/slim/", rate=0, workers=4))

IN and OUT are local folders or any filesystem URI pyarrow or fsspec knows (s3://, gs://, hdfs://,
file://, ...). The driver lists IN, reads the manifest in OUT, and hands the files still to do to
`ray.data.read_binary_files` -> `map_batches` on an actor pool: each actor holds one Encoder or
Decoder (one GPU each where the cluster has GPUs) and writes its outputs itself, atomically (a
temporary name, then a rename that never replaces an existing file). One record per input comes
back to the driver, which appends it to the manifest as the job runs (`OUT/slim-manifest.jsonl`:
source, output, bytes, bpp, rate, caption, error, ...). With GPU actors, decompression encodes and
writes its PNGs in CPU tasks after the actor stage (PNG encoding takes longer than a GPU decode).

Nothing lost, nothing done twice:
- a re-run skips the inputs whose manifest record is good and whose output is still there with the
  recorded size; an output with no record (the job stopped before the record was saved) is checked by
  a worker (a .slim of this model and rate that parses, a PNG of the right size) and kept, not redone;
- bad inputs (not an image, truncated, corrupt .slim, foreign model, over --max-pixels) are recorded
  with their one-line error and the job goes on; a re-run does not retry them (--retry-failed does);
- other failures (I/O, out of memory) are retried `retries` times per item, and a dead worker
  process is restarted and its batch retried `retries` times by Ray; past that the job stops, the
  manifest keeps what was done, and the same command resumes it.

Ray is imported when a job starts, not at import. One job at a time per OUT folder.
"""
from __future__ import annotations

import io
import json
import logging
import os
import posixpath
import re
import sys
import time
import uuid
import warnings
from dataclasses import dataclass, field, replace
from datetime import datetime

from slim_rt.api import DEFAULT_MAX_PIXELS, ENGINE_BACKENDS
from slim_rt.models.registry import DEFAULT_MODEL
from slim_rt.errors import first_line as _line
from slim_rt.images import IMAGE_EXTS

MANIFEST = "slim-manifest.jsonl"
PARTS = ".slim-manifest"            # manifest parts written during a run, merged into MANIFEST after it
_TMP = re.compile(r"^\..+\.tmp-[0-9a-f]{32}$")
CRASH_AFTER_ENV = "SLIM_RT_BULK_CRASH_AFTER"   # test hook: a worker process dies after N outputs
CRASH_ONCE_ENV = "SLIM_RT_BULK_CRASH_ONCE"     # ... only once: the first worker to create this file


class BulkError(Exception):
    """The job could not start (one line)."""


class JobStopped(BulkError):
    """The job stopped midway (workers died past their retries); the manifest keeps what was done."""


@dataclass
class BulkConfig:
    mode: str                        # "compress" (images -> .slim) or "decompress" (.slim -> PNG)
    input: str                       # folder or URI
    output: str                      # folder or URI
    model: str | None = None         # name or SLIM model directory (every node must have it)
    export_dir: str | None = None    # for backend ort|trt
    backend: str = "torch"
    device: str = "auto"             # auto: cuda when the cluster has GPUs, else cpu
    rate: int = 0
    caption: str | None = None       # None: automatic caption; "": none
    steps: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    workers: int | None = None       # actors (default: one per GPU, or one per `cpus_per_worker` CPUs)
    batch_size: int = 8
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    address: str | None = None       # Ray cluster address; None: an existing connection or a local Ray
    num_cpus: int | None = None      # CPUs of a local Ray (default: all)
    retries: int = 2
    overwrite: bool = False          # redo everything, replacing outputs
    retry_failed: bool = False       # also redo inputs recorded as bad
    flush_seconds: float = 5.0       # how often records are saved to the manifest during the run
    png_stage: bool | None = None    # decompress: PNG encoding + writes as CPU tasks after the actors
                                     # (None: with GPU actors, whose CPU would otherwise bound throughput)
    progress: bool = True


@dataclass
class Summary:
    inputs: int = 0                  # input files found
    ok: int = 0                      # inputs with a valid output (all runs)
    failed: int = 0                  # inputs with a recorded error (all runs)
    coded: int = 0                   # coded by this run
    kept: int = 0                    # found done by this run (manifest, or a valid output with no record)
    bytes: int = 0                   # .slim bytes of the ok inputs
    mean_bpp: float = 0.0
    seconds: float = 0.0             # this run's job time (Ray start, model loads and coding)
    first_result_s: float | None = None   # when the first records reached the driver (job start = 0)
    last_result_s: float | None = None
    manifest: str = ""
    errors: list[str] = field(default_factory=list)   # a few "source: error" lines

    @property
    def images_per_s(self) -> float:
        return self.coded / self.seconds if self.seconds > 0 else 0.0

    def line(self, mode: str) -> str:
        return (f"bulk {mode}: {self.inputs} files: {self.ok} ok ({self.coded} coded now, {self.kept} already done), "
                f"{self.failed} failed; {self.bytes} bytes .slim, mean {self.mean_bpp:.4f} bpp; "
                f"{self.coded} images in {self.seconds:.1f} s = {self.images_per_s:.2f} images/s; "
                f"manifest {self.manifest}")


# -- filesystems ------------------------------------------------------------------------------------
def resolve(uri: str):
    """A folder or URI -> (pyarrow FileSystem, path in it). Local paths become absolute; schemes pyarrow
    lacks go through fsspec."""
    import pyarrow.fs as pafs
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri)).rstrip("/") or "/"
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except Exception as first:  # noqa: BLE001  (pyarrow raises ArrowInvalid / ArrowNotImplementedError)
        try:
            import fsspec
            ffs, path = fsspec.core.url_to_fs(uri)
        except Exception as e:  # noqa: BLE001
            raise BulkError(f"cannot open {uri}: {_line(first)}; fsspec: {_line(e)}") from None
        fs = pafs.PyFileSystem(pafs.FSSpecHandler(ffs))
    return fs, path.rstrip("/")


def _is_local(fs) -> bool:
    import pyarrow.fs as pafs
    return isinstance(fs, pafs.LocalFileSystem)


def _exists(fs, path: str) -> bool:
    import pyarrow.fs as pafs
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _read(fs, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def write_atomic(fs, path: str, data: bytes, overwrite: bool = False) -> bool:
    """Write `data` to `path` through a temporary name in its folder; without `overwrite` an existing
    file is never replaced (locally: a hard link that fails when the name exists). False: it existed."""
    folder, name = posixpath.split(path)
    tmp = posixpath.join(folder, f".{name}.tmp-{uuid.uuid4().hex}")
    if _is_local(fs):
        os.makedirs(folder, exist_ok=True)
        try:
            with open(tmp, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if overwrite:
                os.replace(tmp, path)
                return True
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            except OSError:  # no hard links on this filesystem
                if os.path.exists(path):
                    return False
                os.replace(tmp, path)
            return True
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    if not overwrite and _exists(fs, path):  # object stores: no exclusive create, the final PUT is atomic
        return False
    fs.create_dir(folder, recursive=True)
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    fs.move(tmp, path)
    return True


def _list(fs, root: str) -> dict[str, int]:
    """Files under `root` -> {path relative to root: size}; a missing root is empty."""
    import pyarrow.fs as pafs
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        return {}
    if info.type != pafs.FileType.Directory:
        raise BulkError(f"{root} is not a folder")
    sel = pafs.FileSelector(root, recursive=True, allow_not_found=True)
    return {posixpath.relpath(i.path, root): i.size for i in fs.get_file_info(sel) if i.type == pafs.FileType.File}


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split("/"))


# -- manifest -------------------------------------------------------------------------------------
def read_manifest(fs, out_root: str) -> dict[str, dict]:
    """{input path relative to IN: last record}: the merged manifest, then any parts a stopped run left
    (a torn last line is ignored)."""
    recs: dict[str, dict] = {}
    paths = [posixpath.join(out_root, MANIFEST)] if _exists(fs, posixpath.join(out_root, MANIFEST)) else []
    parts = posixpath.join(out_root, PARTS)
    paths += [posixpath.join(parts, p) for p in sorted(_list(fs, parts)) if p.endswith(".jsonl")]
    for p in paths:
        for line in _read(fs, p).decode("utf-8", "replace").splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if isinstance(r, dict) and isinstance(r.get("rel"), str):
                recs[r["rel"]] = r
    return recs


class _ManifestWriter:
    """Appends records as parts (atomic files: object stores cannot append); `close` merges everything
    into MANIFEST, one record per input, and removes the parts."""

    def __init__(self, fs, out_root: str, flush_seconds: float):
        self.fs, self.root, self.every = fs, out_root, flush_seconds
        self.pending: list[dict] = []
        self.last = time.monotonic()
        self.run = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        self.n = 0

    def add(self, recs: list[dict]) -> None:
        self.pending += recs
        if time.monotonic() - self.last >= self.every:
            self.flush()

    def flush(self) -> None:
        self.last = time.monotonic()
        if not self.pending:
            return
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.pending).encode()
        write_atomic(self.fs, posixpath.join(self.root, PARTS, f"part-{self.run}-{self.n:06d}.jsonl"), data, True)
        self.n += 1
        self.pending = []

    def close(self) -> dict[str, dict]:
        self.flush()
        recs = read_manifest(self.fs, self.root)
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for _, r in sorted(recs.items())).encode()
        write_atomic(self.fs, posixpath.join(self.root, MANIFEST), data, True)
        parts = posixpath.join(self.root, PARTS)
        for p in _list(self.fs, parts):
            self.fs.delete_file(posixpath.join(parts, p))
        if _exists(self.fs, parts):
            self.fs.delete_dir(parts)
        return recs


# -- planning -------------------------------------------------------------------------------------
def _out_rel(rel: str, mode: str) -> str:
    return posixpath.splitext(rel)[0] + (".slim" if mode == "compress" else ".png")


def _job(cfg: BulkConfig) -> dict:
    """What decides an output's content: a record made under other settings is not "done" for these."""
    job = {"mode": cfg.mode, "model": cfg.model, "export_dir": cfg.export_dir, "steps": cfg.steps}
    if cfg.mode == "compress":
        job.update(rate=cfg.rate, caption=cfg.caption)
    return job


def _is_done(rec: dict | None, cfg: BulkConfig, outputs: dict[str, int]) -> bool:
    if rec is None or rec.get("error") is not None or cfg.overwrite:
        return False
    if rec.get("job") != _job(cfg):  # another model, K, rate or caption than this run asks for
        return False
    if cfg.mode == "compress" and rec.get("rate") != cfg.rate:
        return False
    return outputs.get(rec.get("out_rel")) == rec.get("output_bytes")


def plan(cfg: BulkConfig, in_fs, in_root: str, out_fs, out_root: str):
    """-> (all input rel paths, rel paths to code, records of collisions, manifest records)."""
    exts = IMAGE_EXTS if cfg.mode == "compress" else {".slim"}
    inputs = _list(in_fs, in_root)
    if not inputs and not _exists(in_fs, in_root):
        raise BulkError(f"no such folder: {cfg.input}")
    rels = sorted(r for r in inputs if posixpath.splitext(r)[1].lower() in exts and not _hidden(r))
    if not rels:
        raise BulkError(f"no input files ({', '.join(sorted(exts))}) in {cfg.input}")
    outputs = _list(out_fs, out_root)
    for rel in [r for r in outputs if _TMP.match(posixpath.basename(r))]:  # left by a stopped run
        out_fs.delete_file(posixpath.join(out_root, rel))
    manifest = read_manifest(out_fs, out_root)
    todo, collisions, seen = [], [], {}
    for rel in rels:
        orel = _out_rel(rel, cfg.mode)
        if orel in seen:
            collisions.append(_record(cfg, rel, orel, in_root, out_root, error=(
                f"{seen[orel]} and {rel} would both be written to {orel}", True)))
            continue
        seen[orel] = rel
        rec = manifest.get(rel)
        if _is_done(rec, cfg, outputs):
            continue
        if rec is not None and rec.get("job") != _job(cfg) and orel in outputs and not cfg.overwrite:
            # outputs of this folder's earlier job, made under other settings: neither kept as this
            # job's nor replaced, and its manifest stays as it is
            diff = ", ".join(k for k, v in _job(cfg).items() if (rec.get("job") or {}).get(k) != v)
            raise BulkError(f"{cfg.output} holds outputs of a job with other settings ({diff or 'none recorded'}), "
                            f"e.g. {orel}: use --overwrite or another output folder")
        if rec is not None and rec.get("error") and rec.get("permanent") and not (cfg.retry_failed or cfg.overwrite):
            continue
        todo.append(rel)
    return rels, todo, collisions, manifest


def _shown(uri: str, root: str) -> str:
    """How records name files: the absolute local path, or the URI the user gave."""
    return root if "://" not in uri else uri.rstrip("/")


def _record(cfg, rel, orel, in_root, out_root, error=None, **kw) -> dict:
    src, out = _shown(cfg.input, in_root), _shown(cfg.output, out_root)
    r = {"rel": rel, "source": posixpath.join(src, rel), "output": posixpath.join(out, orel),
         "out_rel": orel, "bytes": None, "output_bytes": None, "bpp": None, "rate": None, "caption": None,
         "width": None, "height": None, "status": "failed" if error else "coded", "error": None,
         "permanent": None, "job": _job(cfg),
         "time": datetime.now().astimezone().isoformat(timespec="milliseconds")}
    if error:
        r["error"], r["permanent"], r["output"] = error[0], error[1], None
    r.update(kw)
    return r


# -- workers --------------------------------------------------------------------------------------
def _retry(fn, retries: int):
    """fn() with `retries` more tries on anything but a ValueError (bad input: permanent)."""
    for attempt in range(retries + 1):
        try:
            return fn()
        except ValueError:
            raise
        except Exception:  # noqa: BLE001
            if attempt == retries:
                raise
            time.sleep(0.1 * 2 ** attempt)


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


class _Worker:
    """One Encoder or Decoder per actor; a batch of {path, bytes} rows -> one record per row."""

    def __init__(self, cfg: BulkConfig, device: str, in_root: str, out_fs, out_root: str, crash=None):
        import torch

        import slim_rt
        if device == "cpu":
            torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
        self.cfg, self.in_root, self.fs, self.out_root = cfg, in_root, out_fs, out_root
        self.crash_after, self.crash_once = crash or (None, None)
        self.written = 0
        if cfg.backend in ENGINE_BACKENDS:
            if not cfg.export_dir:
                raise ValueError(f"backend {cfg.backend!r} needs an exported directory (--export-dir)")
            dec = slim_rt.Decoder.from_engines(cfg.export_dir, cfg.backend, device=device, max_pixels=cfg.max_pixels)
        else:
            dec = slim_rt.Decoder.from_pretrained(cfg.model or DEFAULT_MODEL, device=device,
                                                  backend=cfg.backend, max_pixels=cfg.max_pixels)
        self.dec = dec
        self.enc = slim_rt.Encoder(dec.pipeline, rate=cfg.rate, steps=cfg.steps, max_pixels=cfg.max_pixels) \
            if cfg.mode == "compress" else None

    def __call__(self, batch):
        import pyarrow as pa
        rows = list(zip([str(p) for p in batch["path"]], batch["bytes"]))
        recs = self._compress(rows) if self.cfg.mode == "compress" else self._decompress(rows)
        return pa.Table.from_pylist(recs)

    def _rel(self, path: str) -> str:
        return posixpath.relpath(path, self.in_root)

    def _dst(self, rel: str) -> tuple[str, str]:
        orel = _out_rel(rel, self.cfg.mode)
        return orel, posixpath.join(self.out_root, orel)

    def _fail(self, rel, e: BaseException | tuple) -> dict:
        err = e if isinstance(e, tuple) else (_line(e), isinstance(e, ValueError))
        return _record(self.cfg, rel, self._dst(rel)[0], self.in_root, self.out_root, error=err)

    def _retry(self, fn):
        return _retry(fn, self.cfg.retries)

    def _each(self, fn, items: list) -> list:
        """fn(items) -> list of results; if the batched call fails, each item alone (with retries):
        a result or the exception, per item."""
        if not items:
            return []
        try:
            return list(self._retry(lambda: fn(items))) if len(items) == 1 else list(fn(items))
        except Exception as e:  # noqa: BLE001
            if len(items) == 1:
                return [e]
        out = []
        for it in items:
            try:
                out.append(self._retry(lambda: fn([it]))[0])
            except Exception as e:  # noqa: BLE001
                out.append(e)
        return out

    def _existing(self, rel: str, src: bytes) -> dict | None:
        """A record for an output already there (a stopped run wrote it), or None when there is none.
        An output that is not a valid result of this job is an error, never replaced without --overwrite."""
        orel, dst = self._dst(rel)
        if self.cfg.overwrite or not _exists(self.fs, dst):
            return None
        try:
            data = self._retry(lambda: _read(self.fs, dst))
            rec = self._check_output(rel, data, src)
        except ValueError as e:
            return self._fail(rel, (f"{dst} exists and is not a valid output of this job ({_line(e)}); "
                                    "remove it or use --overwrite", True))
        except Exception as e:  # noqa: BLE001
            return self._fail(rel, (_line(e), False))
        rec["status"] = "kept"
        return rec

    def _written(self, rel: str, ok: bool) -> None:
        if not ok:
            raise FileExistsError(f"{self._dst(rel)[1]} appeared while it was being written")
        self.written += 1
        if self.crash_after is not None and self.written >= self.crash_after:
            if self.crash_once is None or _claim(self.crash_once):
                os._exit(17)  # test hook: the process dies as if killed, after its output is written

    # compress: image files -> .slim
    def _check_output(self, rel: str, data: bytes, src: bytes) -> dict:
        from slim_rt import bitstream as bsf
        if self.cfg.mode == "decompress":
            return self._check_png(rel, data, src)
        bs = bsf.parse(data)
        h = bs.header
        if h.fingerprint != self.dec.model.fingerprint:
            raise ValueError(f"written by model {h.fingerprint.hex()}, not {self.dec.model.fingerprint.hex()}")
        if h.rate != self.cfg.rate:
            raise ValueError(f"rate {h.rate}, not {self.cfg.rate}")
        return self._slim_record(rel, data, h, output_bytes=len(data))

    def _slim_record(self, rel, data, h, **kw) -> dict:
        return _record(self.cfg, rel, self._dst(rel)[0], self.in_root, self.out_root, bytes=len(data),
                       bpp=8 * len(data) / (h.width * h.height), rate=h.rate, caption=h.caption,
                       width=h.width, height=h.height, **kw)

    def _pending(self, rows) -> tuple[dict[int, dict], list[tuple[int, str, bytes]]]:
        """Rows (path, bytes) -> ({row: record} of outputs already there, [(row, rel, bytes)] to code)."""
        recs: dict[int, dict] = {}
        pending = []
        for i, (path, data) in enumerate(rows):
            rel, data = self._rel(path), bytes(data)
            rec = self._existing(rel, data)
            if rec is not None:
                recs[i] = rec
            else:
                pending.append((i, rel, data))
        return recs, pending

    def _compress(self, rows) -> list[dict]:
        from slim_rt import bitstream as bsf
        from slim_rt.images import open_image_bytes, to_tensor
        recs, pending = self._pending(rows)
        todo = []
        for i, rel, data in pending:
            try:
                todo.append((i, rel, to_tensor(open_image_bytes(data))))
            except Exception as e:  # noqa: BLE001  (ValueError: a bad image)
                recs[i] = self._fail(rel, e)
        caps = None if self.cfg.caption is None else [self.cfg.caption]
        results = self._each(lambda items: self.enc.encode_batch(
            [t for _, _, t in items], None if caps is None else caps * len(items)), todo)
        for (i, rel, _), res in zip(todo, results):
            if isinstance(res, Exception):
                recs[i] = self._fail(rel, res)
                continue
            try:
                ok = self._retry(lambda: write_atomic(self.fs, self._dst(rel)[1], res, self.cfg.overwrite))
                h = bsf.parse(res).header
                recs[i] = self._slim_record(rel, res, h, output_bytes=len(res))
                self._written(rel, ok)
            except Exception as e:  # noqa: BLE001
                recs[i] = self._fail(rel, (_line(e), False))
        return [recs[i] for i in range(len(rows))]

    # decompress: .slim -> PNG
    def _check_png(self, rel: str, data: bytes, src: bytes) -> dict:
        from PIL import Image

        from slim_rt import bitstream as bsf
        try:
            img = Image.open(io.BytesIO(data))
            img.load()
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"not a readable PNG: {_line(e)}") from None
        h = bsf.parse(src).header
        if img.size != (h.width, h.height):
            raise ValueError(f"{img.width}x{img.height}, not {h.width}x{h.height}")
        return self._slim_record(rel, src, h, output_bytes=len(data))

    def _decompress(self, rows) -> list[dict]:
        from slim_rt import bitstream as bsf
        from slim_rt.errors import ResourceLimitError
        recs, pending = self._pending(rows)
        todo = []
        for i, rel, data in pending:
            try:
                h = bsf.parse(data).header
                if h.width * h.height > self.cfg.max_pixels:  # before any work (decode_batch checks it too)
                    raise ResourceLimitError(
                        f"{h.width}x{h.height} is over this job's --max-pixels {self.cfg.max_pixels}")
                todo.append((i, rel, data, h))
            except Exception as e:  # noqa: BLE001
                recs[i] = self._fail(rel, e)
        results = self._each(lambda items: self.dec.decode_batch([d for _, _, d, _ in items], steps=self.cfg.steps),
                             todo)
        for (i, rel, data, h), res in zip(todo, results):
            if isinstance(res, Exception):
                recs[i] = self._fail(rel, res)
                continue
            if self.cfg.png_stage:  # PNG encoding and the write: CPU tasks after this stage
                recs[i] = self._slim_record(rel, data, h, status="decoded", pixels=res.tobytes())
                continue
            try:
                png = _png(res)
                ok = self._retry(lambda: write_atomic(self.fs, self._dst(rel)[1], png, self.cfg.overwrite))
                recs[i] = self._slim_record(rel, data, h, output_bytes=len(png))
                self._written(rel, ok)
            except Exception as e:  # noqa: BLE001
                recs[i] = self._fail(rel, (_line(e), False))
        out = [recs[i] for i in range(len(rows))]
        if self.cfg.png_stage:
            for r in out:
                r.setdefault("pixels", None)
        return out


def _write_pngs(batch, cfg: BulkConfig, out_fs, out_root: str):
    """The PNG stage (CPU tasks) of decompression on GPU actors: decoded pixels -> PNG file, record."""
    import pyarrow as pa
    from PIL import Image
    recs = batch.to_pylist()
    for r in recs:
        px = r.pop("pixels", None)
        if r["status"] != "decoded":
            continue
        try:
            png = _png(Image.frombytes("RGB", (r["width"], r["height"]), px))
            if not _retry(lambda: write_atomic(out_fs, posixpath.join(out_root, r["out_rel"]), png, cfg.overwrite),
                          cfg.retries):
                raise FileExistsError(f"{posixpath.join(out_root, r['out_rel'])} appeared while it was being written")
            r["status"], r["output_bytes"] = "coded", len(png)
        except Exception as e:  # noqa: BLE001
            r.update(status="failed", error=_line(e), permanent=False, output=None)
    return pa.Table.from_pylist(recs)


def _claim(path: str) -> bool:
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except OSError:
        return False


# -- the job --------------------------------------------------------------------------------------
def _require():
    try:
        import pyarrow.fs  # noqa: F401
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise BulkError(f"slim-rt bulk needs Ray Data ({_line(e)}): pip install 'slim-rt[bulk]'") from None
    return ray


def _ray_init(cfg: BulkConfig):
    """-> (ray, started_here). Connects to `address`, reuses a connection, or starts a local Ray."""
    ray = _require()
    if ray.is_initialized():
        return ray, False
    kw = dict(include_dashboard=False, logging_level="WARNING", log_to_driver=True,
              configure_logging=True)
    try:
        if cfg.address:
            ray.init(address=cfg.address, **kw)
        else:
            ray.init(num_cpus=cfg.num_cpus, **kw)
    except Exception as e:  # noqa: BLE001  (ConnectionError, RuntimeError...)
        where = f"the Ray cluster at {cfg.address}" if cfg.address else "a local Ray"
        raise BulkError(f"cannot start or reach {where}: {_line(e)}") from None
    return ray, True


def _check_model(cfg: BulkConfig) -> BulkConfig:
    """Fail before Ray starts when the model (or export) is not here; local paths become absolute, so
    workers find them whatever their working folder (on a cluster: the same path on every node)."""
    from slim_rt.errors import ModelLoadError
    from slim_rt.models.registry import MODELS
    from slim_rt.models.registry import resolve as resolve_model
    if cfg.backend in ENGINE_BACKENDS:
        if not cfg.export_dir or not os.path.isdir(cfg.export_dir):
            raise BulkError(f"backend {cfg.backend!r} needs an exported directory: --export-dir "
                            f"{cfg.export_dir or '(missing)'} is not a folder")
        return replace(cfg, export_dir=os.path.abspath(cfg.export_dir))
    model = cfg.model or DEFAULT_MODEL
    try:
        path = resolve_model(model)
    except ModelLoadError as e:
        raise BulkError(str(e)) from None
    return cfg if model in MODELS else replace(cfg, model=str(path.resolve()))


def _stop_reason(e: BaseException) -> str:
    """The user's error inside Ray's wrapping (an actor's failed __init__, a task's exception)."""
    found = re.findall(r"^(?:[\w.]+\.)?(\w+(?:Error|Exception)): (.+)$", str(e), re.M)
    return f"{found[-1][0]}: {found[-1][1].strip()}" if found else _line(e)


def _resources(ray, cfg: BulkConfig) -> tuple[str, int, dict]:
    """-> (device for the actors, actor count, ray resources per actor)."""
    res = ray.cluster_resources()
    gpus, cpus = res.get("GPU", 0), res.get("CPU", 1)
    device = cfg.device
    if device == "auto":
        device = "cuda" if gpus > 0 else "cpu"
    if device.startswith("cuda"):
        if gpus <= 0:
            raise BulkError("--device cuda: the Ray cluster has no GPU")
        workers = cfg.workers or max(1, int(gpus // cfg.gpus_per_worker))
        if workers * cfg.gpus_per_worker > gpus and not cfg.address:
            raise BulkError(f"{workers} workers x {cfg.gpus_per_worker:g} GPUs need more than the {gpus:g} GPUs "
                            "of this Ray (lower --workers or --gpus-per-worker)")
        return "cuda", workers, {"num_gpus": cfg.gpus_per_worker, "num_cpus": cfg.cpus_per_worker}
    if device != "cpu":
        raise BulkError(f"unknown --device {device!r} (auto, cpu or cuda)")
    workers = cfg.workers or max(1, int(cpus // cfg.cpus_per_worker))
    if workers * cfg.cpus_per_worker > cpus and not cfg.address:  # a cluster may scale up; a local Ray never
        raise BulkError(f"{workers} workers x {cfg.cpus_per_worker:g} CPUs need more than the {cpus:g} CPUs "
                        "of this Ray (lower --workers or --cpus-per-worker)")
    return "cpu", workers, {"num_cpus": cfg.cpus_per_worker}


def run(cfg: BulkConfig, say=None) -> Summary:
    """Run (or resume) a bulk job; raises BulkError with one line when it cannot start or stops."""
    say = say or (lambda msg: print(msg, file=sys.stderr))
    if cfg.mode not in ("compress", "decompress"):
        raise BulkError(f"mode must be compress or decompress, got {cfg.mode!r}")
    if cfg.batch_size < 1 or cfg.retries < 0 or (cfg.workers is not None and cfg.workers < 1):
        raise BulkError("--batch-size and --workers must be at least 1, --retries at least 0")
    _require()
    cfg = _check_model(cfg)
    in_fs, in_root = resolve(cfg.input)
    out_fs, out_root = resolve(cfg.output)
    try:
        rels, todo, collisions, manifest = plan(cfg, in_fs, in_root, out_fs, out_root)
    except OSError as e:
        raise BulkError(f"cannot list {cfg.input} or {cfg.output}: {_line(e)}") from None
    writer = _ManifestWriter(out_fs, out_root, cfg.flush_seconds)
    writer.add(collisions)
    s = Summary(inputs=len(rels), manifest=posixpath.join(_shown(cfg.output, out_root), MANIFEST))
    if len(rels) - len(todo) - len(collisions):
        say(f"slim-rt: {len(rels) - len(todo) - len(collisions)} of {len(rels)} inputs already done "
            "or recorded as bad (manifest); skipping them")
    t0 = time.perf_counter()
    stopped: BaseException | None = None
    if todo:
        ray, started = _ray_init(cfg)
        bar = None
        restore = []  # Ray Data settings and loggers changed below: put back when the job ends
        try:
            device, workers, per_actor = _resources(ray, cfg)
            if cfg.png_stage is None:
                cfg = replace(cfg, png_stage=cfg.mode == "decompress" and device == "cuda")
            ctx = ray.data.DataContext.get_current()
            for name, level in (("ray.data", logging.WARNING), ("ray.data._internal.progress", logging.ERROR)):
                log = logging.getLogger(name)  # quiet; "progress bars disabled" on the second
                restore.append((log.setLevel, log.level))
                log.setLevel(level)
            for attr, value in (("enable_progress_bars", False),  # ours counts what reached the manifest
                                ("max_consecutive_actor_init_deaths", cfg.retries)):
                restore.append((lambda v, a=attr: setattr(ctx, a, v), getattr(ctx, attr)))
                setattr(ctx, attr, value)
            crash = None
            if os.environ.get(CRASH_AFTER_ENV):
                crash = (int(os.environ[CRASH_AFTER_ENV]), os.environ.get(CRASH_ONCE_ENV) or None)
            ds = ray.data.read_binary_files([posixpath.join(in_root, r) for r in todo], include_paths=True,
                                            filesystem=in_fs, num_cpus=0, concurrency=max(2, workers))
            with warnings.catch_warnings():  # bounded restarts have no named parameter yet (ray < 2.64)
                warnings.filterwarnings("ignore", message=".*ray_remote_args. is deprecated")
                ds = ds.map_batches(_Worker, batch_size=cfg.batch_size, batch_format="numpy",
                                    compute=ray.data.ActorPoolStrategy(size=workers),
                                    fn_constructor_kwargs=dict(cfg=cfg, device=device, in_root=in_root,
                                                               out_fs=out_fs, out_root=out_root, crash=crash),
                                    max_restarts=cfg.retries, max_task_retries=cfg.retries, **per_actor)
                if cfg.png_stage and cfg.mode == "decompress":
                    ds = ds.map_batches(_write_pngs, batch_size=cfg.batch_size, batch_format="pyarrow",
                                        fn_kwargs=dict(cfg=cfg, out_fs=out_fs, out_root=out_root),
                                        num_cpus=1, max_retries=cfg.retries)
            say(f"slim-rt: bulk {cfg.mode}: {len(todo)} files on {workers} {device} worker(s)"
                + (f" at {cfg.address}" if cfg.address else ""))
            if cfg.progress:
                from tqdm import tqdm
                bar = tqdm(total=len(todo), unit="img", file=sys.stderr)
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                recs = batch.to_pylist()
                now = time.perf_counter() - t0
                if s.first_result_s is None:
                    s.first_result_s = now
                s.last_result_s = now
                s.coded += sum(r["status"] == "coded" for r in recs)
                writer.add(recs)
                if bar is not None:
                    bar.update(len(recs))
        except BulkError:
            raise
        except Exception as e:  # noqa: BLE001  (Ray's errors when workers die past their retries)
            stopped = e
        finally:
            for put_back, old in reversed(restore):  # a caller's Ray session keeps its own settings
                put_back(old)
            if bar is not None:
                bar.close()
            s.seconds = time.perf_counter() - t0
            recs = writer.close()
            if started:
                ray.shutdown()
    else:
        recs = writer.close()
    _tally(s, rels, recs)
    if stopped is not None:
        raise JobStopped(f"the job stopped ({_stop_reason(stopped)}); {s.ok + s.failed} of {s.inputs} inputs are "
                         f"recorded in {s.manifest}: run the same command again to resume (outputs written "
                         "meanwhile are checked and kept)")
    return s


def _tally(s: Summary, rels: list[str], recs: dict[str, dict]) -> None:
    ok = [recs[r] for r in rels if r in recs and recs[r].get("error") is None]
    s.ok = len(ok)
    s.kept = s.ok - s.coded
    bad = [recs[r] for r in rels if r in recs and recs[r].get("error") is not None]
    s.failed = len(bad)
    s.bytes = sum(r["bytes"] or 0 for r in ok)
    s.mean_bpp = sum(r["bpp"] or 0 for r in ok) / len(ok) if ok else 0.0
    s.errors = [f"{r['source']}: {r['error']}" for r in bad[:5]]


# -- command line (slim-rt bulk; wired in slim_rt.cli) --------------------------------------------
def add_arguments(p) -> None:
    """`slim-rt bulk compress|decompress IN OUT [options]` on an argparse parser."""
    sub = p.add_subparsers(dest="mode", required=True)
    for mode, what in (("compress", "image files -> .slim"), ("decompress", ".slim -> PNG")):
        q = sub.add_parser(mode, help=f"{what}, on Ray Data (resumable; manifest OUT/{MANIFEST})")
        q.add_argument("input", metavar="IN", help="input folder or URI (s3://..., gs://..., file://...)")
        q.add_argument("output", metavar="OUT", help="output folder or URI (outputs keep IN's layout)")
        q.add_argument("--model", help="model name or SLIM model directory, on every node (default: slim-tiny)")
        q.add_argument("--backend", default="torch", choices=["torch", "torch.compile", "compiled", "ort", "trt"])
        q.add_argument("--export-dir", help="exported directory (slim-rt export) for --backend ort|trt")
        q.add_argument("--device", default="auto", help="auto (cuda when the cluster has GPUs), cpu or cuda")
        q.add_argument("--steps", type=int, help="enhancement steps K (default: the model's / the file's)")
        q.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                       help=f"record images over this many pixels as failures (default {DEFAULT_MAX_PIXELS})")
        if mode == "compress":
            q.add_argument("--rate", type=int, default=0, help="rate point index, 0 = lowest bitrate")
            g = q.add_mutually_exclusive_group()
            g.add_argument("--caption", help="one caption for every image ('' for none)")
            g.add_argument("--auto-caption", action="store_true",
                           help="caption each image automatically (default; written when --steps >= 1: a K=0 file "
                                "carries none)")
        q.add_argument("--workers", type=int, help="actors, one Encoder/Decoder each (default: one per GPU, "
                                                   "or one per --cpus-per-worker CPUs)")
        q.add_argument("--batch-size", type=int, default=8, help="images per batch call of a worker (default 8)")
        q.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs (torch threads) per actor (default 1)")
        q.add_argument("--gpus-per-worker", type=float, default=1.0, help="GPUs per actor with cuda (default 1)")
        q.add_argument("--address", help="Ray cluster to run on (HEAD:6379 as `ray start --head` "
                                         "prints, or auto on a cluster node); default: a local Ray")
        q.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
        q.add_argument("--retries", type=int, default=2,
                       help="retries of a failed item (I/O, out of memory) and restarts of a dead worker (default 2)")
        q.add_argument("--retry-failed", action="store_true", help="also redo inputs recorded as bad")
        q.add_argument("--overwrite", action="store_true", help="redo every input, replacing its output")
        q.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args, model: str | None) -> BulkConfig:
    return BulkConfig(args.mode, args.input, args.output, model=model, export_dir=args.export_dir,
                      backend=args.backend, device=args.device, rate=getattr(args, "rate", 0),
                      caption=getattr(args, "caption", None), steps=args.steps, max_pixels=args.max_pixels,
                      workers=args.workers, batch_size=args.batch_size, cpus_per_worker=args.cpus_per_worker,
                      gpus_per_worker=args.gpus_per_worker, address=args.address, num_cpus=args.num_cpus,
                      retries=args.retries, overwrite=args.overwrite, retry_failed=args.retry_failed,
                      progress=not args.no_progress)
