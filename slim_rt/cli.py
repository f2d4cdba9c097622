"""`slim-rt` command line. Every failure is one line on stderr and a non-zero exit."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from slim_rt.errors import first_line
from slim_rt.models.registry import MODEL_HELP

OUTPUT_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP",
                  ".tif": "TIFF", ".tiff": "TIFF"}


class CliError(Exception):
    pass


def _err(msg: str, code: int = 2) -> int:
    print(f"slim-rt: error: {msg}", file=sys.stderr)
    return code


def _default_model() -> str:
    from slim_rt.models.registry import default_model
    return default_model(lambda msg: print(f"slim-rt: note: {msg}", file=sys.stderr))


def _model(args) -> str:
    return args.model or _default_model()


def _check_writable(path: Path) -> None:
    """A clean one-line error, before any work, when `path`'s folder cannot exist."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise CliError(f"cannot write {path}: {parent} is a file, not a folder")
            return


def _write_atomic(path: Path, data: bytes, overwrite: bool) -> bool:
    """Write via a temp file; without `overwrite` an existing file (even one another process wrote a
    moment ago) is never replaced. Returns False when `path` already existed and was kept."""
    if path.exists() and not overwrite:
        return False
    _check_writable(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CliError(f"cannot create folder {path.parent}: {e.strerror or e}") from None
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        if overwrite:
            tmp.replace(path)
        else:
            try:
                os.link(tmp, path)  # atomic, and fails if path appeared meanwhile
            except FileExistsError:
                return False
            except OSError:  # a filesystem without hard links
                if path.exists():
                    return False
                tmp.replace(path)
    except OSError as e:
        raise CliError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return True


def _image_format(path: Path) -> str:
    fmt = OUTPUT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise CliError(f"cannot write {path}: the output image must end in "
                       f"{', '.join(sorted(OUTPUT_FORMATS))}")
    return fmt


def _save_image_atomic(path: Path, img, overwrite: bool) -> bool:
    import io
    buf = io.BytesIO()
    img.save(buf, format=_image_format(path))
    return _write_atomic(path, buf.getvalue(), overwrite)


def _plan(pairs: list[tuple[Path, Path]], args) -> list[tuple[Path, Path]]:
    """Check outputs before any work: existing ones are an error, or skipped with --skip-existing."""
    todo = []
    for src, dst in pairs:
        _check_writable(dst)
        if dst.exists() and not args.overwrite:
            if not args.skip_existing:
                raise CliError(f"{dst} exists (use --overwrite to replace it, or --skip-existing)")
            continue
        todo.append((src, dst))
    if len(todo) < len(pairs):
        print(f"slim-rt: skipping {len(pairs) - len(todo)} existing output(s)", file=sys.stderr)
    return todo


def _written(dst: Path, ok: bool, args) -> bool:
    """After a write: an output that appeared meanwhile is skipped (--skip-existing) or an error."""
    if ok:
        return True
    if args.skip_existing:
        print(f"slim-rt: skipped {dst}: it exists (written by another process)", file=sys.stderr)
        return False
    raise CliError(f"{dst} exists (use --overwrite to replace it, or --skip-existing)")


def _pairs(inp: Path, out: Path | None, exts: set[str], new_suffix: str) -> list[tuple[Path, Path]]:
    if not inp.exists():
        raise CliError(f"no such file or directory: {inp}")
    if inp.is_dir():
        files = sorted(p for p in inp.rglob("*") if p.is_file() and p.suffix.lower() in exts)
        if not files:
            raise CliError(f"no input files ({', '.join(sorted(exts))}) in {inp}")
        if out is None:
            raise CliError("a folder input needs -o OUTPUT_FOLDER")
        if out.exists() and not out.is_dir():
            raise CliError(f"-o {out} must be a folder for a folder input")
        pairs = [(f, out / f.relative_to(inp).with_suffix(new_suffix)) for f in files]
        seen: dict[Path, Path] = {}
        for src, dst in pairs:
            if dst in seen:
                raise CliError(f"{seen[dst].name} and {src.name} would both be written to {dst}")
            seen[dst] = src
        return pairs
    return [(inp, out if out is not None else inp.with_suffix(new_suffix))]


def _progress(items, enabled: bool):
    if not enabled or len(items) < 2:
        return items
    from tqdm import tqdm
    return tqdm(items, unit="img", file=sys.stderr)


def cmd_compress(args) -> int:
    import slim_rt
    from slim_rt.images import IMAGE_EXTS
    pairs = _pairs(Path(args.input), Path(args.output) if args.output else None, IMAGE_EXTS, ".slim")
    if len(pairs) == 1 and pairs[0][1].suffix.lower() != ".slim":
        raise CliError(f"cannot write {pairs[0][1]}: the output of compress must end in .slim")
    total, pairs = len(pairs), _plan(pairs, args)
    if not pairs:
        print(f"nothing to do: all {total} outputs exist")
        return 0
    enc = slim_rt.Encoder.from_pretrained(_model(args), rate=args.rate, device=args.device,
                                          backend=args.backend, steps=args.steps, max_pixels=args.max_pixels,
                                          refine=_refine(args))
    failed = 0
    for src, dst in _progress(pairs, len(pairs) > 1):
        try:
            data = enc.encode(src, caption=args.caption)
        except (ValueError, OSError, RuntimeError) as e:
            if len(pairs) == 1:
                raise
            print(f"slim-rt: skipped {src}: {e}", file=sys.stderr)
            failed += 1
            continue
        if not _written(dst, _write_atomic(dst, data, args.overwrite), args):
            continue
        if len(pairs) == 1:
            info = slim_rt.inspect(data)
            print(f"{src} -> {dst}: {info['bytes']['total']} bytes, {info['bpp']:.4f} bpp, "
                  f"caption {info['caption']!r}")
    if len(pairs) > 1:
        print(f"compressed {len(pairs) - failed}/{len(pairs)} images into {args.output}")
    return 1 if failed else 0


def cmd_decompress(args) -> int:
    import slim_rt
    pairs = _pairs(Path(args.input), Path(args.output) if args.output else None, {".slim"}, ".png")
    for _, dst in pairs:
        _image_format(dst)
    total, pairs = len(pairs), _plan(pairs, args)
    if not pairs:
        print(f"nothing to do: all {total} outputs exist")
        return 0
    if len(pairs) == 1:  # a bad file fails before the model loads
        try:
            slim_rt.inspect(pairs[0][0].read_bytes())
        except ValueError as e:
            raise ValueError(f"{pairs[0][0]}: {e}") from None
    dec = slim_rt.Decoder.from_pretrained(_model(args), device=args.device, backend=args.backend,
                                          max_pixels=args.max_pixels)
    failed = 0
    for src, dst in _progress(pairs, len(pairs) > 1):
        try:
            img = dec.decode(src.read_bytes(), steps=args.steps)
        except (ValueError, OSError, RuntimeError) as e:
            if len(pairs) == 1:
                raise ValueError(f"{src}: {e}") from None
            print(f"slim-rt: skipped {src}: {e}", file=sys.stderr)
            failed += 1
            continue
        if not _written(dst, _save_image_atomic(dst, img, args.overwrite), args):
            continue
        if len(pairs) == 1:
            print(f"{src} -> {dst} ({img.width}x{img.height})")
    if len(pairs) > 1:
        print(f"decoded {len(pairs) - failed}/{len(pairs)} files into {args.output}")
    return 1 if failed else 0


def cmd_info(args) -> int:
    import slim_rt
    p = Path(args.input)
    if not p.is_file():
        raise CliError(f"no such file: {p}")
    try:
        info = slim_rt.inspect(p.read_bytes())
    except ValueError as e:
        raise ValueError(f"{p}: {e}") from None
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        b = info["bytes"]
        print(f"{p}: {info['width']}x{info['height']}, rate {info['rate']}, steps {info['steps']}, "
              f"{b['total']} bytes ({info['bpp']:.4f} bpp: header {b['header']}, caption {b['caption']}, "
              f"z {b['z']}, y {b['y']}), caption {info['caption']!r}, model {info['fingerprint']}")
    return 0


def cmd_demo(args) -> int:
    import numpy as np
    from PIL import Image

    import slim_rt
    from slim_rt.images import open_image
    if args.image:
        img, label = open_image(args.image), args.image
    else:
        from skimage import data
        img, label = Image.fromarray(np.asarray(data.chelsea())), "scikit-image data.chelsea() (a cat)"
    out = Path(args.out)
    model = _model(args)
    t = time.perf_counter()
    enc = slim_rt.Encoder.from_pretrained(model, rate=0, device=args.device, backend=args.backend,
                                          steps=args.steps, max_pixels=args.max_pixels, refine=_refine(args))
    args.rate = enc.model.num_rates - 1 if args.rate is None else args.rate  # demo: best quality by default
    enc.pipeline.check_rate(args.rate)
    enc.rate = args.rate
    dec = slim_rt.Decoder(enc.pipeline, max_pixels=args.max_pixels)  # one loaded model serves both directions
    load_ms = (time.perf_counter() - t) * 1e3
    t = time.perf_counter()
    data = enc.encode(img, caption=args.caption)
    enc_ms, enc_t = (time.perf_counter() - t) * 1e3, enc.timings
    t = time.perf_counter()
    rec = dec.decode(data)
    dec_ms, dec_t = (time.perf_counter() - t) * 1e3, dec.timings
    out.mkdir(parents=True, exist_ok=True)
    img.convert("RGB").save(out / "original.png")
    rec.save(out / "decoded.png")
    (out / "demo.slim").write_bytes(data)
    info = slim_rt.inspect(data)
    print(f"model    {enc.model.config.name} ({model}), rate {args.rate}/{enc.model.num_rates - 1}, "
          f"loaded in {load_ms:.0f} ms")
    print(f"image    {label}: {img.width}x{img.height}")
    print(f"caption  {info['caption']!r} ({info['bytes']['caption']} bytes, counted in the file)" if info["caption"]
          else "caption  none (steps 0: the decoder would not read one; --steps 1 sends one)")
    print(f"file     {info['bytes']['total']} bytes = {info['bpp']:.4f} bpp "
          f"(header {info['bytes']['header']}, z {info['bytes']['z']}, y {info['bytes']['y']})")
    print(f"encode   {enc_ms:.0f} ms  " + "  ".join(f"{k} {v:.1f}" for k, v in enc_t.items()))
    print(f"decode   {dec_ms:.0f} ms  " + "  ".join(f"{k} {v:.1f}" for k, v in dec_t.items())
          + f"  (steps {info['steps'] if args.steps is None else args.steps})")
    print(f"wrote    {out / 'original.png'}, {out / 'decoded.png'}, {out / 'demo.slim'}")
    return 0


def cmd_train(args) -> int:
    from slim_rt.training import PRESETS, with_overrides
    from slim_rt.training.run import run
    if args.preset not in PRESETS:
        raise CliError(f"unknown preset {args.preset!r} (presets: {', '.join(PRESETS)})")
    cfg = with_overrides(PRESETS[args.preset], args.set or [])
    if cfg.stage != args.stage:
        raise CliError(f"preset {args.preset} is for stage {cfg.stage}, not {args.stage}")
    logs = run(cfg, args.data, args.out, base=args.base, name=args.name)
    for k, v in logs.items():
        print(f"{k}: {json.dumps(v)}")
    print(f"wrote {args.out}")
    return 0


def cmd_export(args) -> int:
    from slim_rt.export.manifest import MANIFEST_NAME
    if args.trt:
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            raise CliError("--trt needs TensorRT: `import tensorrt` failed (pip install 'slim-rt[gpu]')") from None
    try:
        from slim_rt.export.onnx_export import ExportError, export_model
    except ImportError as e:
        raise CliError(f"export needs onnx and onnxruntime ({e}): pip install 'slim-rt[export]'") from None
    calibration = None
    if args.int8:
        if not args.calibration:
            raise CliError("--int8 needs --calibration DIR (training images, never an evaluation set)")
        from slim_rt.export.quantize import load_calibration_images
        calibration = load_calibration_images(args.calibration, args.calibration_images, tuple(args.size))
    try:
        export_model(_model(args), args.out, precision=args.precision, opset=args.opset, size=tuple(args.size),
                     batch=args.batch, min_size=tuple(args.min_size) if args.min_size else None,
                     max_size=tuple(args.max_size) if args.max_size else None, stages=args.stages,
                     check=not args.no_check, int8=tuple(args.int8 or ()), calibration=calibration)
    except ExportError as e:
        raise CliError(f"export failed: {e}") from None
    if args.trt:
        from slim_rt.engines import build_engines
        build_engines(args.out, timing_cache=args.timing_cache)
    print(f"exported {args.out} ({Path(args.out) / MANIFEST_NAME})")
    return 0


def cmd_bench(args) -> int:
    if args.what == "latency":
        from slim_rt.evaluation.latency import main
    else:
        from slim_rt.evaluation.serve_load import main
    return main(args.rest)


def _add_deploy_commands(sub) -> None:
    """`slim-rt export` and `slim-rt bench` (issue 4)."""
    p = sub.add_parser("export", help="export a model to ONNX (+ TensorRT engines) for deployment")
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument("--out", required=True, help="output directory (self-contained for decoding)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--size", type=int, nargs=2, default=[256, 256], metavar=("H", "W"),
                   help="optimal image size (default 256 256)")
    p.add_argument("--min-size", type=int, nargs=2, metavar=("H", "W"), help="smallest size (default: 64 64)")
    p.add_argument("--max-size", type=int, nargs=2, metavar=("H", "W"), help="largest size (default: --size)")
    p.add_argument("--batch", type=int, default=1, help="optimal and largest batch (default 1)")
    p.add_argument("--stages", nargs="+", help="export only these stage keys (default: all)")
    p.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    p.add_argument("--int8", nargs="+", choices=["vae_decoder", "vae_encoder"],
                   help="quantize these autoencoder stages to int8 for the CPU (needs --calibration)")
    p.add_argument("--calibration", help="image folder for --int8 calibration (training images)")
    p.add_argument("--calibration-images", type=int, default=32, help="images to calibrate on (default 32)")
    p.add_argument("--trt", action="store_true", help="also build TensorRT engines (needs tensorrt + a GPU)")
    p.add_argument("--timing-cache", help="TensorRT timing cache file (read and updated)")
    p.set_defaults(fn=cmd_export)
    p = sub.add_parser("bench", help="benchmarks: bench latency|serve [--help]")
    p.add_argument("what", choices=["latency", "serve"])
    p.add_argument("rest", nargs=argparse.REMAINDER, help="options of the benchmark")
    p.set_defaults(fn=cmd_bench)


def cmd_serve(args) -> int:
    from slim_rt import serve
    try:
        serve.require_pytriton()
    except ImportError as e:
        raise CliError(str(e)) from None
    cfg = serve.ServeConfig(
        model=args.model if args.model or args.backend in ("ort", "trt") else _default_model(),
        backend=args.backend, devices=tuple(d.strip() for d in args.device.split(",") if d.strip()),
        export_dir=args.export_dir, address=args.address, http_port=args.http_port, grpc_port=args.grpc_port,
        metrics_port=args.metrics_port, max_batch=args.max_batch, max_queue_delay_us=args.max_queue_delay_us,
        max_pixels=args.max_pixels, rate=args.rate, warmup=None if args.no_warmup else tuple(args.warmup),
        log_file=args.log_file, text_encoder=args.text_encoder)
    return serve.serve(cfg)


def _add_serve_command(sub) -> None:
    """`slim-rt serve` (issue 14): Triton Inference Server through PyTriton (slim_rt.serve)."""
    from slim_rt.api import DEFAULT_MAX_PIXELS
    p = sub.add_parser("serve", help="serve slim_decode/slim_encode on NVIDIA Triton Inference Server (PyTriton)")
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument("--backend", default="torch", choices=["torch", "torch.compile", "compiled", "ort", "trt"])
    p.add_argument("--export-dir", help="exported directory (slim-rt export) for --backend ort|trt")
    p.add_argument("--text-encoder", help="a context-table folder to use in place of the model's text encoder")
    p.add_argument("--device", default="cpu", help="cpu, cuda or a comma list (cuda:0,cuda:1): one instance each")
    p.add_argument("--address", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: all)")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--max-batch", type=int, default=8, help="dynamic batching: most requests per batch (default 8)")
    p.add_argument("--max-queue-delay-us", type=int, default=2000,
                   help="dynamic batching: longest wait for a fuller batch, microseconds (default 2000)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse images over this many pixels")
    p.add_argument("--rate", type=int, default=0, help="slim_encode's default rate point (default 0)")
    p.add_argument("--warmup", type=int, nargs=2, default=[256, 256], metavar=("H", "W"),
                   help="image size coded at every rate before serving (default 256 256)")
    p.add_argument("--no-warmup", action="store_true")
    p.add_argument("--log-file", help="Triton's log file (default: standard output)")
    p.set_defaults(fn=cmd_serve)


