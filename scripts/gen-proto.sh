#!/usr/bin/env bash
# Regenerates the Python code of proto/membrane/*/*.proto into membrane/api/ (committed files).
# The import path maps proto/membrane to membrane/api, so generated modules import each other
# as `membrane.api.state.v1...` while the wire names stay `membrane.state.v1.*`.
# Needs grpcio-tools (the `test` extra). Usage: scripts/gen-proto.sh [python]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-${PYTHON:-.venv/bin/python}}"
OUT="${GEN_PROTO_OUT:-.}"
mapfile -t protos < <(cd proto/membrane && find . -name '*.proto' | sort | sed 's|^\./|membrane/api/|')
"$PY" -m grpc_tools.protoc -Imembrane/api=proto/membrane \
    --python_out="$OUT" --pyi_out="$OUT" --grpc_python_out="$OUT" "${protos[@]}"
