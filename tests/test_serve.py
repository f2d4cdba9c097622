"""`slim-rt serve` (NVIDIA Triton Inference Server through PyTriton) and slim_rt.client.

The request handlers are first checked in process (mixed batches, per-request errors, fallback), then a
real server is started as `python -m slim_rt.cli serve` on loopback ports chosen at run time: real
HTTP/gRPC requests, images compared bit for bit with an in-process Decoder, health, Prometheus metrics,
SIGTERM shutdown with no tritonserver left. Skipped with the reason where the server cannot start."""
from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import slim_rt
from slim_rt import bitstream as bsf
from slim_rt.captions import FixedCaptioner
from slim_rt.errors import BitstreamError, ModelMismatchError, ResourceLimitError
from slim_rt.serve import DecodeModel, EncodeModel, to_uint8_hwc

CAP = "a photo of a cat"
MAX_PIXELS = 128 * 128  # the server's budget in these tests
SIZES = [(64, 64), (64, 96), (96, 64), (128, 96), (96, 128)]


class Req(dict):
    """What PyTriton hands an infer callable: inputs with a batch dimension, requested outputs."""

    def __init__(self, outputs=("image", "png", "error"), **inputs):
        super().__init__(inputs)
        self.requested_output_names = list(outputs)


def slim_req(data: bytes, **kw) -> Req:
    return Req(data=np.array([[data]], dtype=object), **kw)


def pixels(h, w, seed):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def crafted_corrupt(data: bytes) -> bytes:
    """A file whose header and CRC are valid but whose y stream is not: it fails only in decoding."""
    bs = bsf.parse(data)
    return bsf.pack(dataclasses.replace(bs, y=bytes([bs.y[0] ^ 0xFF]) + bs.y[1:]))


@pytest.fixture(scope="module")
def files(codec, foreign_dir):
    enc, dec = codec
    good = {s: enc.encode(pixels(*s, seed=i), caption=CAP) for i, s in enumerate(SIZES)}
    big = slim_rt.Encoder(enc.pipeline, max_pixels=1 << 20).encode(pixels(128, 160, 9), caption=CAP)
    foreign = slim_rt.Encoder.from_pretrained(str(foreign_dir)).encode(pixels(64, 64, 0), caption="")
    return {"good": good, "big": big, "foreign": foreign, "crafted": crafted_corrupt(good[(64, 64)]),
            "truncated": good[(64, 96)][:-7]}


def ref_image(dec, data, steps=None):
    return to_uint8_hwc(dec.decode(data, steps=steps, output="tensor"))


# -- the handlers, in process -----------------------------------------------------------------------
def test_decode_model_mixed_batch_isolates_bad_requests(codec, files):
    enc, dec = codec
    model = DecodeModel(slim_rt.Decoder(dec.pipeline, max_pixels=MAX_PIXELS))
    g = files["good"]
    reqs = [slim_req(g[(64, 64)]), slim_req(files["crafted"]), slim_req(b"junk"), slim_req(g[(64, 96)]),
            slim_req(files["foreign"]), slim_req(files["big"]), slim_req(files["truncated"]),
            slim_req(g[(96, 64)], steps=np.array([[999]], np.int32)), slim_req(g[(96, 64)], outputs=("png", "error"))]
    out = model(reqs)
    assert len(out) == len(reqs)
    err = [o["error"][0, 0].decode() for o in out]
    assert err[0] == err[3] == err[8] == ""
    assert err[1].startswith("BitstreamError: corrupt bitstream")     # failed inside the batched decode
    assert err[2].startswith("BitstreamError: ") and err[6].startswith("BitstreamError: ")
    assert err[4].startswith("ModelMismatchError: bitstream was written by model")
    assert err[5].startswith("ResourceLimitError: 160x128 is 0.0 MP, over this decoder's budget")
    assert err[7].startswith("ValueError: steps must be in")
    # the good neighbours of the failed batch are decoded as alone (the batch was redone item by item)
    assert np.array_equal(out[0]["image"][0], ref_image(dec, g[(64, 64)]))
    assert np.array_equal(out[3]["image"][0], ref_image(dec, g[(64, 96)]))
    assert "image" not in out[8]  # only what the request asked for
    png = np.asarray(Image.open(io.BytesIO(out[8]["png"][0, 0])))
    assert np.array_equal(png, ref_image(dec, g[(96, 64)]))
    assert out[1]["image"].shape == (1, 1, 1, 3) and out[1]["png"][0, 0] == b""


