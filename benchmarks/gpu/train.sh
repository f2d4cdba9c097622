#!/usr/bin/env bash
# Joint training of slim-tiny v2's rate points on one GPU (slim_rt.training.joint), for a GPU box that can
# download nothing. Prepare on a machine with the data and PyPI (from the repo root):
#   python -m slim_rt.training.joint pack --data TRAIN_DIR:EXTRA_DIR --roi-cache ROI_DIR --out .train-job/pack.pt
#   .train-job/base/vae (the frozen autoencoder), .train-job/effnet-lite0-fp16.safetensors (the classifier),
#   .train-job/wheels/*.whl (diffusers, compressai, constriction, efficientnet-lite-pytorch and their needs)
# then on the GPU box:  OUT=/some/folder bash benchmarks/gpu/train.sh [more joint-train options]
# POINTS, LATENT_S and MACHINE_S override the rate points and the two phases' seconds.
# To continue training the bundled model (its 4 points; its weights travel with the tree):
#   POINTS=0.5:0.025,0.5:0.05,1:0.1,1:0.2 LATENT_S=0 bash benchmarks/gpu/train.sh --init slim-tiny
# The lent GPU box takes 64 MiB in all: the tree (~45 MB with slim-tiny v2) + .train-job (wheels 7.5 MB, classifier
# 9.4 MB, base 5.4 MB, pack 24 MB at WebP quality 82) is over it. A continuation that fits (~62 MB): BASE=slim_rt/
# weights/slim-tiny (its vae/ is the same TAEF2: leave .train-job/base out), and for the call move aside
# benchmarks/results/ (11 MB) and slim_rt/weights/slim-tiny/unet/ (7.2 MB; --init reads only the config and the
# compressors): tracked files absent from the working tree do not travel. Pack at --quality 70 (~19 MB).
cd "$(dirname "$0")/../.."
SLIM_JOB="$PWD/.train-job" . benchmarks/gpu/install.sh || exit 1
OUT="${OUT:-runs/joint}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
PYTHONUNBUFFERED=1 exec python3 -m slim_rt.training.joint train --pack .train-job/pack.pt --base "${BASE:-.train-job/base}" \
    --classifier .train-job/effnet-lite0-fp16.safetensors \
    --points "${POINTS:-0.5:0.012,0.5:0.025,0.5:0.05,0.5:0.09,1:0.05,1:0.1,1:0.2}" \
    --latent-seconds "${LATENT_S:-75}" --machine-seconds "${MACHINE_S:-360}" --small --out "$OUT" "$@"
