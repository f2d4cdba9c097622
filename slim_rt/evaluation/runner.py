"""Rate vs machine accuracy: SLIM against JPEG / WebP / AVIF on a labelled image folder.

    slim-rt eval --data DIR [--model M] [--steps 0 1] [--codecs slim,jpeg,webp,avif] [--limit N]
    from slim_rt.evaluation.runner import run_eval; run_eval("data/dev", model=..., classifier=Classifier(...))

Protocol (docs/eval.md, slim_rt.evaluation.protocol): each image -> resize short side to 256 (bicubic,
antialiased) -> center crop 256x256 -> 8-bit RGB: that crop is what every codec compresses. The
classifier sees the decoded image through its own preprocessing (default EfficientNet-Lite0: resize
256 = no-op, center crop 224, (x - 0.498) / 0.502). bpp = 8 * file bytes / (256 * 256), the whole file
(SLIM: header + caption; a K=0 file carries no caption, as the encoder writes it at steps 0).

Writes OUT_DIR/eval-<model>-<split>[-<tag>].csv (per image), .json (per setting + BD-rates), .md
(table) and .png (top-1 vs bpp); OUT_DIR defaults to `slim_rt.evaluation.results_dir()`.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from slim_rt.models.registry import default_model
from slim_rt.evaluation import results_dir
from slim_rt.evaluation.baselines import (ENVELOPE, QUALITIES, avif_status, classical_settings, pil_decode,
                                          pil_encode, reuse_baselines)
from slim_rt.evaluation.metrics import aggregate, bd_table, fidelity, freeze_classifier, machine_scores
from slim_rt.evaluation.options import add_arguments, ints
from slim_rt.evaluation.protocol import (CAPTION_MODES, SIZE, captions, labelled_files, load_images, quantize,
                                         to_float)
from slim_rt.evaluation.report import markdown, ref_scores_rows, write_results
from slim_rt.refine import as_config, from_args as refine_options, suffix as refine_suffix

CODECS = ("slim", "jpeg", "webp", "avif")


def _log(msg: str) -> None:
    print(f"[eval] {msg}", file=sys.stderr, flush=True)


def run_eval(data, model: str | None = None, out_dir=None, limit: int | None = None,
             steps: list[int] | None = None, device="cpu", codecs=CODECS, caption_mode: str = "auto",
             classifier=None, captioner=None, qualities: dict | None = None, baseline_scales=(1.0,),
             batch: int = 16, tag: str | None = None, bd_method: str = "pchip", write: bool = True,
             threads: int | None = None, guidance: float = 1.0, baselines_from=None, decoder_export=None,
             encoder_export=None, machine: str = "efficientnet-lite0", refine=0, rates=None,
             log=_log) -> dict | list[dict]:
    """Evaluate; returns the aggregated results dict (also written as JSON when write=True), one per
    scoring machine (a list) when `machine` names several.

    classifier: a `slim_rt.classifier.Classifier` (logits of [B,3,H,W] in [0,1], own preprocessing);
    default EfficientNet-Lite0. captioner: the SLIM encoder's automatic captioner (caption_mode auto);
    default: the default classifier's top-1 label through the model's caption template.
    baseline_scales: also run each baseline on the crop downscaled by s (bicubic) and upscaled back,
    e.g. (1.0, 0.5) -> curves jpeg and jpeg@0.5x; bpp stays per 256x256 pixel.
    threads: torch CPU threads (None: leave as is; 1 is much faster on a busy shared CPU).
    steps: the K to decode every bitstream with (a decoder override: up to MAX_DECODE_STEPS, e.g. a
    many-step teacher); guidance: classifier-free guidance of the decoder (1 = none).
    baselines_from: an earlier eval JSON on the same images whose classical settings are reused.
    decoder_export / encoder_export: decode / encode with ONNX Runtime on this exported directory (its
    stages as exported, e.g. an int8 vae_decoder or vae_encoder) instead of the torch model.
    machine: the scoring classifier by name (slim_rt.classifier.load_machine) when `classifier` is None;
    several ("lite0,lite2" or a tuple) score the same encodes and decodes, each written as its own results.
    refine: SLIM encodes refined (slim_rt.refine) for RefineConfig.machines (default EfficientNet-Lite0),
    whatever machine scores: a number of steps or a RefineConfig (0 / None: off); rates: the SLIM rate
    points to run (default all).
    BD-rates are also reported against the classical envelope (every classical point pooled)."""
    prev_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run_eval(data, model, out_dir, limit, steps, device, codecs, caption_mode, classifier, captioner,
                         qualities, baseline_scales, batch, tag, bd_method, write, guidance, baselines_from,
                         decoder_export, encoder_export, machine, as_config(refine), rates, log)
    finally:
        torch.set_num_threads(prev_threads)


def _run_eval(data, model, out_dir, limit, steps, device, codecs, caption_mode, classifier, captioner,
              qualities, baseline_scales, batch, tag, bd_method, write, guidance, baselines_from, decoder_export,
              encoder_export, machine, refine, rates, log) -> dict | list[dict]:
    t_start = time.perf_counter()
    from slim_rt.classifier import load_machine, machine_names
    machines = machine_names(machine) if isinstance(machine, str) else tuple(machine)
    machines = tuple(dict.fromkeys(machines))
    if not machines or (classifier is not None and len(machines) > 1):
        raise ValueError("machine: name one or more scoring machines, or pass one classifier")
    if baselines_from and len(machines) > 1:
        raise ValueError("--baselines-from reuses settings scored by one machine: score one machine with it")
    codecs = [c.strip().lower() for c in (codecs.split(",") if isinstance(codecs, str) else codecs) if c.strip()]
    bad = [c for c in codecs if c not in CODECS]
    if bad:
        raise ValueError(f"unknown codec(s) {bad}: choose from {', '.join(CODECS)}")
    if caption_mode not in CAPTION_MODES:
        raise ValueError(f"caption mode must be one of {CAPTION_MODES}, got {caption_mode!r}")
    qualities = {**QUALITIES, **(qualities or {})}
    skipped: dict[str, str] = {}
    if "avif" in codecs:
        ok, why = avif_status()
        if not ok:
            codecs.remove("avif")
            skipped["avif"] = why
            log(f"skipping avif: {why}")

    images = load_images(data, limit, SIZE, log)
    refs = [to_float(im.image) for im in images]
    labels = [im.label for im in images]
    N = len(images)
    log(f"{N} images from {data}")

    own_classifier = classifier is None
    if own_classifier:  # every scoring machine reads the same decoded images: one encode and decode for all
        scorers = {m: freeze_classifier(load_machine(m, device=device)) for m in machines}
    else:
        scorers = {machines[0]: classifier}
    rows: dict[str, list[dict]] = {m: [] for m in scorers}

    def add(codec, curve, setting, datas, recs, enc_ms, dec_ms, quality=None, scale=1.0, rate=None, k=None,
            caps=None, unet_ms=None):
        t = time.perf_counter()
        # what every machine's rows share: the file, its bytes, timings and fidelity (computed once)
        common = [{"file": im.file, "label": im.label, "codec": codec, "curve": curve, "setting": setting,
                   "quality": quality, "scale": scale, "rate": rate, "steps": k,
                   "caption": caps[i] if caps else None, "bytes": len(d), "bpp": 8 * len(d) / (SIZE * SIZE),
                   **f, "enc_ms": enc_ms[i], "dec_ms": dec_ms[i], "unet_ms": unet_ms[i] if unet_ms else 0.0}
                  for i, (im, d, f) in enumerate(zip(images, datas, fidelity(recs, refs)))]
        for m, clf in scorers.items():
            new = [{**c, **s} for c, s in zip(common, machine_scores(clf, recs, labels))]
            rows[m].extend(new)
            a = aggregate(new)
            by = f"  [{m.replace('efficientnet-', '')}]" if len(scorers) > 1 else ""
            log(f"{curve:>10} {setting:<8} bpp {a['bpp']:.4f}  top-1 {a['top1']:.3f}  top-5 {a['top5']:.3f}  "
                f"PSNR {a['psnr']:.2f}  MS-SSIM {a['msssim']:.3f}  (scored in {time.perf_counter() - t:.1f} s){by}")
            t = time.perf_counter()

    # reference: the uncompressed crops (the sanity check); automatic captions follow the first machine
    ref_scores = {m: machine_scores(clf, refs, labels) for m, clf in scorers.items()}
    ref_preds = [s["pred"] for s in ref_scores[machines[0]]]
    for m, rs in ref_scores.items():
        log(f"uncompressed 256-crops: top-1 {sum(s['top1'] for s in rs) / N:.4f}  "
            f"top-5 {sum(s['top5'] for s in rs) / N:.4f}" + (f"  [{m}]" if len(scorers) > 1 else ""))

    # SLIM: one encode per rate; the K variants differ only in the header's steps field
    model_name, run_rates = None, None
    if "slim" in codecs:
        import slim_rt
        from slim_rt import bitstream as bsf
        from slim_rt.captions import FixedCaptioner
        from slim_rt.pipeline import MAX_DECODE_STEPS
        model = model or default_model(lambda m: log(f"note: {m}"))
        t = time.perf_counter()
        if encoder_export:
            enc = slim_rt.Encoder.from_engines(encoder_export, "ort", device=device, captioner=FixedCaptioner(""),
                                               steps=0)
        else:
            enc = slim_rt.Encoder.from_pretrained(model, rate=0, device=device, captioner=FixedCaptioner(""), steps=0,
                                                  refine=refine)
        if decoder_export:
            dec = slim_rt.Decoder.from_engines(decoder_export, "ort")
        elif encoder_export:
            dec = slim_rt.Decoder.from_pretrained(model, device=device)
        else:
            dec = slim_rt.Decoder(enc.pipeline)
        model_name = enc.model.config.name
        ks = [enc.model.config.enhance.steps] if not steps else list(dict.fromkeys(int(k) for k in steps))
        for k in ks:
            enc.pipeline.check_steps(k, MAX_DECODE_STEPS)
        g = float(guidance)
        log(f"SLIM model {model_name} ({model}): {enc.model.num_rates} rates, steps {ks}, guidance {g:g}, "
            f"loaded in {time.perf_counter() - t:.1f} s")
        if caption_mode == "auto" and captioner is None and not own_classifier:
            from slim_rt.captions import ClassifierCaptioner
            captioner = ClassifierCaptioner(template=enc.model.config.caption_template, device=device)
        caps = captions(caption_mode, images, enc.model.config.caption_template, ref_preds, captioner, refs)
        dec.warmup((SIZE, SIZE), steps=0)
        run_rates = list(range(enc.model.num_rates)) if rates is None else [int(r) for r in rates]
        for r in run_rates:
            enc.pipeline.check_rate(r)
        for r in run_rates:
            datas, enc_ms = [], []
            for i in range(0, N, batch):
                t = time.perf_counter()
                datas += enc.encode_batch([im.image for im in images[i:i + batch]], caps[i:i + batch], rate=r)
                n = len(images[i:i + batch])
                enc_ms += [(time.perf_counter() - t) * 1e3 / n] * n
            for k in ks:  # the same streams, decoded with K steps (a decoder override)
                # K=0 never reads the caption: its files carry none, as the encoder writes them at steps 0
                kdatas, kcaps = (datas, caps) if k else ([bsf.with_caption(d, "") for d in datas], [""] * N)
                recs, dec_ms, unet_ms = [], [], []
                gk = g if k else 1.0
                for i in range(0, N, batch):
                    t = time.perf_counter()
                    out = dec.decode_batch(kdatas[i:i + batch], steps=k, guidance=gk, output="tensor")
                    dec_ms += [(time.perf_counter() - t) * 1e3 / len(out)] * len(out)
                    unet_ms += [dec.timings.get("unet", 0.0) / len(out)] * len(out)
                    recs += [quantize(x) for x in out]
                curve = f"slim-k{k}" + (f"-g{gk:g}" if gk != 1.0 else "") + refine_suffix(refine)
                add("slim", curve, f"r{r}-k{k}", kdatas, recs, enc_ms, dec_ms, rate=r, k=k, caps=kcaps,
                    unet_ms=unet_ms)
        del enc, dec

    # baselines through Pillow (or their settings reused from an earlier run on the same images)
    reused: list[dict] = []
    if baselines_from:
        reused = reuse_baselines(baselines_from, images, data, machines[0] if own_classifier else None)
        log(f"reusing {len(reused)} baseline settings from {baselines_from}")
    for codec in (c for c in codecs if c != "slim" and not baselines_from):
        for s in baseline_scales:
            s = float(s)
            small = int(round(SIZE * s))
            curve = codec if s == 1.0 else f"{codec}@{s:g}x"
            for q in qualities[codec]:
                datas, recs, enc_ms, dec_ms = [], [], [], []
                for im in images:
                    t = time.perf_counter()
                    src = im.image if s == 1.0 else im.image.resize((small, small), Image.BICUBIC, reducing_gap=None)
                    d = pil_encode(src, codec, q)
                    t1 = time.perf_counter()
                    rec = pil_decode(d)
                    if rec.size != (SIZE, SIZE):
                        rec = rec.resize((SIZE, SIZE), Image.BICUBIC)
                    t2 = time.perf_counter()
                    datas.append(d)
                    recs.append(to_float(rec))
                    enc_ms.append((t1 - t) * 1e3)
                    dec_ms.append((t2 - t1) * 1e3)
                add(codec, curve, f"q{q}", datas, recs, enc_ms, dec_ms, quality=q, scale=s)

    split = Path(data).resolve().name
    base_name = f"eval-{model_name or 'baselines'}-{split}"
    if limit is not None and limit < len(labelled_files(data)):
        base_name += f"-first{limit}"
    if "slim" in codecs:
        base_name += refine_suffix(refine)
    tag = tag if tag is not None else (None if caption_mode == "auto" else f"cap-{caption_mode}")

    def finish(machine: str) -> dict:  # aggregate, name and write one scoring machine's results
        ref = ref_scores[machine]
        reference = {"n": N, "top1": sum(s["top1"] for s in ref) / N, "top5": sum(s["top5"] for s in ref) / N,
                     "bpp": 24.0}
        settings, seen = [], {}
        for r in rows[machine]:
            seen.setdefault((r["curve"], r["setting"]), []).append(r)
        settings = [aggregate(v) for v in seen.values()] + reused
        curves: dict[str, list[dict]] = {}
        for a in settings:
            curves.setdefault(a["curve"], []).append(a)
        classical = classical_settings(curves)
        if classical:  # the best of every classical codec and scale
            curves[ENVELOPE] = classical
        bd = bd_table(curves, bd_method)
        name = base_name
        if own_classifier and machine != "efficientnet-lite0":
            name += "-" + machine.replace("efficientnet-", "")
        if tag:
            name += f"-{tag}"
        result = {
            "name": name, "data": str(data), "split": split, "n_images": N, "limit": limit,
            "model": model_name, "model_path": str(model) if model_name else None, "caption_mode": caption_mode,
            "steps": ks if "slim" in codecs else None, "guidance": guidance, "device": str(device), "size": SIZE,
            "classifier": machine if own_classifier else type(classifier).__name__,
            "refine": refine.steps if refine else 0, "refine_config": dataclasses.asdict(refine) if refine else None,
            "rates": run_rates if "slim" in codecs else None,
            "protocol": "resize short side 256 (bicubic, antialiased), center crop 256x256, 8-bit RGB -> codec; "
                        "classifier: its own preprocessing on the decoded 256x256 image",
            "reference": reference, "settings": settings, "bd_rate_method": bd_method,
            "bd_rate_pct": bd, "skipped": skipped, "qualities": {c: qualities[c] for c in codecs if c != "slim"},
            "baseline_scales": [float(s) for s in baseline_scales], "wall_s": round(time.perf_counter() - t_start, 1),
            "baselines_from": str(baselines_from) if baselines_from else None,
            "decoder_export": _export_summary(decoder_export) if decoder_export else None,
            "encoder_export": _export_summary(encoder_export) if encoder_export else None,
        }
        if write:
            paths = write_results(result, rows[machine], ref_scores_rows(images, ref), out_dir or results_dir())
            result["files"] = {k: str(v) for k, v in paths.items()}
            log("wrote " + ", ".join(str(p) for p in paths.values()))
        return result

    results = [finish(m) for m in scorers]
    log(f"done in {time.perf_counter() - t_start:.1f} s")
    return results[0] if len(results) == 1 else results


def _export_summary(root) -> dict:
    """Where the decoder came from: the export's folder, content hash and each stage's dtype."""
    from slim_rt.export.manifest import read_manifest
    m = read_manifest(root)
    return {"path": str(root), "content_hash": m.content_hash,
            "dtypes": {k: e.get("dtype", m.precision) for k, e in m.stages.items()},
            "int8": {k: e["int8"] for k, e in m.stages.items() if "int8" in e}}


def run_from_args(args) -> int:
    """`slim-rt eval` with the options of add_arguments."""
    qualities = {}
    for spec in args.quality or []:
        codec, _, qs = spec.partition("=")
        if codec not in QUALITIES or not qs:
            raise ValueError(f"--quality wants CODEC=Q,Q,... with CODEC in {', '.join(QUALITIES)}, got {spec!r}")
        qualities[codec] = ints([qs])
    res = run_eval(args.data, model=args.model, out_dir=args.out_dir or results_dir(), limit=args.limit,
                   steps=ints(args.steps), device=args.device, codecs=args.codecs, caption_mode=args.caption_mode,
                   qualities=qualities, baseline_scales=[float(s) for s in args.baseline_scales],
                   batch=args.batch, tag=args.tag, threads=getattr(args, "threads", None),
                   guidance=getattr(args, "guidance", 1.0), baselines_from=getattr(args, "baselines_from", None),
                   decoder_export=getattr(args, "decoder_export", None),
                   encoder_export=getattr(args, "encoder_export", None),
                   machine=getattr(args, "machine", "efficientnet-lite0"), refine=refine_options(args),
                   rates=getattr(args, "rates", None))
    for r in res if isinstance(res, list) else [res]:
        print(markdown(r))
    return 0


def main(argv: list[str] | None = None, prog: str = "slim-rt eval") -> int:
    """Parse `argv` (add_arguments) and run; a bad input is one line on stderr and exit code 2."""
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    add_arguments(ap)
    args = ap.parse_args(argv)
    try:
        return run_from_args(args)
    except (ValueError, OSError) as e:
        from slim_rt.errors import first_line
        print(f"{prog}: error: {first_line(e)}", file=sys.stderr)
        return 2
