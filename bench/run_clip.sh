#!/bin/sh
# run_clip.sh: CLIP ViT-B/32 image tower, pbw (bench/bench_clip.c) against PyTorch +
# transformers (bench/bench_clip_torch.py) on the same model file (seeded random weights),
# batch BATCH (default 32) at 224 px, forward alone and forward + backward to the pixels
# (weights frozen), THREADS threads each (default 2). Prints each side's median per round and
# the ratio pbw / PyTorch from the fastest round of each (below 1.00: pbw is faster), then
# pbw's per-op profile of one fwd+dx pass.
#
#   bench/run_clip.sh                 BATCH=8 ROUNDS=3 bench/run_clip.sh
#
# The machine may be shared: the sides alternate, ROUNDS times (default 2), and each keeps its
# best round, so that a burst of load during one run does not decide the ratio.
set -eu
cd "$(dirname "$0")/.."
. bench/rounds.sh
BUILD=${BUILD:-build}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-2}
BATCH=${BATCH:-32}
REPS=${REPS:-3}
MODEL=${MODEL:-$BUILD/bench_clip_vit_b32}
PY=/usr/bin/python3
export OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS

[ -x "$BUILD/bench_clip" ] || make --no-print-directory "$BUILD/bench_clip"
if [ ! -f "$MODEL/model.safetensors" ]; then
    echo "writing a ViT-B/32 CLIPModel with random weights to $MODEL" >&2
    $PY bench/bench_clip_torch.py --write "$MODEL"
fi

echo "== BLAS: $(update-alternatives --query libblas.so.3-x86_64-linux-gnu 2>/dev/null | sed -n 's/^Value: //p')"
echo "== PyTorch: $($PY -c 'import torch, transformers; print(torch.__version__, "transformers", transformers.__version__)')"
echo "== CPU: $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), $(grep -m1 'cpu MHz' /proc/cpuinfo | sed 's/.*: //') MHz; threads $THREADS; load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== ViT-B/32 image tower, batch $BATCH at 224 px, median of $REPS runs per round"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
r=1
while [ "$r" -le "$ROUNDS" ]; do
    "$BUILD/bench_clip" --model "$MODEL" --batch "$BATCH" --reps "$REPS" | tee -a "$tmp/pbw" | sed "s/^/round $r  /"
    $PY bench/bench_clip_torch.py "$MODEL" "$THREADS" "$BATCH" "$REPS" | tee -a "$tmp/torch" | sed "s/^/round $r  /"
    r=$((r + 1))
done

echo "== best of $ROUNDS rounds (ms); ratio pbw / PyTorch, by wall time and by CPU time"
best_of_rounds "$tmp" fwd fwd+dx

echo "== pbw per-op profile (fwd+dx)"
"$BUILD/bench_clip" --model "$MODEL" --batch "$BATCH" --reps 1 --profile 2>&1 >/dev/null
