#!/bin/bash
# run_cuda.sh: issue 6's GPU benchmark, both sides, in one command on a GPU machine:
# one Adam step, one CMA-ES generation (50 candidates x 32 crops) and the whole default masked
# edit (cma+adam: 20 generations of 50 with 32 crops, then 100 Adam steps) at 256 px with
# CLIP ViT-B/32, for pbw (build/bench_edit: bf16 and fp32) and for the PyTorch loop of
# tools/reference/paint_edit_gpu.py (CLIP fp16, generator TF32; CUDA graphs, eager, and
# torch.compile / bf16 autocast when time is left), with the same random-weight models; then
# table.md: times, ratios, the official reference implementation's figures, the goals and the
# fraction of the GPU's peak each reaches (FLOP counts of issue 6).
#
#   tools/carry_bench_files.sh       (here: copies the LPIPS heads and the BPE vocabulary of
#                                     ../shared into .carry/, which must travel with the tree)
#   bench/run_cuda.sh                (there; OUT=DIR keeps everything, default build/bench_cuda)
#
# Needs: make, cc, nvcc (on PATH or /usr/local/cuda/bin), python3 with torch (CUDA) and
# transformers, numpy. Models are written on the machine (under MODELS, default
# build/bench_cuda_models; kept between runs): a random 256 px rosinality StyleGAN2 (channel
# multiplier 2), a random ViT-B/32 CLIPModel (HF layout, safetensors), the LPIPS trunk of
# tests/fixtures and the heads and vocabulary from CARRY (default .carry).
# Every result is written as soon as it exists (JSON per run, table.md rewritten after each), and
# the later variants are skipped when the time budget (BUDGET seconds, default 500) runs short, so
# a timeout still leaves results. TINY=1: a small CPU run of the same path (tests, see below).
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)
START=$(date +%s)
BUDGET=${BUDGET:-500}
OUT=${OUT:-build/bench_cuda}
CARRY=${CARRY:-.carry}
MODELS=${MODELS:-build/bench_cuda_models}
PY=${PY:-python3}
TEXT=${TEXT:-a rustic bed}
mkdir -p "$OUT" "$MODELS"
OUT=$(cd "$OUT" && pwd)
LOG=$OUT/run.log
: >"$LOG"
left() { echo $((BUDGET - ($(date +%s) - START))); }
say() { echo "[$(($(date +%s) - START)) s] $*" | tee -a "$LOG" >&2; }
case ":$PATH:" in *:/usr/local/cuda/bin:*) ;; *) PATH=$PATH:/usr/local/cuda/bin ;; esac
export PATH

if [ "${TINY:-0}" = 1 ]; then
    # CPU test at tiny sizes: 64 px narrow generator, the shapes-world CLIP and its vocabulary
    DEVICE=cpu; TDEVICE=cpu; SIZE=64; GAN_ARCH="--size 64 --style-dim 64 --n-mlp 2 --channels 32,32,32,32,16"
    CLIP=${CLIP:-models/shapes/clip}; VOCAB=${VOCAB:-$CLIP}; TEXT=${TEXT_TINY:-a yellow star}
    STEPS=${STEPS:-4}; GENS=${GENS:-2}; POP=${POP:-4}; CROPS=${CROPS:-4}
    E_GENS=${E_GENS:-2}; E_POP=${E_POP:-4}; E_STEPS=${E_STEPS:-3}; THREADS="--threads 1"
    PRECISIONS=${PRECISIONS:-fp32}
else
    DEVICE=cuda; TDEVICE=cuda; SIZE=256; GAN_ARCH="--size 256"
    CLIP=${CLIP:-$MODELS/clip_vit_b32}; VOCAB=${VOCAB:-$CARRY/bpe_simple_vocab_16e6.txt.gz}
    STEPS=${STEPS:-20}; GENS=${GENS:-9}; POP=${POP:-50}; CROPS=${CROPS:-32}
    E_GENS=${E_GENS:-20}; E_POP=${E_POP:-50}; E_STEPS=${E_STEPS:-100}; THREADS=""
    PRECISIONS=${PRECISIONS:-bf16 fp32}
fi
GAN=$MODELS/g${SIZE}.pt
TRUNK=tests/fixtures/lpips/alexnet_features_fp16.pth
HEADS=${HEADS:-$CARRY/alex.pth}
for f in "$HEADS" "$TRUNK"; do
    [ -e "$f" ] || { say "missing $f (run tools/carry_bench_files.sh and carry $CARRY)"; exit 1; }
done
[ -e "$VOCAB" ] || { say "missing vocabulary $VOCAB (run tools/carry_bench_files.sh)"; exit 1; }