def test_decode_model_batches_same_size_requests(codec, files):
    enc, dec = codec
    model = DecodeModel(dec)
    datas = [enc.encode(pixels(64, 64, 20 + i), caption=CAP) for i in range(3)]
    out = model([slim_req(d) for d in datas] + [slim_req(datas[0], steps=np.array([[0]], np.int32))])
    batched = dec.decode_batch(datas, output="tensor")  # one group: one decode_batch call
    for o, ref in zip(out, batched):
        assert o["error"][0, 0] == b"" and np.array_equal(o["image"][0], to_uint8_hwc(ref))
    assert np.array_equal(out[3]["image"][0], ref_image(dec, datas[0], steps=0))


def test_encode_model_per_request_errors(codec):
    enc, dec = codec
    model = EncodeModel(slim_rt.Encoder(enc.pipeline, max_pixels=MAX_PIXELS, captioner=FixedCaptioner(CAP)))
    a = pixels(64, 64, 1)
    buf = io.BytesIO()
    Image.fromarray(pixels(64, 96, 2)).save(buf, format="PNG")
    reqs = [Req(image=a[None], caption=np.array([[CAP.encode()]], dtype=object)),
            Req(file=np.array([[buf.getvalue()]], dtype=object), rate=np.array([[1]], np.int32),
                caption=np.array([[b""]], dtype=object)),
            Req(image=a[None], rate=np.array([[5]], np.int32)),
            Req(file=np.array([[b"not an image"]], dtype=object)),
            Req(image=pixels(128, 160, 3)[None]),
            Req(image=np.zeros((1, 64, 64, 5), np.uint8)),
            Req(image=a[None], caption=np.array([[b"\xff\xfe"]], dtype=object)),
            Req(image=a[None], file=np.array([[b"x"]], dtype=object)),
            Req(image=a[None])]  # no caption: the encoder's captioner
    out = model(reqs)
    err = [o["error"][0, 0].decode() for o in out]
    assert err[0] == err[1] == err[8] == ""
    assert out[0]["data"][0, 0] == enc.encode(a, caption=CAP)
    assert out[1]["data"][0, 0] == enc.encode(Image.open(buf), caption="", rate=1)
    assert slim_rt.inspect(out[8]["data"][0, 0])["caption"] == CAP
    assert err[2] == "ValueError: rate must be in [0, 1] for this model, got 5"
    assert err[3] == "ValueError: cannot read the image file: not a known image format"
    assert err[4].startswith("ResourceLimitError: 160x128 is 0.0 MP, over this encoder's budget")
    assert err[5].startswith("ValueError: array image must be HxW or HxWxC with C in (1, 3, 4)")
    assert err[6] == "ValueError: caption is not valid UTF-8"
    assert err[7].startswith("ValueError: send exactly one of 'image'")
    assert all(out[i]["data"][0, 0] == b"" for i in range(2, 8))


# -- a real server ----------------------------------------------------------------------------------
def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def server_processes(pid: int, http_port: int) -> list[str]:
    """tritonserver / Python stub processes that belong to the server process `pid`."""
    left = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if ("tritonserver" in cmd and f"--http-port {http_port} " in cmd) or f"pytrtion{pid}-" in cmd:
            left.append(f"{p.name}: {cmd[:120]}")
    return left


def http(url: str, body: dict | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric(text: str, name: str, model: str) -> float:
    m = re.search(rf'^{name}{{model="{model}",version="1"}} (\S+)$', text, re.M)
    assert m, f"{name} for {model} not in the metrics"
    return float(m.group(1))


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory):
    pytest.importorskip("pytriton", reason="nvidia-pytriton is not installed (pip install 'slim-rt[serve]')")
    pytest.importorskip("tritonclient.http", reason="tritonclient is not installed")
    tmp = tmp_path_factory.mktemp("serve")
    http_port, grpc_port, metrics_port = free_ports(3)
    log = open(tmp / "stdout.txt", "w")
    cmd = [sys.executable, "-m", "slim_rt.cli", "serve", "--model", str(tiny_dir), "--http-port", str(http_port),
           "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port), "--max-batch", "8",
           "--max-queue-delay-us", "100000", "--max-pixels", str(MAX_PIXELS), "--warmup", "64", "64",
           "--log-file", str(tmp / "triton.log")]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    out = lambda: (tmp / "stdout.txt").read_text()  # noqa: E731
    deadline = time.monotonic() + 90
    try:
        while "ready:" not in out():
            if proc.poll() is not None:
                tail = out().strip().splitlines()[-1:] or ["(no output)"]
                if "did not start" in out():
                    pytest.skip(f"the Triton server binary cannot start here: {tail[0]}")
                pytest.fail(f"slim-rt serve exited with {proc.returncode}: {out()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"slim-rt serve not ready after 90 s: {out()[-2000:]}")
            time.sleep(0.2)
        yield {"proc": proc, "http": f"http://127.0.0.1:{http_port}", "grpc": f"grpc://127.0.0.1:{grpc_port}",
               "metrics": f"http://127.0.0.1:{metrics_port}/metrics", "http_port": http_port, "out": out}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def test_server_health_and_urls(server):
    assert http(server["http"] + "/v2/health/ready")[0] == 200
    assert http(server["http"] + "/v2/health/live")[0] == 200
    for m in ("slim_decode", "slim_encode"):
        assert http(f"{server['http']}/v2/models/{m}/ready")[0] == 200
    text = server["out"]()
    for u in (server["http"], server["grpc"], server["metrics"], server["http"] + "/v2/health/ready"):
        assert u in text
    from slim_rt.client import Client
    assert Client(server["http"]).ready() and not Client("http://127.0.0.1:1", timeout_s=2).ready()


def test_server_decodes_bit_exact(server, codec, files):
    from slim_rt.client import Client
    enc, dec = codec
    with Client(server["http"]) as c, Client(server["grpc"]) as g:
        for s, data in files["good"].items():
            ref = ref_image(dec, data)
            img = c.decode(data)
            assert img.dtype == np.uint8 and img.shape == (*s, 3) and np.array_equal(img, ref)
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(c.decode(data, format="png")))), ref)
            assert np.array_equal(g.decode(data), ref)
        d = files["good"][(64, 64)]
        assert np.array_equal(c.decode(d, steps=0), ref_image(dec, d, steps=0))


