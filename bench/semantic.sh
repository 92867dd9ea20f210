#!/bin/sh
# semantic.sh: the semantic benchmark (`make bench-semantic`): a fixed set of edits on the
# shapes-world models, judged by the geometric checker (pbw shapes score), not by CLIP.
#
#   bench/semantic.sh                 N=120 edits, latent masking then output masking
#   N=20 MODES=latent bench/semantic.sh
#   EDIT_ARGS="--optim adam --steps 40" OUT=build/bench_semantic_adam bench/semantic.sh
#   EDIT_ARGS="--no-lpips --device cuda" bench/semantic.sh   the method's default budget on a
#                                     GPU (about 2 s an edit on an H100/H200)
#
# The plan (pbw shapes plan): seeds of the shapes GAN whose picture is clean; for each, a square
# mask around its largest shape and a prompt that asks for another colour of that shape
# ("colour" edits) or another shape in its colour ("shape" edits), alternating. Every edit is
# one `pbw edit` run with EDIT_ARGS (below: the method's defaults, cut to fit a CPU: fewer CMA
# generations, a smaller population, fewer Adam steps and crops; LPIPS off, since its trained
# AlexNet is not on this machine; L1 keeps the rest). Results already present are kept, so an
# interrupted run continues where it stopped. The table goes to stdout and OUT/table.md.
set -eu
cd "$(dirname "$0")/.."
PBW=${PBW:-build/pbw}
GAN=${GAN:-models/shapes/gan.safetensors}
CLIP=${CLIP:-models/shapes/clip}
OUT=${OUT:-build/bench_semantic}
N=${N:-120}
MODES=${MODES:-latent output}
EDIT_ARGS=${EDIT_ARGS:---no-lpips --optim cma+adam --cma-generations 8 --population 16 --steps 30 --crops 8}
MARGIN=${MARGIN:-8}

mkdir -p "$OUT"
if [ ! -f "$OUT/plan/plan.tsv" ] || [ "$(wc -l < "$OUT/plan/plan.tsv")" -ne "$N" ]; then
    "$PBW" shapes plan --gan "$GAN" --count "$N" --out "$OUT/plan"
fi
tab=$(printf '\t')
for mode in $MODES; do
    dir="$OUT/$mode"
    mkdir -p "$dir"
    start=$(date +%s)
    done_before=0
    ran=0
    while IFS="$tab" read -r id seed cat mask prompt; do
        res=$(printf '%s/edit_%03d.png' "$dir" "$id")
        if [ -f "$res" ]; then
            done_before=$((done_before + 1))
            continue
        fi
        # shellcheck disable=SC2086
        if ! "$PBW" edit --gan "$GAN" --clip "$CLIP" --seed "$seed" --mask "$OUT/plan/$mask" \
                --text "$prompt" --mask-mode "$mode" --out "$res" --quiet $EDIT_ARGS \
                > "$dir/edit_$id.log" 2>&1; then
            echo "semantic: edit $id failed (see $dir/edit_$id.log)" >&2
            exit 1
        fi
        ran=$((ran + 1))
        printf 'semantic: %s %s/%s  seed %s  %s: %s\n' "$mode" "$((id + 1))" "$N" "$seed" "$cat" "$prompt" >&2
    done < "$OUT/plan/plan.tsv"
    secs=$(( $(date +%s) - start ))
    if [ "$ran" -gt 0 ]; then
        echo "$mode: $ran edits in $secs s ($((secs / ran)) s each), $done_before already done" > "$dir/time.txt"
    fi
done
{
    echo "| mask mode | category | edits | success | colour and shape right | outside change (footprint +${MARGIN} px) | outside change (all outside) |"
    echo "|---|---|---|---|---|---|---|"
    for mode in $MODES; do
        "$PBW" shapes score --plan "$OUT/plan" --results "$OUT/$mode" --label "$mode" \
            --margin "$MARGIN" --json "$OUT/$mode/scores.jsonl"
    done
    echo
    echo "pbw edit options: $EDIT_ARGS"
    for mode in $MODES; do [ -f "$OUT/$mode/time.txt" ] && cat "$OUT/$mode/time.txt"; done
} | tee "$OUT/table.md"
