#!/bin/sh
# check_stylegan2.sh: full-size parity of pbw's StyleGAN2 with the PyTorch reference
# (tools/reference/stylegan2.py) on random weights, at the sizes given (default 64 and 256).
#
#   tools/check_stylegan2.sh [SIZE...]          (needs /usr/bin/python3 with torch; make first)
#
# For each size: the reference writes a random generator (style 512, 8 mapping layers, channel
# multiplier 2, every parameter random, noise weights and biases nonzero) as a rosinality
# checkpoint, and its outputs for the same z / w / W+: images with and without truncation,
# gradients of sum(r * image) to z, w and W+, masked-style images and gradients. Then
#   - `pbw sample --save-npy` must match the reference images within 1e-4 (max abs), with and
#     without truncation (the command-line path end to end);
#   - tests/test_stylegan2.c's stylegan2_parity_dir compares everything else (images 1e-4,
#     masks 1e-6, gradients max-relative against the same model run in float64 within
#     max(1e-3, 2 x PyTorch float32's own distance from it)) and prints every number.
# Work files go to build/sg2_parity/SIZE (the 256 px checkpoint is about 120 MB); REUSE=1 keeps
# a directory the reference already wrote (it takes minutes at 256 px) and reruns only pbw.
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-/usr/bin/python3}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
[ $# -gt 0 ] || set -- 64 256
[ -x build/pbw ] && [ -x build/pbw_tests ] || make -s build/pbw build/pbw_tests
status=0
for size in "$@"; do
    dir=build/sg2_parity/$size
    mkdir -p "$dir"
    batch=2
    [ "$size" -ge 256 ] && batch=1
    if [ "${REUSE:-0}" = 1 ] && [ -f "$dir/grad_masked_mixed_f64.npy" ]; then
        echo "== $size px: reusing the reference outputs in $dir"
    else
        echo "== $size px: reference (batch $batch)"
        $PY tools/reference/stylegan2.py parity "$dir" --size "$size" --channel-multiplier 2 \
            --style-dim 512 --n-mlp 8 --seed "$size" --batch "$batch" --threads "$OMP_NUM_THREADS"
    fi
    echo "== $size px: pbw sample"
    build/pbw sample --gan "$dir/g.pt" --z "$dir/z.npy" --out "$dir/sample.png" \
        --save-npy "$dir/sample.npy"
    build/pbw sample --gan "$dir/g.pt" --z "$dir/z.npy" --truncation 0.7 \
        --out "$dir/sample_trunc.png" --save-npy "$dir/sample_trunc.npy"
    $PY - "$dir" <<'EOF' || status=1
import sys, numpy as np
d = sys.argv[1]
worst = 0.0
for ours, ref in (("sample", "img_z"), ("sample_trunc", "img_z_trunc")):
    a, b = np.load(f"{d}/{ours}.npy"), np.load(f"{d}/{ref}.npy")
    diff = float(np.abs(a.astype(np.float64) - b).max())
    worst = max(worst, diff)
    print(f"  pbw sample vs reference {ref}: max abs diff {diff:.3g} (image range {b.min():.2f}..{b.max():.2f})")
sys.exit(0 if worst <= 1e-4 else 1)
EOF
    echo "== $size px: gradients and masked styles (tests/test_stylegan2.c)"
    PBW_SG2_PARITY_DIR="$dir" build/pbw_tests stylegan2_parity_dir || status=1
done
[ $status -eq 0 ] && echo "check_stylegan2: all sizes match" || echo "check_stylegan2: MISMATCH"
exit $status
