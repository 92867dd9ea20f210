# cuda_models.sh: sourced by the GPU benchmark scripts (bench/ab_cuda.sh, bench/timeline.sh,
# bench/ncu_sweep.sh).
# cuda_model_args NAME: unless ARGS is set already, checks that bench/run_cuda.sh's models
# (MODELS, CARRY) are there and sets ARGS to bench_edit's model and device arguments for them
# (--precision $PRECISION); a missing file ends the script, named by NAME.
# cuda_models_check NAME: that check alone (for scripts that run `pbw edit`, whose LPIPS option
# is --lpips-backbone).
cuda_models_check() {
    local f
    for f in "$MODELS/g256.pt" "$MODELS/clip_vit_b32" "$CARRY/bpe_simple_vocab_16e6.txt.gz" \
        "$CARRY/alex.pth" tests/fixtures/lpips/alexnet_features_fp16.pth; do
        [ -e "$f" ] || { echo "$1: missing $f (run bench/run_cuda.sh first)" >&2; exit 1; }
    done
}
cuda_model_args() {
    [ -n "${ARGS:-}" ] && return 0
    cuda_models_check "$1"
    ARGS="--gan $MODELS/g256.pt --clip $MODELS/clip_vit_b32
          --vocab $CARRY/bpe_simple_vocab_16e6.txt.gz
          --lpips-trunk tests/fixtures/lpips/alexnet_features_fp16.pth --lpips-heads $CARRY/alex.pth
          --device cuda --precision $PRECISION"
}
