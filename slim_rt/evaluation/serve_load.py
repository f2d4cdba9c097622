"""Closed-loop load test of `slim-rt serve` on loopback: throughput and latency, with and without
Triton's dynamic batching, against in-process decoding as the baseline.

    slim-rt bench serve [--model slim-tiny] [--size 256 256] [--clients 4] [--requests 16]
        [--max-batch 8] [--max-queue-delay-us 5000] [--budget-s 60] [--device cpu] [--backend torch]

Phases (each N clients x M requests, closed loop: a client sends its next request when the last one is
answered), under one time budget for all the load together (default 60 s; a phase stops sending when
its share is spent):
  in-process/1     one thread decoding with Decoder.decode (no server)
  in-process/N     N threads sharing one Decoder (no server)
  server/no-batch  `slim-rt serve --max-batch 1`, N clients
  server/batch     `slim-rt serve --max-batch B --max-queue-delay-us D`, N clients
The servers run as subprocesses listening on 127.0.0.1 only, on free ports; requests go there only.
Writes <out>/serve-<tag>.json and .md (default `slim_rt.evaluation.results_dir()`: benchmarks/results in
a source checkout; tag: cpu or the GPU's name). `python benchmarks/serve.py` runs the same.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from slim_rt.evaluation import results_dir
from slim_rt.evaluation.latency import cpu_model
from slim_rt.models.registry import DEFAULT_MODEL


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _images(size: tuple[int, int], n: int) -> list[np.ndarray]:
    """n distinct photos (scikit-image's), centre-cropped and resized to size (H, W)."""
    from PIL import Image
    from skimage import data
    names = ["astronaut", "chelsea", "coffee", "rocket", "cat", "immunohistochemistry", "retina", "hubble_deep_field"]
    out = []
    for i in range(n):
        a = np.asarray(getattr(data, names[i % len(names)])())
        if a.ndim == 2:
            a = np.stack([a] * 3, -1)
        h, w = a.shape[:2]
        s = min(h, w)
        im = Image.fromarray(a[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s, :3])
        if i >= len(names):  # more images than photos: mirrored copies
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        out.append(np.array(im.resize((size[1], size[0]), Image.BICUBIC)))
    return out


def closed_loop(call, datas: list[bytes], clients: int, requests: int, deadline: float) -> dict:
    """`clients` threads, each sending `requests` requests one after the other (stopping at deadline)."""
    lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def worker(c: int) -> None:
        ctx = call(c)
        barrier.wait()
        for r in range(requests):
            if time.perf_counter() > deadline:
                break
            t = time.perf_counter()
            try:
                ctx(datas[(c * requests + r) % len(datas)])
            except Exception as e:  # noqa: BLE001
                with lock:
                    errors.append(str(e).splitlines()[0])
                continue
            with lock:
                lat.append(time.perf_counter() - t)

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = sorted(x * 1e3 for x in lat)
    return {"clients": clients, "requests_per_client": requests, "completed": len(lat), "errors": len(errors),
            "first_error": errors[0] if errors else None, "wall_s": round(wall, 3),
            "images_per_s": round(len(lat) / wall, 2) if wall > 0 else None,
            "p50_ms": round(statistics.median(ms), 1) if ms else None,
            "p99_ms": round(float(np.percentile(ms, 99)), 1) if ms else None,
            "mean_ms": round(statistics.fmean(ms), 1) if ms else None,
            "stopped_by_budget": len(lat) + len(errors) < clients * requests}


class ServerProcess:
    """`python -m slim_rt.cli serve ...` on 127.0.0.1 free ports; stopped with SIGTERM."""

    def __init__(self, args, max_batch: int, delay_us: int, log_dir: Path):
        self.http_port, self.grpc_port, self.metrics_port = _free_ports(3)
        self.out = log_dir / f"serve-b{max_batch}.txt"
        cmd = [sys.executable, "-m", "slim_rt.cli", "serve", "--model", args.model, "--backend", args.backend,
               "--device", args.device, "--address", "127.0.0.1", "--http-port", str(self.http_port),
               "--grpc-port", str(self.grpc_port), "--metrics-port", str(self.metrics_port),
               "--max-batch", str(max_batch), "--max-queue-delay-us", str(delay_us),
               "--warmup", str(args.size[0]), str(args.size[1]), "--log-file", str(log_dir / f"triton-b{max_batch}.log")]
        if args.export_dir:
            cmd += ["--export-dir", args.export_dir]
        if args.text_encoder:
            cmd += ["--text-encoder", args.text_encoder]
        self._log = open(self.out, "w")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        while "ready:" not in self.out.read_text():
            if self.proc.poll() is not None or time.perf_counter() - t0 > args.start_timeout_s:
                self.stop()
                raise RuntimeError(f"slim-rt serve did not start: {self.out.read_text()[-1500:]}")
            time.sleep(0.2)
        self.start_s = time.perf_counter() - t0
        self.url = f"http://127.0.0.1:{self.http_port}"

    def metrics(self) -> str:
        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
            return r.read().decode()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def _metric(text: str, name: str, model: str = "slim_decode") -> float:
    m = re.search(rf'^{name}{{model="{model}",version="1"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else float("nan")


def _server_phase(args, max_batch, delay_us, datas, refs, share_s, log_dir) -> dict:
    from slim_rt.client import Client
    srv = ServerProcess(args, max_batch, delay_us, log_dir)
    try:
        with Client(srv.url) as c:  # warm the path; check the served images against in-process decoding
            diffs = [int(np.abs(c.decode(d).astype(int) - r).max()) for d, r in zip(datas, refs)]
        before = srv.metrics()

        def make(_):
            cl = Client(srv.url)
            cl.ready()
            return cl.decode

        res = closed_loop(make, datas, args.clients, args.requests, time.perf_counter() + share_s)
        after = srv.metrics()
        n = _metric(after, "nv_inference_count") - _metric(before, "nv_inference_count")
        ex = _metric(after, "nv_inference_exec_count") - _metric(before, "nv_inference_exec_count")
        q = _metric(after, "nv_inference_queue_duration_us") - _metric(before, "nv_inference_queue_duration_us")
        rq = _metric(after, "nv_inference_request_success") - _metric(before, "nv_inference_request_success")
        res.update({"max_batch": max_batch, "max_queue_delay_us": delay_us, "server_start_s": round(srv.start_s, 1),
                    "mean_batch": round(n / ex, 2) if ex else None,
                    "mean_queue_ms": round(q / rq / 1e3, 2) if rq else None,
                    "max_abs_diff_vs_in_process": max(diffs)})
        return res
    finally:
        srv.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="slim-rt bench serve", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--export-dir")
    ap.add_argument("--text-encoder", help="a context-table folder in place of the model's text encoder")
    ap.add_argument("--caption", help="caption of every file (default: automatic)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, nargs=2, default=[256, 256], metavar=("H", "W"))
    ap.add_argument("--rate", type=int, default=0)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--requests", type=int, default=16, help="requests per client and phase")
    ap.add_argument("--images", type=int, default=8, help="distinct .slim files cycled through")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-queue-delay-us", type=int, default=5000)
    ap.add_argument("--budget-s", type=float, default=60.0, help="all load phases together, at most")
    ap.add_argument("--start-timeout-s", type=float, default=180.0)
    ap.add_argument("--out", help="results folder (default: benchmarks/results in a source checkout, "
                                   "else ./slim-rt-results)")
    ap.add_argument("--tag", help="results name suffix (default: cpu or the GPU's name)")
    args = ap.parse_args(argv)
    if not 0 < args.budget_s <= 60.0:  # the bound: a load test on loopback runs at most a minute
        ap.error(f"--budget-s must be in (0, 60], got {args.budget_s:g}")

    import torch

    import slim_rt
    from slim_rt.serve import ServeConfig, build_codecs, to_uint8_hwc
    cfg = ServeConfig(model=args.model, backend=args.backend, export_dir=args.export_dir, rate=args.rate,
                      text_encoder=args.text_encoder)
    enc, dec = build_codecs(cfg, args.device)
    size = tuple(args.size)
    caps = None if args.caption is None else [args.caption] * args.images  # None: automatic captions
    datas = enc.encode_batch(_images(size, args.images), caps, rate=args.rate)
    dec.warmup(sizes=[size])
    refs = [to_uint8_hwc(dec.decode(d, output="tensor")) for d in datas]
    info = slim_rt.inspect(datas[0])
    share = args.budget_s / 4
    phases = {}
    t0 = time.perf_counter()
    phases["in-process/1"] = closed_loop(lambda _: dec.decode, datas, 1, args.requests * args.clients,
                                         time.perf_counter() + share)
    phases["in-process/N"] = closed_loop(lambda _: dec.decode, datas, args.clients, args.requests,
                                         time.perf_counter() + share)
    with tempfile.TemporaryDirectory() as tmp:
        phases["server/no-batch"] = _server_phase(args, 1, 0, datas, refs, share, Path(tmp))
        phases["server/batch"] = _server_phase(args, args.max_batch, args.max_queue_delay_us, datas, refs,
                                               share, Path(tmp))
    load_s = sum(p["wall_s"] for p in phases.values())

    import pytriton
    device = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else cpu_model()
    tag = args.tag or ("cpu" if not args.device.startswith("cuda") else device.replace(" ", "-"))
    result = {
        "what": "closed-loop decode load test of slim-rt serve (Triton via PyTriton) on 127.0.0.1 vs in-process",
        "model": args.model, "backend": args.backend, "device": args.device, "device_name": device,
        "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "size_hw": list(size), "rate": args.rate, "caption": args.caption or "automatic", "steps": info["steps"],
        "bytes_per_file": info["bytes"]["total"],
        "clients": args.clients, "requests_per_client": args.requests, "budget_s": args.budget_s,
        "load_s": round(load_s, 1), "elapsed_s": round(time.perf_counter() - t0, 1),
        "versions": {"torch": torch.__version__, "nvidia-pytriton": pytriton.__version__,
                     "python": platform.python_version(), "slim_rt": slim_rt.__version__},
        "phases": phases,
    }
    out = Path(args.out) if args.out else results_dir()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"serve-{tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"serve-{tag}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(r: dict) -> str:
    h, w = r["size_hw"]
    lines = [f"# slim-rt serve load test: {r['device']} ({r['device_name']})", "",
             f"Model `{r['model']}` ({r['backend']}), {w}x{h}, rate {r['rate']}, K = {r['steps']}, "
             f"caption {r.get('caption', 'automatic')!r}, "
             f"{r['bytes_per_file']} bytes per file; {r['clients']} clients x {r['requests_per_client']} requests, "
             f"closed loop on 127.0.0.1 (HTTP, tritonclient); {r['cores']} cores, {r['torch_threads']} torch threads; "
             f"load {r['load_s']} s of a {r['budget_s']:.0f} s budget. Versions: "
             + ", ".join(f"{k} {v}" for k, v in r["versions"].items()), "",
             "| phase | images/s | p50 ms | p99 ms | completed | mean batch | mean queue ms | max diff vs in-process |",
             "|---|---|---|---|---|---|---|---|"]
    for name, p in r["phases"].items():
        done = str(p["completed"]) + (" (budget)" if p["stopped_by_budget"] else "")
        if p["errors"]:
            done += f", {p['errors']} errors"
        lines.append(f"| {name} | {p['images_per_s']} | {p['p50_ms']} | {p['p99_ms']} | {done} | "
                     f"{p.get('mean_batch', '-')} | {p.get('mean_queue_ms', '-')} | "
                     f"{p.get('max_abs_diff_vs_in_process', '-')} |")
    lines += ["", "in-process/1: one thread calling Decoder.decode; in-process/N: N threads sharing one Decoder; "
              "server/no-batch: --max-batch 1; server/batch: dynamic batching "
              f"(max batch {r['phases']['server/batch']['max_batch']}, max queue delay "
              f"{r['phases']['server/batch']['max_queue_delay_us']} us). Mean batch = Triton's inference count / "
              "execution count; max diff = largest uint8 difference between a served image (one request at a time, "
              "before the load) and in-process decoding of that file.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
