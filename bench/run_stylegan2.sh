#!/bin/sh
# run_stylegan2.sh: StyleGAN2 at 256 px, channel multiplier 2 (the size of the paper's LSUN
# models), pbw (bench/bench_stylegan2.c) against the PyTorch reference
# (tools/reference/stylegan2.py bench: rosinality's modules in plain PyTorch) on the same
# checkpoint (seeded random weights): one image from one w, forward alone and forward +
# backward to w (weights frozen, fixed noise), THREADS threads each (default 2). Prints each
# side's median per round and the ratio pbw / PyTorch from the fastest round of each (below
# 1.00: pbw is faster), by wall time and by CPU time, then pbw's per-op profile.
#
#   bench/run_stylegan2.sh               ROUNDS=3 REPS=3 bench/run_stylegan2.sh
#
# The machine may be shared: the sides alternate, ROUNDS times (default 2), and each keeps its
# best round, so that a burst of load during one run does not decide the ratio.
set -eu
cd "$(dirname "$0")/.."
. bench/rounds.sh
BUILD=${BUILD:-build}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-2}
REPS=${REPS:-3}
SIZE=${SIZE:-256}
CKPT=${CKPT:-$BUILD/bench/sg2_${SIZE}_cm2.pt}
PY=/usr/bin/python3
export OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS

[ -x "$BUILD/bench_stylegan2" ] || make --no-print-directory "$BUILD/bench_stylegan2"
if [ ! -f "$CKPT" ]; then
    mkdir -p "$(dirname "$CKPT")"
    echo "writing a ${SIZE} px StyleGAN2 (channel multiplier 2) with random weights to $CKPT" >&2
    $PY tools/reference/stylegan2.py write "$CKPT" --size "$SIZE" --channel-multiplier 2
fi

echo "== BLAS: $(update-alternatives --query libblas.so.3-x86_64-linux-gnu 2>/dev/null | sed -n 's/^Value: //p')"
echo "== PyTorch: $($PY -c 'import torch; print(torch.__version__, "oneDNN:", torch.backends.mkldnn.is_available())')"
echo "== CPU: $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), $(grep -m1 'cpu MHz' /proc/cpuinfo | sed 's/.*: //') MHz; threads $THREADS; load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== StyleGAN2 ${SIZE} px, channel multiplier 2, batch 1, median of $REPS runs per round"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
r=1
while [ "$r" -le "$ROUNDS" ]; do
    "$BUILD/bench_stylegan2" --gan "$CKPT" --reps "$REPS" | tee -a "$tmp/pbw" | sed "s/^/round $r  /"
    $PY tools/reference/stylegan2.py bench --ckpt "$CKPT" --size "$SIZE" --channel-multiplier 2 \
        --threads "$THREADS" --reps "$REPS" | tee -a "$tmp/torch" | sed "s/^/round $r  /"
    r=$((r + 1))
done

echo "== best of $ROUNDS rounds (ms); ratio pbw / PyTorch, by wall time and by CPU time"
best_of_rounds "$tmp" fwd fwd+dw

echo "== pbw per-op profile (fwd+dw)"
"$BUILD/bench_stylegan2" --gan "$CKPT" --reps 1 --profile 2>&1 >/dev/null
