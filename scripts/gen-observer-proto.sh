#!/usr/bin/env bash
# Regenerates the Python code of proto/membrane/observer/v1/observer.proto into
# membrane/api/observer/v1/ (committed files). Same import mapping as scripts/gen-proto.sh
# (proto/membrane -> membrane/api, wire package membrane.observer.v1); kept separate so the
# observer can be regenerated without touching the state stream's generated code.
# Needs grpcio-tools (the `test` extra). Usage: scripts/gen-observer-proto.sh [python]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-${PYTHON:-.venv/bin/python}}"
OUT="${GEN_PROTO_OUT:-.}"
"$PY" -m grpc_tools.protoc -Imembrane/api=proto/membrane \
    --python_out="$OUT" --pyi_out="$OUT" --grpc_python_out="$OUT" \
    membrane/api/observer/v1/observer.proto
for pkg in membrane/api/observer membrane/api/observer/v1; do
    [ -f "$OUT/$pkg/__init__.py" ] || : > "$OUT/$pkg/__init__.py"
done