def cmd_bulk(args) -> int:
    """`slim-rt bulk compress|decompress IN OUT` (issue 14) on Ray Data: slim_rt.bulk."""
    from slim_rt import bulk
    model = args.model or (None if args.backend in ("ort", "trt") else _default_model())
    try:
        s = bulk.run(bulk.config_from_args(args, model))
    except bulk.JobStopped as e:
        return _err(str(e), 1)
    except bulk.BulkError as e:
        raise CliError(str(e)) from None
    print(s.line(args.mode))
    for line in s.errors:
        print(f"slim-rt: failed: {line}", file=sys.stderr)
    return 1 if s.failed else 0


def cmd_eval(args) -> int:
    from slim_rt.evaluation.runner import run_from_args
    return run_from_args(args)


def _common(p: argparse.ArgumentParser, enc: bool) -> None:
    from slim_rt.api import DEFAULT_MAX_PIXELS
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"refuse images over this many pixels (default {DEFAULT_MAX_PIXELS}; memory: docs/memory.md)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    p.add_argument("--backend", default="torch", choices=["torch", "torch.compile", "compiled"])
    p.add_argument("--steps", type=int, default=None,
                   help="enhancement steps K (0 = none; default: the model's / the bitstream's)")
    if enc:
        p.add_argument("--rate", type=int, default=0, help="rate point index, 0 = lowest bitrate")
        p.add_argument("--caption", default=None,
                       help="caption to send (default: automatic when --steps >= 1, none at 0; '' for none)")
        from slim_rt.refine import add_arguments
        add_arguments(p)


