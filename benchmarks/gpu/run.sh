#!/usr/bin/env bash
# The GPU job in one command (see benchmarks/gpu/README.md): install what travelled in .gpu-job/,
# then run every section into $OUT (default benchmarks/results/gpu-run).
cd "$(dirname "$0")/../.."
if [ -f benchmarks/gpu/install.sh ]; then . benchmarks/gpu/install.sh; fi
exec python3 benchmarks/gpu/run.py ${OUT:+--out "$OUT"} "$@"
