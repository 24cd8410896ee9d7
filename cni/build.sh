#!/usr/bin/env bash
# Builds the CNI plugin (cni/membrane-cni, Go standard library only) into one static
# executable with no interpreter and no libc: the file kubelet execs for every pod.
#   cni/build.sh [OUTPUT]     (default: .venv/bin/membrane-cni of this checkout)
# Offline and reproducible: no module downloads (there are no dependencies), cgo off.
# Rebuilds only when a source is newer than the output.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$here/membrane-cni
out=${1:-$here/../.venv/bin/membrane-cni}
# (an ELF file: an older install left a Python launcher under the same name)
if [ -x "$out" ] && [ "$(head -c4 "$out" | tail -c3)" = ELF ] && [ -z "$(find "$src" "$0" -newer "$out" -type f -print -quit)" ]; then
  exit 0
fi
command -v go >/dev/null || { echo "cni/build.sh: go is not installed (Debian: golang-go)" >&2; exit 1; }
mkdir -p "$(dirname "$out")"
# go needs a build cache; CI may run without HOME.
export GOCACHE=${GOCACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/go-build}
tmp=$(mktemp "$(dirname "$out")/.membrane-cni.XXXXXX")
trap 'rm -f "$tmp"' EXIT
(cd "$src" && CGO_ENABLED=0 GOFLAGS=-mod=mod GOPROXY=off GO111MODULE=on \
   go build -trimpath -ldflags='-s -w' -o "$tmp" .)
chmod 0755 "$tmp"
mv -f "$tmp" "$out"
trap - EXIT
echo "cni/build.sh: built $out"
