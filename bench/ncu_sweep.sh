#!/bin/bash
# ncu_sweep.sh: what bounds each kernel of one CMA-ES generation and of one Adam step of a
# default-sized edit. Nsight Compute collects its Speed of Light and occupancy sections for every
# kernel launched in that generation or step alone (the painter's PBW_CUDA_PROFILE_RANGE starts
# and stops the collection), and the launches are summed by kernel: count, time, and the
# time-weighted throughput of L1/TEX (shared memory included), L2, DRAM and the SMs, with the unit
# nearest its peak. ncu runs each kernel alone at locked clocks, so its times rank the kernels but
# are not the edit's (bench/profile_cuda.sh and bench/timeline.sh give those). A kernel far above
# DRAM in L1/TEX is worth a look at its shared-memory and cache accesses: the NHWC blur was such a
# kernel (L1/TEX 96%, DRAM 15%) until its per-channel factors stopped meeting four lanes to a
# bank (docs/cuda.md).
#
#   bench/run_cuda.sh                 (writes the models under MODELS first)
#   bench/ncu_sweep.sh                OUT=DIR (default build/ncu_sweep) PRECISION=bf16 GEN=2
#                                     STEP=3 PHASES="cma adam" NCU=path SECTIONS="..."
#                                     LAUNCHES=N (profile the phase's first N launches only:
#                                     a generation repeats its batches, so a part of it names
#                                     every kernel in a fraction of the minutes)
#                                     NCU_FLAGS="..." (more of ncu's options, e.g. a
#                                     --kernel-name regex:... that leaves out the libraries')
#
# One table per phase in OUT/PHASE.md (ncu's own report in OUT/PHASE.txt). Needs ncu (on PATH or
# in CUDA's bin), python3 with Pillow for the mask, and a GPU whose performance counters the user
# may read. CUDA graphs and programmatic dependent launch are off (each kernel is launched as the
# op that owns it), as in bench/profile_cuda.sh.
set -u
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-build/ncu_sweep}
MODELS=${MODELS:-build/bench_cuda_models}
CARRY=${CARRY:-.carry}
PBW=${PBW:-build/pbw}
PRECISION=${PRECISION:-bf16}
GEN=${GEN:-2}
STEP=${STEP:-3}
PHASES=${PHASES:-cma adam}
SECTIONS=${SECTIONS:-SpeedOfLight Occupancy}
PY=${PY:-python3}
if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi
if [ -z "${NCU:-}" ]; then
    NCU=$(command -v ncu)
    [ -z "$NCU" ] && [ -x /usr/local/cuda/bin/ncu ] && NCU=/usr/local/cuda/bin/ncu
fi
if [ -z "$NCU" ] || [ ! -x "$NCU" ]; then
    echo "ncu_sweep.sh: ncu not found (NCU=path)" >&2
    exit 1
fi
[ -x "$PBW" ] || { echo "ncu_sweep.sh: $PBW not built (make $PBW)" >&2; exit 1; }
[ "$STEP" -ge 2 ] 2>/dev/null || { echo "ncu_sweep.sh: STEP must be 2 or more" >&2; exit 1; }
. bench/cuda_models.sh
cuda_models_check ncu_sweep.sh
mkdir -p "$OUT" || exit 1
"$PY" -c 'from PIL import Image, ImageDraw
m = Image.new("L", (256, 256), 0); ImageDraw.Draw(m).rectangle([80, 80, 175, 175], fill=255)
m.save("'"$OUT"'/mask.png")' || exit 1
common=(--gan "$MODELS/g256.pt" --clip "$MODELS/clip_vit_b32"
    --vocab "$CARRY/bpe_simple_vocab_16e6.txt.gz"
    --lpips-backbone tests/fixtures/lpips/alexnet_features_fp16.pth --lpips-heads "$CARRY/alex.pth"
    --seed 30 --mask "$OUT/mask.png" --text "a rustic bed" --device cuda --quiet
    --precision "$PRECISION")
sections=()
for s in $SECTIONS; do sections+=(--section "$s"); done
[ -n "${LAUNCHES:-}" ] && sections+=(--launch-count "$LAUNCHES")
if [ -n "${NCU_FLAGS:-}" ]; then  # split into words, no file-name expansion of a regex
    read -r -a extra <<<"$NCU_FLAGS"
    sections+=("${extra[@]}")
fi
export PBW_CUDA_GRAPHS=0 PBW_CUDA_PDL=0
rc=0
for phase in $PHASES; do
    case "$phase" in
    cma) range=cma:$GEN; run=(--optim cma --cma-generations "$GEN") ;;
    adam) range=adam:$STEP; run=(--optim adam --steps "$STEP") ;;
    *) echo "ncu_sweep.sh: phase '$phase' is not cma or adam" >&2; exit 2 ;;
    esac
    echo "ncu_sweep.sh: $phase ($range), every kernel it launches under ncu (minutes)" >&2
    PBW_CUDA_PROFILE_RANGE=$range "$NCU" --profile-from-start off "${sections[@]}" \
        "$PBW" edit "${common[@]}" "${run[@]}" --out "$OUT/$phase.png" >"$OUT/$phase.txt" 2>&1 ||
        { echo "ncu_sweep.sh: $phase: ncu failed (the end of $OUT/$phase.txt):" >&2
          tail -5 "$OUT/$phase.txt" >&2; rc=1; continue; }
    "$PY" bench/ncu_table.py "$OUT/$phase.txt" "$phase $range, $PRECISION" | tee "$OUT/$phase.md" ||
        rc=1
done
exit $rc
