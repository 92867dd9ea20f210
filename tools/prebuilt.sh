#!/bin/sh
# prebuilt.sh: packs pbw's binaries for a GPU machine that has the CUDA libraries but not the
# build's -dev packages (bench/run_cuda.sh's PREBUILT=dir). Copies build/pbw, build/bench_edit
# and build/pbw_tests (those that exist; build them first: make all build/bench_edit
# build/pbw_tests) and every shared library they load from outside the C runtime and CUDA
# (OpenBLAS, LAPACKE, libpng, libjpeg, json-c, libzip, PCRE2, utf8proc, giflib, zlib and their
# own needs) into DIR, then writes DIR.tar.xz beside it unless NO_TAR=1.
#
#   tools/prebuilt.sh [DIR]              (default build/prebuilt)
#
# There, from the repository's root:
#   tar -xJf DIR.tar.xz && PREBUILT=DIR bench/run_cuda.sh
#   LD_LIBRARY_PATH=DIR DIR/pbw_tests cuda_          (the GPU tests; make test-cuda's filter)
# The CUDA runtime, cuBLAS(Lt), cuDNN and cuSOLVER are left to the machine: the binaries look
# for them on their rpath (the CUDA toolkit's lib64) and the loader's usual paths.
set -eu
cd "$(dirname "$0")/.."
DIR=${1:-build/prebuilt}
case "$DIR" in "" | / | .) echo "prebuilt.sh: refusing DIR '$DIR'" >&2; exit 2 ;; esac
bins=""
for b in pbw bench_edit pbw_tests; do
    [ -x "build/$b" ] && bins="$bins build/$b"
done
[ -n "$bins" ] || { echo "prebuilt.sh: nothing built under build/ (make all first)" >&2; exit 1; }
command -v ldd >/dev/null || { echo "prebuilt.sh: needs ldd" >&2; exit 1; }
tmp="$DIR.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
# shellcheck disable=SC2086  # bins is a list of paths without spaces
cp $bins "$tmp/"
missing=$(for b in $bins; do ldd "$b"; done | awk '/not found/ {print $1}' | sort -u)
[ -z "$missing" ] || { echo "prebuilt.sh: libraries not found here: $missing" >&2; exit 1; }
for b in $bins; do ldd "$b"; done | awk '/=> \// {print $3}' | sort -u |
    grep -v -E '/(libc|libm|libpthread|libdl|librt|ld-linux[^/]*|libgcc_s|libstdc\+\+)\.so|/libcu[a-zA-Z]*\.so|/libcudnn[a-z_]*\.so|/libnv[a-zA-Z]*\.so' |
    while read -r lib; do cp -L "$lib" "$tmp/"; done
rm -rf "$DIR"
mv "$tmp" "$DIR"
trap - EXIT
if [ "${NO_TAR:-0}" != 1 ]; then
    tar -cJf "$DIR.tar.xz.tmp" -C "$(dirname "$DIR")" "$(basename "$DIR")"
    mv "$DIR.tar.xz.tmp" "$DIR.tar.xz"
fi
echo "prebuilt.sh: $(ls "$DIR" | wc -l) files in $DIR ($(du -sh "$DIR" | cut -f1))"
[ "${NO_TAR:-0}" = 1 ] || echo "prebuilt.sh: $DIR.tar.xz ($(du -sh "$DIR.tar.xz" | cut -f1))"