{
    echo "date: $(date -u)"; echo "host: $(hostname)"; echo "git: $(git rev-parse HEAD 2>/dev/null)"
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv 2>&1 | head -3
    nvcc --version 2>&1 | tail -1
    $PY -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)' 2>&1
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //') x $(nproc)"
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt" >>"$LOG"

# 1. build (pbw and bench_edit with the Makefile's flags) while the models are written
say "building (make -j16; log build.log)"
EXTRA_MK=$OUT/bench_edit.mk
printf '%s\n' '$(BUILD)/bench_edit: bench/bench_edit.c $(BUILD)/libpbw.a' \
    '	$(CC) $(BASE) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libpbw.a $(LDLIBS)' >"$EXTRA_MK"
if [ -n "${PREBUILT:-}" ]; then  # binaries built elsewhere (a GPU machine without the -dev
    # packages): PREBUILT holds pbw, bench_edit and the shared libraries the machine lacks
    mkdir -p build && cp "$PREBUILT/pbw" "$PREBUILT/bench_edit" build/
    export LD_LIBRARY_PATH="$PWD/$PREBUILT${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    true &
elif [ "${SKIP_BUILD:-0}" = 1 ]; then  # the library as it is (tests on a shared tree)
    make --no-print-directory -o build/libpbw.a -f Makefile -f "$EXTRA_MK" build/bench_edit >"$OUT/build.log" 2>&1 &
else
    make --no-print-directory -j16 -f Makefile -f "$EXTRA_MK" build/pbw build/bench_edit >"$OUT/build.log" 2>&1 &
fi
BUILD_PID=$!

say "writing models under $MODELS (log models.log)"
(
    set -e
    [ -f "$GAN" ] || $PY tools/reference/stylegan2.py write "$GAN" $GAN_ARCH --seed 256 --threads 8
    [ -f "$CLIP/model.safetensors" ] || $PY tools/reference/paint_edit_gpu.py --write-clip "$CLIP"
) >"$OUT/models.log" 2>&1
MODELS_RC=$?
wait $BUILD_PID
BUILD_RC=$?
[ $BUILD_RC = 0 ] || { tail -40 "$OUT/build.log" | tee -a "$LOG"; say "build failed"; }
[ $MODELS_RC = 0 ] || { tail -40 "$OUT/models.log" | tee -a "$LOG"; say "writing the models failed"; exit 1; }
say "build rc $BUILD_RC; models ready"

IDS=""
if [ -x build/pbw ]; then
    IDS=$(build/pbw tokenize --vocab "$VOCAB" "$TEXT" 2>>"$LOG" | tr -d '[] ')
fi
if [ -z "$IDS" ]; then  # pbw did not build: CLIP's tokenizer in Python (transformers)
    IDS=$($PY - "$VOCAB" "$TEXT" <<'EOF' 2>>"$LOG"
import gzip, json, os, sys, tempfile
from transformers import CLIPTokenizer
v, text = sys.argv[1], sys.argv[2]
if os.path.isdir(v):
    tok = CLIPTokenizer(os.path.join(v, "vocab.json"), os.path.join(v, "merges.txt"))
else:  # OpenAI's bpe file -> vocab.json + merges.txt as CLIP builds them
    merges = gzip.open(v).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b); cs.append(256 + n); n += 1
    units = [chr(c) for c in cs]
    vocab = units + [u + "</w>" for u in units] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    d = tempfile.mkdtemp()
    json.dump({t: i for i, t in enumerate(vocab)}, open(os.path.join(d, "vocab.json"), "w"))
    open(os.path.join(d, "merges.txt"), "w").write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    tok = CLIPTokenizer(os.path.join(d, "vocab.json"), os.path.join(d, "merges.txt"))
print(",".join(str(i) for i in tok(text)["input_ids"]))
EOF
)
fi
[ -n "$IDS" ] || { say "could not tokenize '$TEXT'"; exit 1; }
say "text '$TEXT' -> ids $IDS"
echo "$IDS" >"$OUT/ids.txt"

