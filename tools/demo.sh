#!/bin/sh
# demo.sh: the quick-start job run by `make demo` (and by CI): one Paint-by-Word edit on the CPU
# with the shapes-world models that ship in models/shapes/ (no download): a seed image of the
# shapes StyleGAN2, a built-in mask around one of its shapes, and words for that region.
# Writes the result, the mask drawn on the picture beside the result, the history animation and
# the loss log under build/demo/, prints where they are, what the CLIP loss did and what the
# geometric checker (not CLIP) sees in the mask afterwards.
#
#   tools/demo.sh                          the default edit
#   SEED=7 TEXT="a green ring" MASK=m.png tools/demo.sh
#
# The optimizer is the method's (CMA-ES, then Adam with the one-cycle schedule, latent masking)
# at a reduced budget so that it ends in well under a minute on two cores; LPIPS is off because
# its trained AlexNet is not shipped (the L1 reconstruction term keeps the rest).
set -eu
cd "$(dirname "$0")/.."
PBW=build/pbw
GAN=models/shapes/gan.safetensors
CLIP=models/shapes/clip
MASK=${MASK:-models/shapes/demo_mask.png}
SEED=${SEED:-0}
TEXT=${TEXT:-a yellow star}
OUT=build/demo
mkdir -p "$OUT"
t0=$(date +%s)

"$PBW" seeds --gan "$GAN" --first "$SEED" --count 1 --out "$OUT/before.png" 2>/dev/null
echo "== pbw edit: seed $SEED, mask $MASK, \"$TEXT\""
"$PBW" edit --gan "$GAN" --clip "$CLIP" --seed "$SEED" --mask "$MASK" --text "$TEXT" \
    --no-lpips --optim cma+adam --cma-generations 8 --population 16 --steps 30 --crops 8 \
    --out "$OUT/edit.png" --history "$OUT/history.gif" --log "$OUT/log.csv" \
    2> "$OUT/edit.log" || { tail -20 "$OUT/edit.log"; exit 1; }
grep -E '^ +(before|after|outside)' "$OUT/edit.log" || true
"$PBW" shapes overlay --image "$OUT/before.png" --mask "$MASK" --after "$OUT/edit.png" \
    --out "$OUT/before_after.png"

# What the CLIP loss did, from the per-step log (column 5: clip)
awk -F, 'NR == 2 { first = $5 } NR > 1 { last = $5; if (min == "" || $5 < min) min = $5; n++ }
    END { printf "CLIP loss (100 (1 - cos), mean over crops): %.2f at the first step, %.2f at the last (lowest %.2f), %d steps\n", first, last, min, n }' "$OUT/log.csv"
before=$("$PBW" shapes check "$OUT/before.png" --mask "$MASK" | sed -n 's/.*"colour":"\([a-z]*\)","shape":"\([a-z]*\)".*/\1 \2/p')
after=$("$PBW" shapes check "$OUT/edit.png" --mask "$MASK" | sed -n 's/.*"colour":"\([a-z]*\)","shape":"\([a-z]*\)".*/\1 \2/p')
echo "the checker sees in the mask: before \"${before:-nothing}\", after \"${after:-nothing}\" (asked: \"$TEXT\")"
echo "demo: wrote $OUT/edit.png (result), $OUT/before_after.png (mask on the seed image | result),"
echo "      $OUT/history.gif (every CMA generation's best and every Adam step), $OUT/log.csv"
echo "demo: $(( $(date +%s) - t0 )) s"
