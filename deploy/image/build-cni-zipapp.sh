#!/bin/sh
# Packs the stdlib-only CNI plugin (membrane.cni.plugin and membrane.cni_types) into one
# executable Python zipapp, the file installed on every node as /opt/cni/bin/membrane-cni.
# It runs with the node's python3 (3.8+, standard library only).
#   build-cni-zipapp.sh SOURCE_TREE OUTPUT_FILE
set -eu
src=${1:?usage: build-cni-zipapp.sh SOURCE_TREE OUTPUT_FILE}
out=${2:?usage: build-cni-zipapp.sh SOURCE_TREE OUTPUT_FILE}
python=${PYTHON:-python3}
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/membrane/cni"
# The zipapp's membrane/__init__.py is a stub: the real one is for the full package.
printf '"""membrane (CNI plugin subset)."""\n' > "$stage/membrane/__init__.py"
cp "$src/membrane/cni_types.py" "$stage/membrane/"
cp "$src/cni/__init__.py" "$src/cni/plugin.py" "$stage/membrane/cni/"
mkdir -p "$(dirname "$out")"
"$python" -m zipapp "$stage" --main membrane.cni.plugin:main --python "/usr/bin/env python3" --output "$out"
chmod 0755 "$out"
echo "build-cni-zipapp: wrote $out"