# 2. the runs: each writes OUT/NAME.json (its last JSON line is the result) and NAME.log
table() { $PY - "$OUT" "$SIZE" >"$OUT/table.md.tmp" 2>>"$LOG" <<'EOF' && mv "$OUT/table.md.tmp" "$OUT/table.md"
import glob, json, os, sys
out, size = sys.argv[1], int(sys.argv[2])
runs = {}
for p in sorted(glob.glob(os.path.join(out, "*.json"))):
    last = None
    for line in open(p):
        line = line.strip()
        if line.startswith("{"):
            try:
                last = json.loads(line)
            except ValueError:
                pass
    if last:
        runs[os.path.basename(p)[:-5]] = last
PEAK = 989e12  # H100 and H200 SXM dense fp16/bf16 tensor-core FLOP/s (the same chip)
FLOP = {"adam": 755e9, "cma": 18.7e12, "edit": 450e12}  # issue 6's counts (256 px, ViT-B/32)
full = size == 256
def get(r, w):
    if w == "adam": return r.get("adam_step_s")
    if w == "cma": return r.get("cma_gen_s")
    if w == "edit":
        e = [t for t in (r.get("edit_s") or []) if t]
        return min(e) if e else None
    if w == "mem":
        b = r.get("edit_peak_bytes")
        return b / 2**30 if b else None
def fmt(w, v):
    if v is None: return "-"
    if w in ("adam", "cma"): return "%.2f ms" % (v * 1e3)
    if w == "edit": return "%.3f s" % v
    return "%.2f GiB" % v
def frac(w, v):
    if v is None or w == "mem" or not full: return "-"
    return "%.1f%%" % (100 * FLOP[w] / v / PEAK)
# a run whose built-in correctness check failed (its losses disagree with the plain eager
# function's: "valid": false) computes something else: no times of it are reported
def invalid(r): return r.get("valid") is False
pbw = {k: v for k, v in runs.items() if k.startswith("pbw") and not invalid(v)}
tor = {k: v for k, v in runs.items() if k.startswith("torch") and not invalid(v)}
REF = {"adam": "65-80 ms", "cma": "190-210 ms", "edit": "9.3-12.5 s", "mem": "8.7-9.0 GiB"}
GOAL = {"adam": "<= 3 ms", "cma": "<= 40 ms", "edit": "<= 1.0 s", "mem": "-"}
NAME = {"adam": "Adam step (1 image, 32 crops, fwd+bwd)", "cma": "CMA generation (50 x 32 crops, fwd)",
        "edit": "whole default edit (20x50 CMA + 100 Adam)", "mem": "peak GPU memory, default edit"}
def best(d, w):
    c = [(get(r, w), k) for k, r in d.items() if get(r, w) is not None]
    return min(c) if c else (None, None)
print("# Issue 6 benchmark: pbw vs PyTorch (%s)\n" % ("256 px, CLIP ViT-B/32" if full else "TINY test sizes, %d px" % size))
print("| workload | pbw | PyTorch | ratio pbw/PyTorch | reference impl. | goal | pbw % of peak | PyTorch % of peak |")
print("|---|---|---|---|---|---|---|---|")
for w in ("adam", "cma", "edit", "mem"):
    pv, pk = best(pbw, w)
    tv, tk = best(tor, w)
    ratio = "%.2f" % (pv / tv) if pv and tv else "-"
    print("| %s | %s%s | %s%s | %s | %s | %s | %s | %s |" % (
        NAME[w], fmt(w, pv), " (%s)" % pk[4:] if pk else "", fmt(w, tv), " (%s)" % tk[6:] if tk else "",
        ratio, REF[w], GOAL[w], frac(w, pv), frac(w, tv)))
print("\nBest of each side's variants per row (name in parentheses); whole edit: the faster of its runs."
      " % of peak: issue 6's FLOP counts (755 GFLOP an Adam step, 18.7 TFLOP a CMA generation,"
      " ~450 TFLOP the whole edit) over the time, against 989 TFLOP/s (H100 or H200 SXM dense fp16/bf16)."
      " Peak memory: pbw's allocator (pbw_cuda_mem_peak) vs torch.cuda.max_memory_allocated, weights included."
      " CMA generation: the median of the timed generations, pbw's first two left out (the first runs"
      " directly, the second records its CUDA graph; PyTorch's graphs are captured before its timed"
      " loop) and its mean beside it below (pbw: every other tell decomposes the covariance).\n")
print("## Every run\n")
print("| run | Adam step | CMA gen | CMA update | edit runs | peak mem | edit loss before -> after | setup / capture | notes |")
print("|---|---|---|---|---|---|---|---|---|")
for k, r in runs.items():
    e = ", ".join("%.3f s" % t for t in (r.get("edit_s") or [])) or "-"
    upd = r.get("cma_update_s")
    loss = "%s -> %s" % (("%.3f" % r["edit_before_loss"]) if r.get("edit_before_loss") is not None else "?",
                         ("%.3f" % r["edit_after_loss"]) if r.get("edit_after_loss") is not None else "-")
    setup = "load %.1f s" % r.get("load_s", 0) + (", capture/compile %.1f s" % r["capture_s"] if r.get("capture_s") else "")
    notes = "; ".join(r.get("notes") or []) + (" (partial)" if r.get("partial") else "")
    if r.get("check_rel") is not None:
        notes = ("check vs eager: rel %.2g" % r["check_rel"]) + (
            ", edit %.2g" % r["edit_check_rel"] if r.get("edit_check_rel") is not None else "") + (
            "; " + notes if notes else "")
    cmean = r.get("cma_gen_mean_s")
    cells = [fmt("adam", get(r, "adam")),
             fmt("cma", get(r, "cma")) + (" (mean %.2f)" % (cmean * 1e3) if cmean else ""),
             "%.2f ms" % (upd * 1e3) if upd else "-",
             e, fmt("mem", get(r, "mem"))]
    if invalid(r):
        cells = ["INVALID"] * len(cells)
    print("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % tuple([k] + cells + [loss, setup, notes or ""]))
print("\nRun details: *.log beside this file; environment: env.txt.")
EOF
}

COMMON_TORCH="--gan $GAN $GAN_ARCH --clip $CLIP --lpips-trunk $TRUNK --lpips-heads $HEADS --ids $IDS
  --device $TDEVICE --steps $STEPS --generations $GENS --population $POP --crops $CROPS
  --edit-generations $E_GENS --edit-population $E_POP --edit-steps $E_STEPS $THREADS"
COMMON_PBW="--gan $GAN --clip $CLIP --lpips-trunk $TRUNK --lpips-heads $HEADS --ids $IDS
  --device $DEVICE --steps $STEPS --generations $GENS --population $POP --crops $CROPS
  --edit-generations $E_GENS --edit-population $E_POP --edit-steps $E_STEPS"

# run NAME MIN_LEFT CAP command...: runs when at least MIN_LEFT s of the budget are left, at
# most min(CAP, left - 10) s; stdout -> NAME.json, stderr -> NAME.log; table.md after it
run() {
    local name=$1 need=$2 cap=$3
    shift 3
    local l
    l=$(left)
    if [ "$l" -lt "$need" ]; then
        say "skip $name ($l s left, wants $need)"
        return
    fi
    local t=$((l - 10))
    [ "$t" -gt "$cap" ] && t=$cap
    say "run $name (at most $t s): $*"
    timeout -k 5 "$t" "$@" >"$OUT/$name.json" 2>"$OUT/$name.log"
    local rc=$?
    say "$name rc $rc: $(tail -1 "$OUT/$name.json" | cut -c1-400)"
    [ $rc = 0 ] || tail -5 "$OUT/$name.log" | tee -a "$LOG" >&2
    table
}

# SIDES="pbw torch" (default) or one of them: which side's runs to make; TORCH_VARIANTS
# (default "graph eager graph_bf16 compile"): which PyTorch runs
want() { case " ${SIDES:-pbw torch} " in *" $1 "*) return 0 ;; esac; return 1; }
tv() { want torch && case " ${TORCH_VARIANTS:-graph eager graph_bf16 compile} " in *" $1 "*) return 0 ;; esac; return 1; }
set -f  # the option lists above are split on spaces, never globbed
PREC1=${PRECISIONS%% *}
if ! want pbw; then
    :
