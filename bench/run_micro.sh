#!/bin/bash
# run_micro.sh: builds and runs the standalone CUDA benchmarks (bench/*.cu, each a design
# question of the CUDA backend answered on one GPU), one after another, each with its output
# in OUT/NAME.txt (default build/micro). Each file's opening comment says what it measures.
#
#   bench/run_micro.sh                       every one
#   bench/run_micro.sh gelu_gemm eigh_gpu    these
#
# Needs nvcc (on PATH or in /usr/local/cuda/bin) and a GPU of compute capability 9.0 (ARCH=sm_90
# by default; a benchmark whose nvcc line names its own -gencode, as wgmma's sm_90a, keeps it).
# BUILD_ONLY=1 compiles and runs nothing.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-build/micro}
ARCH=${ARCH:-sm_90}
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
[ -x "$NVCC" ] || { echo "run_micro: nvcc not found (NVCC=path)" >&2; exit 1; }
mkdir -p "$OUT" || exit 1
# the libraries a benchmark links: the -l flags of the nvcc line its opening comment gives
libs() { grep -m1 'nvcc ' "$1" | grep -o -- ' -l[A-Za-z0-9_]*'; }
# its target: the -gencode of that line, or -arch=ARCH
target() {
    local g
    g=$(grep -m1 'nvcc ' "$1" | grep -o -- '-gencode [^ ]*')
    echo "${g:--arch=$ARCH}"
}
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
    for f in bench/*.cu; do names+=("$(basename "$f" .cu)"); done
fi
rc=0
for n in "${names[@]}"; do
    src=bench/$n.cu
    [ -f "$src" ] || { echo "run_micro: no $src" >&2; rc=1; continue; }
    # shellcheck disable=SC2046
    if ! "$NVCC" -O3 -std=c++17 $(target "$src") "$src" $(libs "$src") -o "$OUT/$n" 2>"$OUT/$n.build.txt"; then
        echo "run_micro: $n did not build:" >&2
        tail -5 "$OUT/$n.build.txt" >&2
        rc=1
        continue
    fi
    [ "${BUILD_ONLY:-0}" = 1 ] && { echo "$n: built"; continue; }
    echo "== $n"
    "$OUT/$n" 2>&1 | tee "$OUT/$n.txt"
    [ "${PIPESTATUS[0]}" = 0 ] || rc=1
done
exit $rc
