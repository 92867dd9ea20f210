#!/bin/bash
# ab_cuda.sh: builds or switch settings of pbw timed alternating on one machine, the way
# docs/cuda.md compares changes (times move by a few percent between calls and machines, so only
# runs of one call are compared). Each round runs every variant once, in the order given; every
# run's Adam step, CMA generation and default edit (as bench_edit measures them) are printed as
# they come (the CMA generation's median and its mean, decompositions included), then each
# variant's median over the rounds.
#
#   bench/ab_cuda.sh 'base=build/bench_edit_base' 'new=build/bench_edit' \
#                    'lanes off=PBW_CUDA_LANES=0 build/bench_edit'
#
# A variant is LABEL=COMMAND: a bench_edit binary, environment assignments before it if any.
# ROUNDS (default 3), ONLY (bench_edit --only, default cma,adam), GENS (8), STEPS (60),
# PRECISION (bf16). The models are bench/run_cuda.sh's (MODELS, CARRY as there: run it once
# first); ARGS replaces the model and device arguments altogether (a CPU check with small models).
# Each run's JSON and log stay under OUT (default a new folder under /tmp), named after the round
# and the variant's position.
set -u
cd "$(dirname "$0")/.." || exit 1
ROUNDS=${ROUNDS:-3}
ONLY=${ONLY:-cma,adam}
GENS=${GENS:-8}
STEPS=${STEPS:-60}
PRECISION=${PRECISION:-bf16}
MODELS=${MODELS:-build/bench_cuda_models}
CARRY=${CARRY:-.carry}
PY=${PY:-python3}
if [ $# -lt 1 ] || [ "$1" = -h ] || [ "$1" = --help ]; then
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    [ $# -lt 1 ] && exit 2 || exit 0
fi
for v in "$@"; do
    case "$v" in
    *=*) ;;
    *) echo "ab_cuda.sh: variant '$v' is not LABEL=COMMAND" >&2; exit 2 ;;
    esac
done
. bench/cuda_models.sh
cuda_model_args ab_cuda.sh
OUT=${OUT:-$(mktemp -d /tmp/pbw_ab_XXXXXX)}
mkdir -p "$OUT" || exit 1

# One run's line from its JSON (bench_edit's last stdout line): the times it measured.
summary() {
    "$PY" - "$1" <<'EOF'
import json, sys
try:
    r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
except Exception as e:
    print("no result (%s)" % e.__class__.__name__)
    sys.exit(0)
parts = []
if r.get("adam_step_s") is not None: parts.append("step %.3f ms" % (1e3 * r["adam_step_s"]))
if r.get("cma_gen_s") is not None: parts.append("gen %.2f ms" % (1e3 * r["cma_gen_s"]))
if r.get("cma_gen_mean_s") is not None: parts.append("gen mean %.2f ms" % (1e3 * r["cma_gen_mean_s"]))
if r.get("edit_s"): parts.append("edit " + "/".join("%.3f" % t for t in r["edit_s"]) + " s")
if r.get("edit_peak_bytes") is not None and r["edit_peak_bytes"] >= 0:
    parts.append("peak %.2f GiB" % (r["edit_peak_bytes"] / 2**30))
print(", ".join(parts) or "no times")
EOF
}

echo "ab_cuda.sh: $# variants, $ROUNDS rounds, --only $ONLY --generations $GENS --steps $STEPS; runs under $OUT"
failed=0
for r in $(seq 1 "$ROUNDS"); do
    i=0
    for v in "$@"; do
        i=$((i + 1))
        label=${v%%=*}
        cmd=${v#*=}
        # shellcheck disable=SC2086 # the command and the arguments split into words on purpose
        if env $cmd $ARGS --only "$ONLY" --generations "$GENS" --steps "$STEPS" \
            >"$OUT/r$r.v$i.json" 2>"$OUT/r$r.v$i.log"; then
            printf 'round %d  %-16s %s\n' "$r" "$label:" "$(summary "$OUT/r$r.v$i.json")"
        else
            printf 'round %d  %-16s failed (log %s)\n' "$r" "$label:" "$OUT/r$r.v$i.log"
            tail -3 "$OUT/r$r.v$i.log" | sed 's/^/    /'
            failed=1
        fi
    done
done

echo "median over the rounds:"
"$PY" - "$OUT" "$ROUNDS" "$@" <<'EOF'
import json, statistics, sys
out, rounds, variants = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
for i, v in enumerate(variants, 1):
    label = v.split("=", 1)[0]
    vals = {"adam_step_s": [], "cma_gen_s": [], "cma_gen_mean_s": [], "edit_s": []}
    for r in range(1, rounds + 1):
        try:
            j = json.loads(open("%s/r%d.v%d.json" % (out, r, i)).read().strip().splitlines()[-1])
        except Exception:
            continue
        for k in ("adam_step_s", "cma_gen_s", "cma_gen_mean_s"):
            if j.get(k) is not None: vals[k].append(j[k])
        if j.get("edit_s"): vals["edit_s"].append(j["edit_s"][-1])  # the warm edit
    parts = []
    if vals["adam_step_s"]: parts.append("step %.3f ms" % (1e3 * statistics.median(vals["adam_step_s"])))
    if vals["cma_gen_s"]: parts.append("gen %.2f ms" % (1e3 * statistics.median(vals["cma_gen_s"])))
    if vals["cma_gen_mean_s"]:
        parts.append("gen mean %.2f ms" % (1e3 * statistics.median(vals["cma_gen_mean_s"])))
    if vals["edit_s"]: parts.append("edit %.3f s (last of each run)" % statistics.median(vals["edit_s"]))
    n = max(len(x) for x in vals.values())
    print("  %-16s %s  (%d of %d runs)" % (label + ":", ", ".join(parts) or "no result", n, rounds))
EOF
exit $failed
