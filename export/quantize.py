"""Int8 autoencoder stages for the CPU: ONNX Runtime static quantization of an exported fp32 stage.

    export_model(model, out, int8=("vae_decoder",), calibration=images)
    slim-rt export --out DIR --int8 vae_decoder --calibration TRAIN_IMAGE_DIR

Only the base's autoencoder stages take it: the compressor networks stay fp32 and the entropy path
integer, so no bitstream depends on it. An int8 `vae_decoder` changes only the decoded pixels; an int8
`vae_encoder` changes the latents the compressor codes (the files stay valid for every decoder).

Recipe: QDQ (what ORT's CPU EP runs with its int8 kernels, and what TensorRT's explicit quantization
reads), int8 weights per output channel, uint8 activations from MinMax calibration, every op ORT can
quantize (measured on TAEF2's decoder, 256², 2 threads: 35.6 dB from fp32 at 144 ms; Conv only
34.5 dB at 152 ms; percentile / entropy calibration 35.8 / 34.5 dB; fp32 426 ms in that busy run).
Calibration feeds the stage what it sees in the pipeline: `vae_decoder` gets, per calibration image,
every rate point's decompressed latent at that point's coded size and the clean latent (where
enhancement heads); `vae_encoder` the padded images. A held-out quarter of those inputs measures the
int8 stage against the fp32 one (SNR in dB; PSNR of the image for the decoder) and the export fails
under INT8_MIN_DB: a bad calibration set is an error, not a quiet loss of accuracy.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

INT8_STAGES = ("vae_decoder", "vae_encoder")
INT8_MIN_DB = {"vae_decoder": 30.0, "vae_encoder": 20.0}  # held-out PSNR (decoder) / SNR (encoder) vs fp32


def load_calibration_images(folder: str | Path, n: int, size: tuple[int, int]) -> list[Tensor]:
    """The first `n` images of `folder` (sorted names), resized to cover `size` (H, W) and center-cropped:
    [3,H,W] in [0,1]."""
    from slim_rt.images import IMAGE_EXTS, cover_crop, open_image, to_tensor

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"calibration folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)[:n]
    if len(files) < 4:
        raise ValueError(f"calibration needs at least 4 images, {folder} has {len(files)}")
    return [to_tensor(cover_crop(open_image(p), *size)) for p in files]


@torch.no_grad()
def calibration_inputs(model, stage: str, images: list[Tensor]) -> list[dict[str, np.ndarray]]:
    """The inputs `stage` sees in the pipeline for these images (fp32 model): one feed dict each."""
    from slim_rt.images import pad_to_multiple, to_coded

    if stage not in INT8_STAGES:
        raise ValueError(f"int8 is offered for {', '.join(INT8_STAGES)}, not {stage!r}")
    base, m = model.base, model.pixel_multiple
    feeds = []
    for img in images:
        x01 = img[None].float()
        if stage == "vae_encoder":
            feeds.append({"image": pad_to_multiple(x01 * 2 - 1, m).numpy()})
            continue
        lats: dict[float, Tensor] = {}  # one encode per coded size: rate points share scales

        def latent(scale: float) -> Tensor:
            if scale not in lats:
                lats[scale] = base.encode_latent(pad_to_multiple(to_coded(x01, scale) * 2 - 1, m)).float()
            return lats[scale]
        for r, comp in enumerate(model.compressors):
            feeds.append({"latent": comp.eval()(latent(model.config.rate_scale(r)))["x_hat"].float().numpy()})
        feeds.append({"latent": latent(1.0).numpy()})
    return feeds


def feeds_sha256(feeds: list[dict[str, np.ndarray]]) -> str:
    h = hashlib.sha256()
    for f in feeds:
        for k in sorted(f):
            a = np.ascontiguousarray(f[k], dtype=np.float32)
            h.update(k.encode() + str(a.shape).encode() + a.tobytes())
    return h.hexdigest()


def split_feeds(feeds: list[dict[str, np.ndarray]]) -> tuple[list, list]:
    """(calibration, held out): every fourth input is held out."""
    return [f for i, f in enumerate(feeds) if i % 4 != 3], [f for i, f in enumerate(feeds) if i % 4 == 3]


def quantize_stage(fp32_path: Path, out_path: Path, calib: list[dict[str, np.ndarray]]) -> None:
    """fp32 ONNX -> int8 QDQ ONNX (the recipe of the module docstring)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib)

        def get_next(self):
            return next(self.it, None)

    pre = out_path.with_name(out_path.stem + ".pre.onnx")
    root = logging.getLogger()  # the quantizer warns about the GroupNorm's reshape constants it leaves float
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quant_pre_process(str(fp32_path), str(pre))
        quantize_static(str(pre), str(out_path), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    finally:
        root.setLevel(level)
        pre.unlink(missing_ok=True)
        for stray in out_path.parent.glob("augmented_model*.onnx"):  # ORT's calibration scratch file
            stray.unlink()


def int8_quality(fp32_path: Path, int8_path: Path, held: list[dict[str, np.ndarray]], stage: str) -> dict:
    """The int8 stage against the fp32 one on held-out inputs: mean SNR (dB) and, for the decoder, the
    mean PSNR of the image ([-1,1] output, clamped as the pipeline does)."""
    from slim_rt.export.onnx_export import ort_session

    ref_s, q_s = ort_session(fp32_path), ort_session(int8_path)
    snr, psnr = [], []
    for f in held:
        ref = ref_s.run(None, f)[0].astype(np.float64)
        q = q_s.run(None, f)[0].astype(np.float64)
        mse = float(np.mean((q - ref) ** 2))
        snr.append(10 * np.log10(float(np.mean(ref ** 2)) / max(mse, 1e-20)))
        if stage == "vae_decoder":
            d = (np.clip(q, -1, 1) - np.clip(ref, -1, 1)) / 2
            psnr.append(10 * np.log10(1.0 / max(float(np.mean(d ** 2)), 1e-20)))
    out = {"held_out": len(held), "snr_db": round(float(np.mean(snr)), 2)}
    if psnr:
        out["psnr_db"] = round(float(np.mean(psnr)), 2)
    return out


def quantize_exported_stage(out: Path, stage: str, fp32_rel: Path, feeds: list[dict[str, np.ndarray]],
                            n_images: int) -> tuple[Path, dict]:
    """Quantize `out/fp32_rel` with `feeds`, check it on the held-out part, replace the fp32 file.
    Returns the int8 file (relative to out) and its manifest record; raises ValueError when the int8
    stage is under INT8_MIN_DB."""
    calib, held = split_feeds(feeds)
    rel = fp32_rel.with_name(fp32_rel.stem + ".int8.onnx")
    quantize_stage(out / fp32_rel, out / rel, calib)
    quality = int8_quality(out / fp32_rel, out / rel, held, stage)
    db = quality.get("psnr_db", quality["snr_db"])
    if db < INT8_MIN_DB[stage]:
        (out / rel).unlink()
        raise ValueError(f"int8 {stage} is {db:.1f} dB from fp32 on held-out calibration inputs "
                         f"(needs >= {INT8_MIN_DB[stage]:g}): calibrate on more or more typical images")
    (out / fp32_rel).unlink()
    record = {"format": "QDQ", "weights": "int8, per output channel", "activations": "uint8, MinMax calibration",
              "ops": "all ORT quantizes", "calibration_images": n_images, "calibration_inputs": len(calib),
              "calibration_sha256": feeds_sha256(feeds), **quality}
    return rel, record


__all__ = ["INT8_STAGES", "INT8_MIN_DB", "load_calibration_images", "calibration_inputs", "quantize_exported_stage",
           "feeds_sha256"]
