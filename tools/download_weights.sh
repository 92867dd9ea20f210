#!/bin/sh
# download_weights.sh: fetches the real pretrained weights pbw loads, for machines with a network.
#   tools/download_weights.sh [DEST]      (default DEST: models/)
# CLIP ViT-B/32 in Hugging Face layout and torchvision's AlexNet (LPIPS backbone) are fetched
# directly. StyleGAN2 scene generators are rosinality-format .pt files: see the note printed at
# the end. pbw reads these files directly; nothing in them is executed.
set -eu
DEST=${1:-models}
HF=https://huggingface.co/openai/clip-vit-base-patch32/resolve/main
mkdir -p "$DEST/clip-vit-base-patch32" "$DEST/lpips"
fetch() { # url file: download to a temporary name, then rename (nothing half-written)
    if [ -s "$2" ]; then echo "have $2"; return; fi
    echo "fetching $1"
    curl -fL --retry 3 -o "$2.part" "$1" && mv "$2.part" "$2"
}
for f in config.json model.safetensors vocab.json merges.txt; do
    fetch "$HF/$f" "$DEST/clip-vit-base-patch32/$f"
done
fetch https://download.pytorch.org/models/alexnet-owt-7be5be79.pth "$DEST/lpips/alexnet-owt-7be5be79.pth"
cat <<'MSG'
StyleGAN2: pbw reads rosinality-format checkpoints (a dict with g_ema and latent_avg), the
format of the Paint by Word reference. Official NVIDIA networks (e.g. stylegan2-church-config-f)
are converted to it with rosinality's stylegan2-pytorch convert_weight.py; place the .pt under
models/ and pass it with --gan.
MSG
