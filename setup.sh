#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine (as root) for minikubenet: the system packages the
# lab and the tests use, and a virtualenv (.venv) with the package and its test extras.
# Idempotent: run it as often as you like.
set -euo pipefail
cd "$(dirname "$0")"

if [ "$(id -u)" != 0 ]; then
  echo "setup.sh: run as root (the lab creates network namespaces and runs etcd)" >&2
  exit 1
fi

APT_PACKAGES=(
  etcd-server etcd-client          # the cluster store (etcd 3.4 on Debian 12) and etcdctl
  iproute2 iptables nftables conntrack ipset iputils-ping ethtool tcpdump
  iperf3                           # throughput benchmarks
  bird2                            # the bgp backend's BGP daemon (the agent runs it per node)
  containernetworking-plugins      # the Go reference plugins (bridge, host-local, portmap...) in /usr/lib/cni
  containerd runc podman busybox-static   # real CNI runtimes for tests/runtimes (started in scratch dirs)
  python3 python3-venv python3-pip
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Extra system packages of a tier that needs more (the VM tier: vagrant, libvirt, qemu).
for extra in vagrant/setup-host.sh; do
  [ -x "$extra" ] && "./$extra"
done

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test,bench,lint]'
echo "setup.sh: ready (.venv/bin/minikubenet, .venv/bin/minikubenet-agent)"
