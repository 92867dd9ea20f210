#!/bin/sh
# setup.sh: installs the Debian packages pbw's build and tests need.
#   tools/setup.sh          install what is missing (as root), or print the apt-get line
#   tools/setup.sh --check  exit 0 if everything is installed, 1 otherwise (prints nothing)
#   tools/setup.sh --python also install what the reference scripts under tools/ need
#                           (Debian's python3-torch with OpenBLAS; used by fixtures and bench)
set -eu
BUILD_PKGS="build-essential pkg-config libopenblas-dev libopenblas0-pthread liblapacke-dev \
libpng-dev libjpeg-dev zlib1g-dev libjson-c-dev libzip-dev clang libclang-rt-14-dev \
libpcre2-dev libutf8proc-dev libgif-dev"
PY_PKGS="python3 python3-numpy python3-torch"

pkgs="$BUILD_PKGS"
[ "${1:-}" = "--python" ] && pkgs="$pkgs $PY_PKGS"

missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done

if [ "${1:-}" = "--check" ]; then
    [ -z "$missing" ]
    exit $?
fi
# transformers, for the CLIP references (tools/reference/clip_parity.py, bench/run_clip.sh):
# Debian does not package it; 4.36.2 is a version that works with Debian's torch 1.13.
pip_transformers() {
    [ "${1:-}" = "--python" ] || return 0
    /usr/bin/python3 -c "import transformers" 2>/dev/null && return 0
    echo "setup: pip install transformers==4.36.2"
    /usr/bin/python3 -m pip install -q --break-system-packages 'transformers==4.36.2' ||
        echo "setup: could not install transformers (the CLIP reference scripts need it)"
}
if [ -z "$missing" ]; then
    echo "setup: all packages present"
    pip_transformers "${1:-}"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing packages:$missing"
    echo "setup: run as root:  apt-get update && apt-get install -y$missing"
    exit 1
fi
echo "setup: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq $missing >/dev/null
pip_transformers "${1:-}"