def test_readme_curl_recipe(server, codec, files, tmp_path):
    """The README's curl lines (Triton's binary tensor extension), run as written against this server."""
    import shutil
    if not (shutil.which("curl") and shutil.which("perl")):
        pytest.skip("curl or perl not installed")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    script = re.search(r"^n=\$\(stat -c %s demo\.slim\).*?> decoded\.png$", readme, re.S | re.M).group(0)
    data = files["good"][(64, 96)]
    (tmp_path / "demo.slim").write_bytes(data)
    r = subprocess.run(["bash", "-c", script.replace("127.0.0.1:8000", server["http"].split("//")[1])],
                       cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and '"name":"error","datatype":"BYTES","shape":[1,1],"data":[""]' in r.stdout, r
    png = np.asarray(Image.open(tmp_path / "decoded.png"))
    assert np.array_equal(png, ref_image(codec[1], data))


def test_server_encodes_like_in_process(server, codec, tmp_path):
    from slim_rt.client import Client
    enc, dec = codec
    a = pixels(64, 96, 5)
    Image.fromarray(a).save(tmp_path / "a.png")
    with Client(server["http"]) as c:
        data = c.encode(a, caption=CAP)
        assert data == enc.encode(a, caption=CAP)
        assert c.encode((tmp_path / "a.png").read_bytes(), rate=1, caption="") == enc.encode(a, caption="", rate=1)
        assert c.encode(tmp_path / "a.png", rate=1, caption="") == enc.encode(a, caption="", rate=1)
        assert np.array_equal(c.decode(data), ref_image(dec, data))


def test_server_bad_requests_get_their_error_and_it_keeps_serving(server, files):
    from slim_rt.client import Client, ServerError
    g = files["good"][(64, 64)]
    with Client(server["http"]) as c:
        with pytest.raises(BitstreamError, match="corrupt bitstream"):
            c.decode(files["crafted"])
        for bad in (b"junk", files["truncated"], b""):
            with pytest.raises(BitstreamError):
                c.decode(bad)
        with pytest.raises(ModelMismatchError, match="bitstream was written by model"):
            c.decode(files["foreign"])
        with pytest.raises(ResourceLimitError, match=r"160x128 .* over this decoder's budget"):
            c.decode(files["big"])
        with pytest.raises(ResourceLimitError, match="over this encoder's budget"):
            c.encode(pixels(128, 160, 0), caption="")
        with pytest.raises(ValueError, match=r"rate must be in \[0, 1\] for this model, got 9"):
            c.encode(pixels(64, 64, 0), rate=9, caption="")
        with pytest.raises(ValueError, match=r"C in \(1, 3, 4\)"):
            c.encode(np.zeros((64, 64, 5), np.uint8), caption="")
        with pytest.raises(ValueError, match="not a known image format"):
            c.encode(b"GIF89a but not really", caption="")
        with pytest.raises(ValueError, match="steps must be in"):
            c.decode(g, steps=-1)
        assert c.decode(g).shape == (64, 64, 3)  # still serving
    # wrong dtype or shape: Triton refuses the request itself, with a clear message
    url = server["http"] + "/v2/models/slim_decode/infer"
    code, body = http(url, {"inputs": [{"name": "data", "shape": [1, 1], "datatype": "INT32", "data": [1]}]})
    assert code == 400 and "data-type is 'INT32', but model 'slim_decode' expects 'BYTES'" in body, body
    code, body = http(url, {"inputs": [{"name": "data", "shape": [1, 2], "datatype": "BYTES", "data": ["a", "b"]}]})
    assert code == 400 and "shape" in body.lower(), body
    with pytest.raises(ServerError, match="slim_nothing"):
        Client(server["http"])._infer("slim_nothing", {"data": np.array([[b"x"]], dtype=object)}, ["error"])
    assert Client(server["http"]).decode(g).shape == (64, 64, 3)


def test_server_concurrent_batch_with_a_bad_request(server, codec, files):
    """Concurrent requests are batched by Triton; the bad ones in the middle fail alone."""
    from slim_rt.client import Client
    enc, dec = codec
    g = files["good"]
    batch = [g[(64, 64)], g[(64, 96)], files["crafted"], g[(96, 64)], b"junk", g[(128, 96)]]
    before = urllib.request.urlopen(server["metrics"]).read().decode()
    results: list = [None] * len(batch)
    barrier = threading.Barrier(len(batch))

    def call(i):
        with Client(server["http"]) as c:
            c.ready()  # connect first, so the requests leave together
            barrier.wait()
            try:
                results[i] = c.decode(batch[i])
            except Exception as e:  # noqa: BLE001
                results[i] = e

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(batch))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i in (0, 1, 3, 5):  # different sizes: each decoded alone, so bit-exact with in-process decode
        assert isinstance(results[i], np.ndarray) and np.array_equal(results[i], ref_image(dec, batch[i])), results[i]
    assert isinstance(results[2], BitstreamError) and "corrupt bitstream" in str(results[2])
    assert isinstance(results[4], BitstreamError)
    after = urllib.request.urlopen(server["metrics"]).read().decode()
    n = metric(after, "nv_inference_count", "slim_decode") - metric(before, "nv_inference_count", "slim_decode")
    execs = (metric(after, "nv_inference_exec_count", "slim_decode")
             - metric(before, "nv_inference_exec_count", "slim_decode"))
    assert n == len(batch) and execs < n  # dynamic batching put several requests in one execution


