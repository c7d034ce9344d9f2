#!/bin/sh
# Builds the uWebSockets peers from a tarball (or a directory) holding `uWebSockets/` and the
# `uSockets/` it pins (docs/benchmarks.md measured uWebSockets 66dcff3 with uSockets 86097c4),
# without TLS. Needs gcc and g++ (C++20); only uws-broadcast needs zlib (Debian: zlib1g-dev).
#
# Usage: bench/peers/uws/build.sh SOURCES [PEER...]
#   SOURCES: UWEBSOCKETS.tar.gz, or a directory where it is unpacked.
#   PEER (default: all three):
#     echo             uws-echo (echo.cpp): the echo server of `ringside-bench compare`
#     broadcast-plain  uws-broadcast-plain (broadcast.cpp without zlib): pub/sub without
#                      compression, for `ringside-bench fanout`
#     broadcast        uws-broadcast (broadcast.cpp with zlib): pub/sub with SHARED_COMPRESSOR,
#                      for `ringside-bench compression`
#   Output directory: $OUT, default target/uws.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
src=${1:?usage: build.sh UWEBSOCKETS.tar.gz|DIR [echo|broadcast-plain|broadcast]...}
shift
peers=${*:-echo broadcast-plain broadcast}
out=${OUT:-$here/../../../target/uws}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -d "$src" ]; then
    cp -R "$src/uWebSockets" "$src/uSockets" "$work/" 2>/dev/null || true
else
    tar xzf "$src" -C "$work"
fi
for f in uWebSockets/src/App.h uSockets/src/libusockets.h; do
    if [ ! -f "$work/$f" ]; then
        echo "build.sh: $src holds no $f (it needs uWebSockets/ and uSockets/ at its top)" >&2
        exit 1
    fi
done
mkdir -p "$work/obj" "$out"
(cd "$work/obj" && gcc -O3 -DLIBUS_NO_SSL -std=c11 -I"$work/uSockets/src" -c \
    "$work"/uSockets/src/*.c "$work"/uSockets/src/eventing/*.c "$work"/uSockets/src/crypto/*.c)
# $1: source file, $2: output name, rest: extra flags.
cxx() {
    file=$1
    name=$2
    shift 2
    # Build under a temporary name and rename: a reader never sees a half-written binary.
    g++ -O3 -march=native -DLIBUS_NO_SSL -std=c++20 -I"$work/uSockets/src" \
        -I"$work/uWebSockets/src" "$here/$file" "$work"/obj/*.o -o "$out/.$name.tmp" "$@"
    mv "$out/.$name.tmp" "$out/$name"
    echo "built $out/$name"
}
for peer in $peers; do
    case $peer in
    echo) cxx echo.cpp uws-echo -DUWS_NO_ZLIB ;;
    broadcast-plain) cxx broadcast.cpp uws-broadcast-plain -DUWS_NO_ZLIB ;;
    broadcast) cxx broadcast.cpp uws-broadcast -lz ;;
    *)
        echo "build.sh: unknown peer $peer (echo, broadcast-plain, broadcast)" >&2
        exit 2
        ;;
    esac
done