def _refine(args):
    from slim_rt.refine import from_args
    return from_args(args)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="slim-rt", description="SLIM image codec for machines")
    ap.add_argument("--version", action="version", version="slim-rt 0.1.0")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("compress", help="image(s) -> .slim")
    p.add_argument("input", help="an image file or a folder of images")
    p.add_argument("-o", "--output", help="output .slim file or folder")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--skip-existing", action="store_true", help="skip inputs whose output exists (folder runs)")
    _common(p, True)
    p.set_defaults(fn=cmd_compress)
    p = sub.add_parser("decompress", help=".slim -> image(s)")
    p.add_argument("input", help="a .slim file or a folder of them")
    p.add_argument("-o", "--output", help="output image file (.png .jpg .webp .bmp .tif) or folder (PNGs)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--skip-existing", action="store_true", help="skip inputs whose output exists (folder runs)")
    _common(p, False)
    p.set_defaults(fn=cmd_decompress)
    p = sub.add_parser("info", help="print a .slim header")
    p.add_argument("input")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_info)
    p = sub.add_parser("demo", help="compress and decode a photo with the default model")
    p.add_argument("image", nargs="?", help="an image (default: a cat photo bundled with scikit-image)")
    p.add_argument("--out", default="slim-demo", help="folder for the PNGs (default: ./slim-demo)")
    _common(p, True)
    p.set_defaults(rate=None)  # demo default: the model's highest rate point
    p.set_defaults(fn=cmd_demo)
    p = sub.add_parser("train", help="train a stage (resumes from OUT/checkpoint.pt)")
    p.add_argument("stage", choices=["base-vae", "base-unet", "compressor", "machine", "enhancer", "distill"])
    p.add_argument("--data", required=True, nargs="+", help="image folder(s) (+ optional labels.csv)")
    p.add_argument("--out", required=True, help="output folder (checkpoints, logs, weights)")
    p.add_argument("--preset", required=True, help="named config preset (e.g. tiny-vae, tiny-compressor)")
    p.add_argument("--base", help="diffusers base directory (base-unet, compressor); SLIM model (machine, enhancer, distill)")
    p.add_argument("--name", default="slim-custom", help="model name written to slim_config.json")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a preset option")
    p.set_defaults(fn=cmd_train)
    p = sub.add_parser("eval", help="rate vs classifier accuracy: SLIM vs JPEG/WebP/AVIF (docs/eval.md)")
    from slim_rt.evaluation.options import add_arguments as add_eval_arguments
    add_eval_arguments(p)
    p.set_defaults(fn=cmd_eval)
    _add_deploy_commands(sub)
    _add_serve_command(sub)
    p = sub.add_parser("bulk", help="code whole folders or buckets on Ray Data (local or --address cluster)")
    from slim_rt.bulk import add_arguments as add_bulk_arguments
    add_bulk_arguments(p)
    p.set_defaults(fn=cmd_bulk)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        return _err("interrupted", 130)
    except CliError as e:
        return _err(str(e))
    except (ValueError, OSError) as e:  # includes BitstreamError, ModelMismatchError, ModelLoadError
        msg = first_line(e)
        return _err(msg)
    except RuntimeError as e:
        return _err(f"runtime failure: {first_line(e)}", 1)


if __name__ == "__main__":
    sys.exit(main())
