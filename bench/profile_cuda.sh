#!/bin/bash
# profile_cuda.sh: where the time of a GPU edit goes, per op and per kernel, with
# PBW_PROFILE=gpu (CUPTI's activity records; nothing is synchronized at op boundaries): a few
# CMA-ES generations (50 x 32 crops) and Adam steps of the default edit on bench/run_cuda.sh's
# models (256 px StyleGAN2, ViT-B/32, LPIPS), one table per phase and precision under OUT.
#
#   bench/run_cuda.sh                 (writes the models under MODELS first)
#   bench/profile_cuda.sh             OUT=DIR (default build/profile_cuda) PRECISIONS="bf16 fp32"
#                                     GRAPHS=1 (replay CUDA graphs as the edit does: their
#                                     kernels then show as "(outside ops)"), PDL=1 (launch as
#                                     the edit does; kernels' times then include their wait)
#                                     Each run's timeline also goes to OUT/{cma,adam}_P.spans.tsv
#                                     (PBW_PROFILE_SPANS; read it with bench/spans.py)
#
# Needs libcupti on the library path (CUDA's extras/CUPTI/lib64 or the toolkit's lib64; the
# script adds those it finds) and python3 with Pillow for the mask.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-build/profile_cuda}
MODELS=${MODELS:-build/bench_cuda_models}
CARRY=${CARRY:-.carry}
PBW=${PBW:-build/pbw}
GENS=${GENS:-4}
STEPS=${STEPS:-12}
mkdir -p "$OUT"
for d in /usr/local/cuda/extras/CUPTI/lib64 /usr/local/cuda/lib64 \
    $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, "cu13", "lib") for p in nvidia.__path__))' 2>/dev/null); do
    [ -e "$d/libcupti.so" ] || ls "$d"/libcupti.so.* >/dev/null 2>&1 || continue
    export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d"
done
[ -n "${PREBUILT:-}" ] && export LD_LIBRARY_PATH="$PWD/$PREBUILT${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
python3 -c 'from PIL import Image, ImageDraw
m = Image.new("L", (256, 256), 0); ImageDraw.Draw(m).rectangle([80, 80, 175, 175], fill=255)
m.save("'"$OUT"'/mask.png")' || exit 1
common=(--gan "$MODELS/g256.pt" --clip "$MODELS/clip_vit_b32" --vocab "$CARRY/bpe_simple_vocab_16e6.txt.gz"
    --lpips-backbone tests/fixtures/lpips/alexnet_features_fp16.pth --lpips-heads "$CARRY/alex.pth"
    --seed 30 --mask "$OUT/mask.png" --text "a rustic bed" --device cuda --quiet)
# CUDA graphs off by default (GRAPHS=1 keeps them): a replayed graph's kernels belong to no op
export PBW_CUDA_GRAPHS=${GRAPHS:-0}
# programmatic dependent launch off by default (PDL=1 keeps it): a kernel launched early waits
# for the one before inside its own span, which CUPTI would book to it
export PBW_CUDA_PDL=${PDL:-0}
for p in ${PRECISIONS:-bf16 fp32}; do
    rm -f "$OUT/cma_$p.spans.tsv" "$OUT/adam_$p.spans.tsv"
    PBW_PROFILE=gpu PBW_PROFILE_SPANS="$OUT/cma_$p.spans.tsv" \
        "$PBW" edit "${common[@]}" --precision "$p" --optim cma --cma-generations "$GENS" \
        --out "$OUT/cma_$p.png" 2>"$OUT/cma_$p.txt"
    echo "cma $p rc $?"
    PBW_PROFILE=gpu PBW_PROFILE_SPANS="$OUT/adam_$p.spans.tsv" \
        "$PBW" edit "${common[@]}" --precision "$p" --optim adam --steps "$STEPS" \
        --out "$OUT/adam_$p.png" 2>"$OUT/adam_$p.txt"
    echo "adam $p rc $?"
done
for f in "$OUT"/cma_*.txt "$OUT"/adam_*.txt; do
    echo "== $f"; sed -n '/GPU time per op/,/^kernels by/p' "$f" | head -28
done
