#!/bin/sh
# Builds uws-broadcast (broadcast.cpp) from a tarball holding `uWebSockets/` and the `uSockets/`
# it pins (docs/benchmarks.md measured uWebSockets 66dcff3 with uSockets 86097c4), with zlib for
# permessage-deflate. Needs gcc, g++ (C++20) and zlib (Debian: zlib1g-dev).
#
# Usage: bench/peers/uws/build.sh UWEBSOCKETS.tar.gz   (output: $OUT, default
# target/uws/uws-broadcast)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
tarball=${1:?usage: build.sh UWEBSOCKETS.tar.gz}
out=${OUT:-$here/../../../target/uws/uws-broadcast}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar xzf "$tarball" -C "$work"
mkdir -p "$work/obj" "$(dirname "$out")"
(cd "$work/obj" && gcc -O3 -DLIBUS_NO_SSL -std=c11 -I"$work/uSockets/src" -c \
    "$work"/uSockets/src/*.c "$work"/uSockets/src/eventing/*.c "$work"/uSockets/src/crypto/*.c)
g++ -O3 -march=native -DLIBUS_NO_SSL -std=c++20 -I"$work/uSockets/src" -I"$work/uWebSockets/src" \
    "$here/broadcast.cpp" "$work"/obj/*.o -o "$out" -lz
echo "built $out"