elif [ -x build/bench_edit ]; then
    run "pbw_$PREC1" 60 240 build/bench_edit $COMMON_PBW --precision "$PREC1" --max-edit-seconds 20
else
    say "no build/bench_edit: pbw skipped"
fi
tv graph && run torch_graph 60 180 $PY tools/reference/paint_edit_gpu.py $COMMON_TORCH --mode graph \
    --max-edit-seconds 20 --label "CUDA graphs, CLIP fp16, generator TF32"
for p in $PRECISIONS; do
    [ "$p" = "$PREC1" ] && continue
    want pbw && [ -x build/bench_edit ] && run "pbw_$p" 90 180 build/bench_edit $COMMON_PBW --precision "$p" \
        --edit-runs 1
done
tv eager && run torch_eager 60 150 $PY tools/reference/paint_edit_gpu.py $COMMON_TORCH --mode eager \
    --edit-runs 1 --label "eager, CLIP fp16, generator TF32"
if [ "$TDEVICE" = cuda ]; then
    tv graph_bf16 && run torch_graph_bf16 60 150 $PY tools/reference/paint_edit_gpu.py $COMMON_TORCH --mode graph \
        --gen-amp bf16 --edit-runs 1 --label "CUDA graphs, CLIP fp16, generator+LPIPS bf16 autocast"
    tv compile && run torch_compile 150 240 $PY tools/reference/paint_edit_gpu.py $COMMON_TORCH --mode compile \
        --edit-runs 1 --label "torch.compile (default mode) + CUDA graphs, CLIP fp16, generator TF32"
fi
set +f
table
say "done in $(($(date +%s) - START)) s; table: $OUT/table.md"
cat "$OUT/table.md"
