#!/bin/bash
# run_device.sh: trains both shapes-world models at once on one CUDA GPU (the CLIP and the GAN
# share it: neither fills an H100 alone), then packs what comes back into $OUT.
#
#   OUT=/tmp/out [CLIP_INIT=DIR] [CLIP_ARGS=...] [GAN_ARGS="--r1 1 --batch 256"] tools/train/run_device.sh GAN_SECONDS CLIP_SECONDS [RESUME_DIR]
#
# $OUT receives: clip.tar (the Hugging Face CLIP directory), g_ema.safetensors (the shipped
# generator), gan_g.pt and gan_d.pt (to resume), logs.tar (both logs, samples.png, the
# environment). Runs with the python3 that holds torch, transformers and safetensors.
set -u
cd "$(dirname "$0")/../.."
GAN_S=${1:-480}
CLIP_S=${2:-240}
RESUME=${3:-}
OUT=${OUT:-/tmp/pbw_train_out}
W=/tmp/pbw_train
mkdir -p "$OUT" $W/clip $W/gan
export PYTHONUNBUFFERED=1
{
  date -u
  nvidia-smi -L
  python3 -c 'import torch, transformers, safetensors; print("torch", torch.__version__, "transformers", transformers.__version__, "cuda", torch.cuda.is_available())'
  nproc
} > $W/env.txt 2>&1
cat $W/env.txt

python3 tools/train/train_clip.py --vocab models/shapes/clip --out $W/clip --seconds "$CLIP_S" ${TINY:+--tiny} ${CLIP_INIT:+--init "$CLIP_INIT"} ${CLIP_ARGS:-} \
  > $W/clip.log 2>&1 &
CLIP_PID=$!
python3 tools/train/train_gan.py --out $W/gan --seconds "$GAN_S" ${TINY:+--tiny} ${RESUME:+--resume "$RESUME"} ${GAN_ARGS:-} 2>&1 \
  | tee $W/gan.log | grep -E '"(event|it)": ' | awk 'NR % 5 == 1 || /event/'
wait $CLIP_PID
echo "== clip (exit $?)"
grep -E 'event|top1' $W/clip.log | tail -8
tail -3 $W/clip.log | grep -iE 'error|Traceback' && tail -30 $W/clip.log

cp $W/gan/g_ema.safetensors $W/gan/gan_g.pt $W/gan/gan_d.pt "$OUT"/ 2>/dev/null
(cd $W/clip && tar cf "$OUT"/clip.tar config.json model.safetensors vocab.json merges.txt \
  tokenizer_config.json clip_log.jsonl 2>/dev/null)
cp $W/gan/samples.png $W/gan/gan_log.jsonl $W/ 2>/dev/null
(cd $W && tar cf "$OUT"/logs.tar env.txt clip.log gan.log samples.png gan_log.jsonl 2>/dev/null)
ls -la "$OUT"
