#!/bin/sh
# run_paint.sh: the painting step of `pbw edit` against the same step in PyTorch
# (tools/reference/paint_step.py), same model files, THREADS threads each (default 2):
#   - Adam step of the default edit: 256 px StyleGAN2 (masked styles), 32 crops through CLIP
#     ViT-B/32 forward + backward, L1 + LPIPS outside the mask, one Adam update;
#   - one CMA-ES generation at a reduced population POP (default 8), forward passes only.
# Models (random weights of the real architectures, written once under build/paint/):
#   build/paint/g256.pt       tools/reference/stylegan2.py write --size 256 (channel mult. 2)
#   build/bench_clip_vit_b32  CLIP ViT-B/32 (HF layout; bench/run_clip.sh writes it)
#   LPIPS: the random AlexNet of tests/fixtures/lpips and the real v0.1 heads from ../shared
# pbw's times come from its --log (per-step wall and CPU seconds); the first Adam step and the
# first CMA generation of each side are warm-ups and not counted. The sides alternate ROUNDS
# times (default 1) and each keeps its best round, so a burst of load from other users of a
# shared machine hurts less; the ratio pbw / PyTorch is printed by wall time and by CPU time
# (CPU time of all threads: closer to the work done when the machine is oversubscribed).
#
#   bench/run_paint.sh            ROUNDS=2 STEPS=3 POP=8 bench/run_paint.sh
set -eu
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-1}
STEPS=${STEPS:-3}     # Adam steps per side per round (the first is a warm-up)
POP=${POP:-8}
CROPS=${CROPS:-32}
PY=/usr/bin/python3
GAN=${GAN:-build/paint/g256.pt}
CLIP=${CLIP:-$BUILD/bench_clip_vit_b32}
TRUNK=tests/fixtures/lpips/alexnet_features_fp16.pth
HEADS=../shared/data/lpips/v0.1/alex.pth
VOCAB=../shared/data/clip/bpe_simple_vocab_16e6.txt.gz
TEXT="a rustic bed"
export OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS

[ -x "$BUILD/pbw" ] || make --no-print-directory "$BUILD/pbw"
mkdir -p build/paint
if [ ! -f "$GAN" ]; then
    echo "writing a random 256 px StyleGAN2 to $GAN" >&2
    $PY tools/reference/stylegan2.py write "$GAN" --size 256 --seed 256 --threads "$THREADS"
fi
if [ ! -f "$CLIP/model.safetensors" ]; then
    echo "writing a ViT-B/32 CLIPModel with random weights to $CLIP" >&2
    $PY bench/bench_clip_torch.py --write "$CLIP"
fi
MASK=build/paint/center_quarter.png
[ -f "$MASK" ] || $PY -c "
import numpy as np; from PIL import Image
m = np.zeros((256, 256), np.uint8); m[64:192, 64:192] = 255; Image.fromarray(m).save('$MASK')"
IDS=$("$BUILD/pbw" tokenize --vocab "$VOCAB" "$TEXT" | tr -d '[] ')

echo "== PyTorch: $($PY -c 'import torch, transformers; print(torch.__version__, "transformers", transformers.__version__)')"
echo "== CPU: $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'); threads $THREADS; load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== Adam step (256 px, $CROPS crops) and one CMA generation of $POP, $ROUNDS round(s)"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
r=1
while [ "$r" -le "$ROUNDS" ]; do
    "$BUILD/pbw" edit --gan "$GAN" --clip "$CLIP" --vocab "$VOCAB" --lpips-backbone "$TRUNK" \
        --lpips-heads "$HEADS" --seed 30 --mask "$MASK" --text "$TEXT" --crops "$CROPS" \
        --optim cma+adam --cma-generations 2 --population "$POP" --steps "$STEPS" --quiet \
        --out "$tmp/out.png" --log "$tmp/pbw_$r.csv" 2>"$tmp/pbw_$r.err" ||
        { cat "$tmp/pbw_$r.err"; exit 1; }
    # columns: step,phase,phase_step,...,seconds(13),cpu_seconds(14)
    awk -F, -v r="$r" 'NR > 1 && $3 > 1 {
        if ($2 == "adam") { a += $13; ac += $14; na++ } else { c += $13; cc += $14; nc++ } }
        END { printf "pbw\t%d\t%.2f\t%.2f\t%.2f\t%.2f\n", r, a / na, ac / na, c / nc, cc / nc }' \
        "$tmp/pbw_$r.csv" | tee -a "$tmp/pbw" |
        awk -F'\t' '{ printf "round %d  pbw     Adam step %6.2f s (cpu %6.2f s)  CMA generation %6.2f s (cpu %6.2f s)\n", $2, $3, $4, $5, $6 }'
    $PY tools/reference/paint_step.py --gan "$GAN" --clip "$CLIP" --lpips-trunk "$TRUNK" \
        --lpips-heads "$HEADS" --mask "$MASK" --ids "$IDS" --steps $((STEPS - 1)) \
        --cma-pop "$POP" --cma-gens 1 --cma-batch 2 --crops "$CROPS" --threads "$THREADS" \
        >"$tmp/torch_$r.json"
    $PY -c "
import json, sys
d = json.load(open('$tmp/torch_$r.json'))
print('torch\t$r\t%.2f\t%.2f\t%.2f\t%.2f' % (d['adam_step_s'], d['adam_step_cpu_s'], d['cma_gen_s'], d['cma_gen_cpu_s']))" |
        tee -a "$tmp/torch" |
        awk -F'\t' '{ printf "round %d  PyTorch Adam step %6.2f s (cpu %6.2f s)  CMA generation %6.2f s (cpu %6.2f s)\n", $2, $3, $4, $5, $6 }'
    r=$((r + 1))
done

echo "== best round of each side; ratio pbw / PyTorch (below 1.00: pbw is faster)"
best() { sort -t "$(printf '\t')" -k"$2" -g "$1" | head -1 | cut -f"$2"; }
for what in "Adam step:3:4" "CMA generation:5:6"; do
    name=${what%%:*}; rest=${what#*:}; w=${rest%%:*}; c=${rest#*:}
    pw=$(best "$tmp/pbw" "$w"); tw=$(best "$tmp/torch" "$w")
    pc=$(best "$tmp/pbw" "$c"); tc=$(best "$tmp/torch" "$c")
    printf '%-15s wall: pbw %7.2f s  torch %7.2f s  ratio %.2f | cpu: pbw %7.2f s  torch %7.2f s  ratio %.2f\n' \
        "$name" "$pw" "$tw" "$(echo "$pw $tw" | awk '{print $1 / $2}')" \
        "$pc" "$tc" "$(echo "$pc $tc" | awk '{print $1 / $2}')"
done
echo "== load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
