#!/usr/bin/env bash
# Takes a bare Debian 12 machine (as root) to a working membrane setup. Idempotent:
# every step checks before it acts, so `make test` and `make demo` may call it each time.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${MEMBRANE_VENV:-$here/.venv}
stamp=$venv/.membrane-installed

# prometheus: its promtool checks the metrics exposition in the tests.
apt_pkgs=(clang llvm python3-bpfcc python3-cryptography bpfcc-tools libbpf-dev iproute2 iptables nftables
          python3-venv python3-dev linux-headers-amd64 containernetworking-plugins golang-go
          golang-github-appc-cni-dev
          iperf3 sockperf netsniff-ng tcpdump ethtool procps psmisc curl iputils-ping util-linux prometheus)

need_apt=0
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || { need_apt=1; break; }
done
if [ "$need_apt" = 1 ]; then
  echo "install: apt packages: ${apt_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${apt_pkgs[@]}" >/dev/null
fi

# bcc compiles against /lib/modules/$(uname -r)/{build,source}. When no headers package
# matches the running kernel, link the newest installed Debian headers: tc/XDP/cgroup
# programs only use the stable UAPI, so a different 6.x tree is fine.
kdir=/lib/modules/$(uname -r)
if [ ! -e "$kdir/build/include" ]; then
  build=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | grep -v -e cloud -e rt | sort -V | tail -n1)
  common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n1)
  if [ -z "$build" ] || [ -z "$common" ]; then
    echo "install: no linux-headers found under /usr/src" >&2; exit 1
  fi
  mkdir -p "$kdir"
  ln -sfn "$build" "$kdir/build"
  ln -sfn "$common" "$kdir/source"
  echo "install: no headers package matches kernel $(uname -r); linked $kdir/build -> $build and source -> $common"
fi

# bpffs for pinned maps.
if ! mount | grep -q "^bpf on /sys/fs/bpf "; then
  mkdir -p /sys/fs/bpf
  mount -t bpf bpf /sys/fs/bpf && echo "install: mounted bpffs on /sys/fs/bpf"
fi

# A venv made from Debian's interpreter sees Debian's bcc.
if [ ! -x "$venv/bin/python" ]; then
  /usr/bin/python3 -m venv --system-site-packages "$venv"
fi
if [ ! -f "$stamp" ] || [ "$here/pyproject.toml" -nt "$stamp" ]; then
  "$venv/bin/pip" install -q --upgrade pip >/dev/null
  "$venv/bin/pip" install -q -e "$here[test]"
  touch "$stamp"
fi
"$venv/bin/python" -c "import bcc, pyroute2, kubernetes, grpc, grpc_health, grpc_reflection, prometheus_client, pydantic" \
  || { echo "install: the venv cannot import the required libraries" >&2; exit 1; }

# membrane-cni, the plugin kubelet execs for every pod, is a static Go binary (no interpreter
# on the node): built next to the venv's scripts, rebuilt only when its sources change.
bash "$here/cni/build.sh" "$venv/bin/membrane-cni"
CNI_COMMAND=VERSION "$venv/bin/membrane-cni" </dev/null | grep -q supportedVersions \
  || { echo "install: membrane-cni does not answer VERSION" >&2; exit 1; }
echo "install: ready ($venv)"
