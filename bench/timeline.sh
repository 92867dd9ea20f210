#!/bin/bash
# timeline.sh: where a warmed default edit waits, stage by stage, from the painter's
# PBW_TIMELINE marks: bench_edit runs the whole edit RUNS times in one process (default 3) and
# the last run's marks are summarized: the set-up's stages, the CMA-ES generations (split into
# those whose tell decomposes the covariance and the others: each part's median) and the Adam
# steps (the same), with the wall time of each phase.
#
#   bench/run_cuda.sh                 (writes the models under MODELS first)
#   bench/timeline.sh                 OUT=DIR (default build/timeline) RUNS=3 PRECISION=bf16
#                                     SYNC=1 (PBW_TIMELINE=sync: each stage's GPU work lands in
#                                     it; host and device then run in turn)
#
# ARGS replaces the model and device arguments (a CPU check with small models, as
# bench/ab_cuda.sh takes them); BENCH (default build/bench_edit) the binary. Needs python3.
set -u
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-build/timeline}
RUNS=${RUNS:-3}
PRECISION=${PRECISION:-bf16}
MODELS=${MODELS:-build/bench_cuda_models}
CARRY=${CARRY:-.carry}
BENCH=${BENCH:-build/bench_edit}
PY=${PY:-python3}
if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi
. bench/cuda_models.sh
cuda_model_args timeline.sh
[ -x "$BENCH" ] || { echo "timeline.sh: $BENCH not built (make $BENCH)" >&2; exit 1; }
mkdir -p "$OUT" || exit 1
mode=1
[ "${SYNC:-0}" = 1 ] && mode=sync
# shellcheck disable=SC2086 # the arguments split into words on purpose
PBW_TIMELINE=$mode "$BENCH" $ARGS --only edit --edit-runs "$RUNS" >"$OUT/edit.json" \
    2>"$OUT/edit.log" || { tail -5 "$OUT/edit.log" >&2; exit 1; }
"$PY" - "$OUT/edit.log" <<'EOF' | tee "$OUT/timeline.md"
import re, statistics, sys

lines = open(sys.argv[1]).read().splitlines()
runs, cur = [], None
for l in lines:
    m = re.match(r"timeline: +([0-9.]+) ms +\+ *([0-9.]+) +(.*?)(?: (\d+))?$", l)
    if not m:
        continue
    t, dt, what, n = float(m.group(1)), float(m.group(2)), m.group(3), m.group(4)
    if what.startswith("set-up: text") or cur is None:
        cur = []
        runs.append(cur)
    cur.append((t, dt, what, int(n) if n else 0))
if not runs:
    sys.exit("timeline.sh: no PBW_TIMELINE marks in the log")
marks = runs[-1]
print("edit %d of %d (%d marks), %.1f ms to its last mark\n" % (len(runs), len(runs), len(marks),
                                                              marks[-1][0]))
med = lambda v: statistics.median(v) if v else float("nan")
print("| stage | ms |\n|---|---|")
for t, dt, what, n in marks:
    if what.startswith("set-up") or what.startswith("result"):
        print("| %s | %.3f |" % (what, dt))

def table(prefix, heavy_label, heavy):
    by = {}
    for t, dt, what, n in marks:
        if what.startswith(prefix):
            by.setdefault(n, []).append((what[len(prefix):], dt))
    if not by:
        return
    steps = sorted(by)
    groups = [("all", steps)]
    h = [s for s in steps if heavy(by[s])]
    if h and len(h) < len(steps):
        groups = [(heavy_label, h), ("the others", [s for s in steps if s not in h])]
    names = []
    for s in steps:
        for w, _ in by[s]:
            if w not in names:
                names.append(w)
    print("\n%s %d of them; medians in ms (the first two left out where more are left)\n"
          % (prefix.rstrip(": "), len(steps)))
    print("| part | " + " | ".join("%s (%d)" % (g, len(v)) for g, v in groups) + " |")
    print("|---|" + "---|" * len(groups))
    for w in names + ["whole"]:
        cells = []
        for _, v in groups:
            use = [s for s in v if s > 2] or v
            if w == "whole":
                vals = [sum(dt for _, dt in by[s]) for s in use]
            else:
                vals = [dt for s in use for ww, dt in by[s] if ww == w]
            cells.append("%.3f" % med(vals))
        if any(c != "nan" for c in cells):  # a part only the left-out steps have: no row
            print("| %s | %s |" % (w, " | ".join(cells)))

# a generation whose tell decomposes C takes far longer in its tell than the others: split the
# tells at their widest gap (a ratio over 4 between neighbours in sorted order), if any, among
# the cuts that leave three tells or more on each side (an odd fast or slow tell at either end
# would otherwise take the cut)
tells = sorted(dt for t, dt, w, n in marks if w == "cma: told")
cut = float("inf")
gaps = [(tells[i + 1] / tells[i], (tells[i] * tells[i + 1]) ** 0.5)
        for i in range(2, len(tells) - 3) if tells[i] > 0]
if gaps and max(gaps)[0] > 4:
    cut = max(gaps)[1]
table("cma: ", "decomposing", lambda parts: any(w == "told" and dt > cut for w, dt in parts))
table("adam: ", "recorded", lambda parts: any(w in ("pass recorded", "next recorded") for w, _ in parts))
EOF
