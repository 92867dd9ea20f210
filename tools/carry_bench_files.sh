#!/bin/sh
# carry_bench_files.sh: copies the two files of ../shared that bench/run_cuda.sh needs on a GPU
# machine (../shared does not travel there) into CARRY (default .carry/ at the repository root):
#   ../shared/data/lpips/v0.1/alex.pth                 LPIPS v0.1 heads
#   ../shared/data/clip/bpe_simple_vocab_16e6.txt.gz   CLIP's BPE vocabulary
# Then run bench/run_cuda.sh there with .carry among the carried paths.
set -eu
cd "$(dirname "$0")/.."
CARRY=${CARRY:-.carry}
SHARED=${SHARED:-../shared}
mkdir -p "$CARRY"
for f in data/lpips/v0.1/alex.pth data/clip/bpe_simple_vocab_16e6.txt.gz; do
    [ -f "$SHARED/$f" ] || { echo "carry_bench_files: $SHARED/$f is missing" >&2; exit 1; }
    cp "$SHARED/$f" "$CARRY/$(basename "$f")"
    chmod u+w "$CARRY/$(basename "$f")"
done
ls -l "$CARRY"