def test_server_metrics(server):
    text = urllib.request.urlopen(server["metrics"]).read().decode()
    assert metric(text, "nv_inference_request_success", "slim_decode") >= 20
    assert metric(text, "nv_inference_request_success", "slim_encode") >= 5
    # requests Triton refuses (wrong dtype/shape) never reach the model; refused .slim files are answered
    # (their reason in `error`), so Triton counts no failure for either
    assert re.search(r'^nv_inference_request_failure{model="slim_decode",reason="BACKEND",version="1"} 0$', text, re.M)
    assert metric(text, "nv_inference_request_duration_us", "slim_decode") > 0
    assert metric(text, "nv_inference_compute_infer_duration_us", "slim_decode") > 0
    assert metric(text, "nv_inference_queue_duration_us", "slim_decode") > 0


def test_server_stops_cleanly_on_sigterm(server):  # last: it stops the module's server
    proc = server["proc"]
    assert server_processes(proc.pid, server["http_port"]), "no tritonserver found while serving"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert "slim-rt serve: stopping" in server["out"]()
    deadline = time.monotonic() + 10
    while server_processes(proc.pid, server["http_port"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert server_processes(proc.pid, server["http_port"]) == []
    with pytest.raises(OSError):
        urllib.request.urlopen(server["http"] + "/v2/health/ready", timeout=2)


# -- CLI errors -------------------------------------------------------------------------------------
def test_serve_cli_one_line_errors(tiny_dir, capsys):
    pytest.importorskip("pytriton")
    from slim_rt.cli import main
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    busy = s.getsockname()[1]
    try:
        for argv, msg in ((["--http-port", str(busy)], f"cannot listen on 127.0.0.1:{busy} (--http-port)"),
                          (["--backend", "ort"], "backend 'ort' serves an exported directory: pass --export-dir"),
                          (["--max-batch", "0"], "max batch must be >= 1"),
                          (["--http-port", "9", "--grpc-port", "9"], "ports must differ")):
            ports = dict(zip(("--http-port", "--grpc-port", "--metrics-port"), map(str, free_ports(3))))
            ports.update(dict(zip(argv[::2], argv[1::2])))
            args = ["serve", "--model", str(tiny_dir), *[x for kv in ports.items() for x in kv],
                    *[a for k, v in zip(argv[::2], argv[1::2]) if not k.endswith("-port") for a in (k, v)]]
            assert main(args) == 2
            err = capsys.readouterr().err
            assert err.startswith("slim-rt: error:") and err.count("\n") == 1 and msg in err, err
    finally:
        s.close()
