#!/bin/sh
# demo.sh: the quick-start job run by `make demo`.
# Until the shapes-world models ship, it shows what the core does end to end: reads the real
# LPIPS v0.1 heads (a legacy PyTorch file) without Python, then runs a small gradient-descent
# job through the tape and ops and writes the picture.
set -eu
cd "$(dirname "$0")/.."
mkdir -p build/demo
echo "== pbw version"
build/pbw version
if [ -f ../shared/data/lpips/v0.1/alex.pth ]; then
    echo "== pbw inspect ../shared/data/lpips/v0.1/alex.pth"
    build/pbw inspect ../shared/data/lpips/v0.1/alex.pth
fi
echo "== pbw smoke --size 96 --steps 200 --out build/demo/smoke.png"
build/pbw smoke --size 96 --steps 200 --out build/demo/smoke.png
echo "demo: see build/demo/smoke.png (left: target, right: recovered from its features)"
