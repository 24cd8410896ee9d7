#!/bin/sh
# Lays out the kernel headers bcc compiles the datapath against as one self-contained tree, so
# the agent needs nothing from the node's /usr/src or /lib/modules: the agent is pointed at it
# with --kernel-headers (MEMBRANE_KERNEL_HEADERS), which bcc reads as BCC_KERNEL_SOURCE.
#   kernel-headers.sh OUT [BUILD_DIR COMMON_DIR]
# BUILD_DIR/COMMON_DIR default to the newest Debian linux-headers-*-amd64 / *-common in /usr/src
# (Debian splits the generated headers from the source ones; bcc wants them in one tree).
# Only what bcc includes is kept: include/, arch/<arch>/include/ (about 10% of the packages).
set -eu
out=${1:?usage: kernel-headers.sh OUT [BUILD_DIR COMMON_DIR]}
build=${2:-$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | grep -v -e cloud -e rt | sort -V | tail -n1)}
common=${3:-$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n1)}
arch=${ARCH:-x86}
[ -d "$build/include/generated" ] || { echo "kernel-headers: no generated headers in '$build'" >&2; exit 1; }
[ -f "$common/include/linux/kconfig.h" ] || { echo "kernel-headers: no kernel headers in '$common'" >&2; exit 1; }
tmp="$out.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp/arch/$arch"
cp -a "$common/include" "$tmp/include"
cp -a "$common/arch/$arch/include" "$tmp/arch/$arch/include"
# The generated headers (autoconf.h, asm offsets, uapi) of the built kernel, over the sources.
cp -a "$build/include/generated" "$tmp/include/"
cp -a "$build/arch/$arch/include/generated" "$tmp/arch/$arch/include/"
printf '%s\n' "$(basename "$build")" > "$tmp/HEADERS-FROM"
rm -rf "$out"
mv "$tmp" "$out"
echo "kernel-headers: $out from $(basename "$build") ($(du -sh "$out" | cut -f1))"
