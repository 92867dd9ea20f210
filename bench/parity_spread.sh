#!/bin/bash
# parity_spread.sh: how far apart two runs of one fixed-seed fp32 edit end after a few Adam steps
# (5 by default): the CPU against itself with OpenBLAS's kernels for another CPU type
# (OPENBLAS_CORETYPE, the same arithmetic summed in another order), and, where a GPU works, the
# GPU against the CPU and against itself. Issue 6 holds the GPU's fp32 edit to 1e-3 (max abs,
# image in [-1,1]) of the CPU's; the CPU's own spread is the floor of that comparison.
#
#   bench/parity_spread.sh     GAN=CKPT CLIP=DIR [VOCAB=PATH] (default: the shapes models)
#                              LPIPS_TRUNK=alexnet.pth LPIPS_HEADS=alex.pth (default: --no-lpips)
#                              SEED=0 TEXT="a yellow star" STEPS=5 MASK=PNG CORETYPE=Haswell
#                              DEVICES="cpu cuda" (cuda is skipped where no GPU works)
#                              OUT=DIR (default build/parity_spread) PBW=build/pbw
#
# Prints, per pair: the result image's max abs difference, the latent's, and how many latent
# components ended more than 1e-3 apart. Needs python3 (standard library only).
set -u
cd "$(dirname "$0")/.."
PBW=${PBW:-build/pbw}
OUT=${OUT:-build/parity_spread}
GAN=${GAN:-models/shapes/gan.safetensors}
CLIP=${CLIP:-models/shapes/clip}
SEED=${SEED:-0}
TEXT=${TEXT:-a yellow star}
STEPS=${STEPS:-5}
MASK=${MASK:-models/shapes/demo_mask.png}
CORETYPE=${CORETYPE:-Haswell}
DEVICES=${DEVICES:-cpu cuda}
[ -x "$PBW" ] || { echo "parity_spread: $PBW not built (make)" >&2; exit 1; }
mkdir -p "$OUT" || exit 1
args=(--gan "$GAN" --clip "$CLIP" --mask "$MASK" --seed "$SEED" --text "$TEXT" --optim adam
    --steps "$STEPS" --quiet)
[ -n "${VOCAB:-}" ] && args+=(--vocab "$VOCAB")
if [ -n "${LPIPS_TRUNK:-}" ]; then
    args+=(--lpips-backbone "$LPIPS_TRUNK")
    [ -n "${LPIPS_HEADS:-}" ] && args+=(--lpips-heads "$LPIPS_HEADS")
else
    args+=(--no-lpips)
fi

# run NAME [ENV=VALUE...] -- [pbw options]: the result image and latent as NAME.npy, NAME.lat.npy
run() {
    local name=$1 envs=()
    shift
    while [ "$1" != "--" ]; do envs+=("$1"); shift; done
    shift
    env "${envs[@]}" "$PBW" edit "${args[@]}" "$@" --out "$OUT/$name.png" \
        --save-npy "$OUT/$name.npy" --save-latent "$OUT/$name.lat.npy" 2>"$OUT/$name.log" ||
        { echo "parity_spread: $name failed:" >&2; tail -3 "$OUT/$name.log" >&2; return 1; }
}

# compare A B LABEL: float32 .npy files read with the standard library
compare() {
    python3 - "$OUT/$1" "$OUT/$2" "$3" <<'EOF'
import ast, struct, sys

def load(path):
    with open(path, "rb") as f:
        data = f.read()
    if data[:6] != b"\x93NUMPY":
        sys.exit("not an .npy file: " + path)
    hl = struct.unpack("<H", data[8:10])[0] if data[6] == 1 else struct.unpack("<I", data[8:12])[0]
    start = 10 if data[6] == 1 else 12
    head = ast.literal_eval(data[start:start + hl].decode("latin1"))
    if head["descr"] != "<f4" or head["fortran_order"]:
        sys.exit("expected little-endian float32 in C order: " + path)
    body = data[start + hl:]
    return struct.unpack("<%df" % (len(body) // 4), body), head["shape"]

a, sa = load(sys.argv[1] + ".npy")
b, sb = load(sys.argv[2] + ".npy")
la, _ = load(sys.argv[1] + ".lat.npy")
lb, _ = load(sys.argv[2] + ".lat.npy")
if sa != sb or len(la) != len(lb):
    sys.exit("shapes differ: %s %s" % (sa, sb))
half = len(a) // 2  # (2,3,H,W): the original, then the result
img = max(abs(x - y) for x, y in zip(a[half:], b[half:]))
orig = max(abs(x - y) for x, y in zip(a[:half], b[:half]))
d = [abs(x - y) for x, y in zip(la, lb)]
print("%s: result image max abs diff %.3e (the original's %.1e); latent max abs diff %.3e, "
      "%d of %d components more than 1e-3 apart" % (sys.argv[3], img, orig, max(d),
                                                     sum(v > 1e-3 for v in d), len(d)))
EOF
}

echo "parity_spread: $GAN, $CLIP, seed $SEED, \"$TEXT\", $STEPS Adam steps, fp32 (files in $OUT)"
for dev in $DEVICES; do
    case $dev in
    cpu)
        run cpu -- --device cpu || exit 1
        run cpu_"$CORETYPE" OPENBLAS_CORETYPE="$CORETYPE" -- --device cpu || exit 1
        compare cpu cpu_"$CORETYPE" "cpu vs cpu (OPENBLAS_CORETYPE=$CORETYPE)"
        ;;
    cuda)
        if ! run cuda_1 -- --device cuda --precision fp32 2>/dev/null; then
            echo "parity_spread: no GPU run here (see $OUT/cuda_1.log)"
            continue
        fi
        run cuda_2 -- --device cuda --precision fp32 || exit 1
        compare cuda_1 cuda_2 "cuda fp32 vs cuda fp32 (two processes)"
        [ -f "$OUT/cpu.npy" ] && compare cpu cuda_1 "cpu vs cuda fp32"
        ;;
    *) echo "parity_spread: unknown device $dev" >&2; exit 1 ;;
    esac
done
