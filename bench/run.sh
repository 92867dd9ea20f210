#!/bin/sh
# run.sh: CPU benchmark of pbw's conv2d / conv_transpose2d / matmul against PyTorch on the same
# shapes, 2 threads each. Prints the BLAS in use, PyTorch's build (oneDNN or not), the peak the
# percentages refer to, and one table row per shape and pass with the ratio ours / PyTorch
# (below 1.00 means pbw is faster).
#
#   bench/run.sh [FILTER]        (make bench runs it; FILTER keeps shapes whose name contains it)
#
# The machine may be shared: each side runs ROUNDS times (default 2), alternating, and every
# entry keeps the fastest of its per-round medians, so that a burst of load on one side in one
# round does not decide a ratio.
set -eu
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-2}
FILTER=${1:-}
PY=/usr/bin/python3
export OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS

[ -x "$BUILD/bench_ops" ] || make --no-print-directory "$BUILD/bench_ops"

echo "== BLAS"
update-alternatives --display libblas.so.3-x86_64-linux-gnu 2>/dev/null | sed -n '1,3p' || true
update-alternatives --display libopenblas.so.0-x86_64-linux-gnu 2>/dev/null | sed -n '1,3p' || true
echo "== PyTorch"
$PY - <<'EOF'
import re
import torch
import torch.nn.functional as F
cfg = torch.__config__.show()
dnn = re.search(r"MKL-DNN v[0-9.]+", cfg)
print("torch %s, built with %s (USE_MKLDNN=%s), mkldnn available: %s" % (
    torch.__version__, dnn.group(0) if dnn else "no oneDNN",
    "ON" if "USE_MKLDNN=ON" in cfg else "OFF", torch.backends.mkldnn.is_available()))
torch.set_num_threads(2)
ops = {}
for name, fn in (("conv2d", lambda x: F.conv2d(x, torch.rand(64, 64, 3, 3), padding=1)),
                 ("conv_transpose2d", lambda x: F.conv_transpose2d(x, torch.rand(64, 64, 3, 3), stride=2))):
    x = torch.rand(1, 64, 32, 32, requires_grad=True)  # big enough for PyTorch to pick oneDNN
    with torch.autograd.profiler.profile() as prof:
        fn(x).sum().backward()
    ops[name] = sorted({e.name for e in prof.function_events
                        if any(k in e.name for k in ("mkldnn", "slow_conv", "thnn", "_nnpack"))})
print("kernels PyTorch runs (profiler):", "; ".join("%s -> %s" % (k, ", ".join(v) or "?") for k, v in ops.items()))
EOF
echo "== CPU"
grep -m1 'model name' /proc/cpuinfo | sed 's/.*: /cpu: /'
echo "threads: $THREADS; load average now: $(cut -d' ' -f1-3 /proc/loadavg)"
"$BUILD/bench_ops" --peak

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$BUILD/bench_ops" --shapes > "$tmp/shapes"
r=1
while [ "$r" -le "$ROUNDS" ]; do
    echo "== round $r of $ROUNDS (pbw, then PyTorch)" >&2
    "$BUILD/bench_ops" $FILTER > "$tmp/pbw.$r"
    $PY bench/bench_ops_torch.py "$THREADS" $FILTER < "$tmp/shapes" > "$tmp/torch.$r"
    r=$((r + 1))
done

cat "$tmp"/pbw.* | awk -F'\t' '{k=$1 FS $2 FS $3; if (!(k in ms) || $4 < ms[k]) {ms[k]=$4; gf[k]=$5; pk[k]=$6}
    if (!(k in seen)) {seen[k]=1; order[n++]=k}}
    END {for (i=0;i<n;i++) {k=order[i]; print k FS ms[k] FS gf[k] FS pk[k]}}' > "$tmp/pbw"
cat "$tmp"/torch.* | awk -F'\t' '{k=$1 FS $2 FS $3; if (!(k in ms) || $4 < ms[k]) ms[k]=$4}
    END {for (k in ms) print k FS ms[k]}' > "$tmp/torch"

echo "== results (ms: median per round, best round; GFLOP/s and % of peak for pbw)"
awk -F'\t' 'NR==FNR {t[$1 FS $2 FS $3]=$4; next}
    BEGIN {printf "%-7s %-26s %-10s %10s %10s %8s %7s %7s\n", "op", "shape", "pass", "pbw ms", "torch ms", "ratio", "GFLOP/s", "%peak"}
    {k=$1 FS $2 FS $3; tm=(k in t)?t[k]:0; ratio=tm>0?sprintf("%.2f",$4/tm):"-";
     printf "%-7s %-26s %-10s %10.3f %10.3f %8s %7.1f %7.1f\n", $1, $2, $3, $4, tm, ratio, $5, $6}' \
    "$tmp/torch" "$tmp/pbw"
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
