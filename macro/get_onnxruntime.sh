#!/usr/bin/env bash
# Assemble an ONNX Runtime SDK for building macro/xec_onnx_infer.cc on a machine without an
# ONNX Runtime release:
#
#   bash macro/get_onnxruntime.sh [DEST]        # default DEST: build/onnxruntime
#   cmake -S macro -B build/macro -DONNXRUNTIME_ROOT=build/onnxruntime && cmake --build build/macro
#
# DEST/lib/libonnxruntime.so{,.1} link to the C library inside the installed onnxruntime Python
# wheel (the Python of this shell: the project's venv); DEST/include holds the official ONNX
# Runtime C/C++ headers (MIT, Microsoft), which no PyPI or Debian package ships. They are taken
# from the npm package com.github.asus4.onnxruntime (a Unity plugin that bundles the iOS
# framework of an ONNX Runtime release, headers included), pinned by version and sha256. The C
# API is append-only, so headers of API version V work with any library of version 1.V or newer
# (checked below). Needs npm and python with onnxruntime; nothing else is installed. Idempotent:
# an existing DEST with the same headers and library is kept. Written to DEST.tmp and renamed
# when complete.
set -euo pipefail

DEST="${1:-build/onnxruntime}"
PKG="com.github.asus4.onnxruntime@0.4.9"
PKG_SHA256="e59788788818fdde1b2e522e766a21ba0f7d8391de55737abf81e32cc801785d"
HEADERS="package/Plugins/iOS~/onnxruntime.xcframework/ios-arm64/onnxruntime.framework/Headers"
PY="${PYTHON:-python}"

die() { echo "get_onnxruntime.sh: $*" >&2; exit 1; }

lib=$("$PY" -c 'import glob, onnxruntime, os; d = os.path.join(os.path.dirname(onnxruntime.__file__), "capi"); print(*sorted(glob.glob(os.path.join(d, "libonnxruntime.so.*"))), sep="\n")' 2>/dev/null | head -n 1) \
  || die "'$PY' cannot import onnxruntime: install the project first (pip install -e '.[cpu,test]')"
[ -n "$lib" ] || die "no libonnxruntime.so.* inside the onnxruntime wheel of '$PY'"
lib_version="${lib##*libonnxruntime.so.}"        # e.g. 1.32.0
lib_minor=$(echo "$lib_version" | cut -d. -f2)

if [ -f "$DEST/include/onnxruntime_cxx_api.h" ] && grep -qF "headers: $PKG " "$DEST/SOURCE" 2>/dev/null \
  && [ "$(readlink -f "$DEST/lib/libonnxruntime.so")" = "$(readlink -f "$lib")" ]; then
  echo "get_onnxruntime.sh: $DEST is up to date (library $lib_version)"
  exit 0
fi
command -v npm >/dev/null || die "npm not found: install Node.js + npm, or point ONNXRUNTIME_ROOT at an ONNX Runtime release (macro/README.md)"

tmp="$DEST.tmp"
rm -rf "$tmp"
mkdir -p "$tmp/download" "$tmp/lib" "$tmp/include"
npm pack --silent "$PKG" --pack-destination "$tmp/download" >/dev/null \
  || die "npm pack $PKG failed (is the npm registry reachable?)"
tgz=$(ls "$tmp"/download/*.tgz)
echo "$PKG_SHA256  $tgz" | sha256sum --check --status \
  || die "$tgz: sha256 $(sha256sum "$tgz" | cut -d' ' -f1), expected $PKG_SHA256"
tar xzf "$tgz" --no-same-owner -C "$tmp/download" --wildcards "$HEADERS/*.h" \
  || die "$tgz has no $HEADERS/*.h"
mv "$tmp/download/$HEADERS"/*.h "$tmp/include/"
rm -rf "$tmp/download"

api=$(sed -n 's/^#define ORT_API_VERSION \([0-9]*\).*/\1/p' "$tmp/include/onnxruntime_c_api.h")
[ -n "$api" ] || die "no ORT_API_VERSION in the headers of $PKG"
[ "$lib_minor" -ge "$api" ] \
  || die "headers are API version $api, newer than the library $lib_version (needs onnxruntime >= 1.$api)"

ln -s "$(readlink -f "$lib")" "$tmp/lib/libonnxruntime.so"
ln -s "$(readlink -f "$lib")" "$tmp/lib/libonnxruntime.so.1"
printf 'headers: %s (ORT_API_VERSION %s)\nlibrary: %s\n' "$PKG" "$api" "$(readlink -f "$lib")" >"$tmp/SOURCE"
rm -rf "$DEST"
mv "$tmp" "$DEST"
echo "get_onnxruntime.sh: $DEST ready (headers API $api, library $lib_version)"
