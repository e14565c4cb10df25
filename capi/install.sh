#!/usr/bin/env bash
# Builds the C libraries and installs them under PREFIX (default /usr/local):
#   PREFIX/lib/librmsprop_simd.so.ABI (+ .so link), librmsprop_simd.a,
#   PREFIX/include/rmsprop_simd.h, PREFIX/lib/pkgconfig/rmsprop_simd.pc
# Usage: capi/install.sh [PREFIX]      (DESTDIR is honoured, for packaging)
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${1:-/usr/local}
dest=${DESTDIR:-}
cargo build -p rmsprop-simd-capi --profile capi
version=$(cargo pkgid -p rmsprop-simd-capi | sed 's/.*[#@]//')
soname=$(readelf -d target/capi/librmsprop_simd.so | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')
install -d "$dest$prefix/lib/pkgconfig" "$dest$prefix/include"
install -m 755 target/capi/librmsprop_simd.so "$dest$prefix/lib/$soname"
ln -sf "$soname" "$dest$prefix/lib/librmsprop_simd.so"
install -m 644 target/capi/librmsprop_simd.a "$dest$prefix/lib/"
# Debug sections of the Rust standard library make up most of the archive; symbols stay.
strip --strip-debug "$dest$prefix/lib/librmsprop_simd.a"
install -m 644 capi/include/rmsprop_simd.h "$dest$prefix/include/"
sed -e "s|@PREFIX@|$prefix|" -e "s|@VERSION@|$version|" capi/rmsprop_simd.pc.in \
    > "$dest$prefix/lib/pkgconfig/rmsprop_simd.pc"
echo "installed $soname, librmsprop_simd.a, rmsprop_simd.h and rmsprop_simd.pc under $dest$prefix"
