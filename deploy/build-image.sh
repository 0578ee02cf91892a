#!/usr/bin/env bash
# Build the image the DaemonSet runs (deploy/minikubenet.yaml), localhost/minikubenet:<version>,
# from Debian's packages: no base image can be downloaded here, so the root file system is
# made the way the VM box is (vagrant/build-box.sh): debootstrap, then a virtualenv with the
# project's dependencies from wheels the host downloads, then the project's own wheel;
# `podman import` turns the tree into an image.
#
#   deploy/build-image.sh [--oci-archive FILE] [--print-name]
#
#   --oci-archive FILE   also save the image as an OCI archive (for `ctr image import`,
#                        `podman load`, or copying to nodes without a registry)
#   PODMAN_OPTS          extra podman options, e.g. "--root DIR --runroot DIR --storage-driver vfs"
#                        (the tests build into scratch storage this way)
#
# What is in it: Debian 12 minbase, python3, iproute2, iptables (nft and legacy), nftables,
# conntrack, kmod; /opt/minikubenet, a virtualenv holding minikubenet and its runtime
# dependencies. About 190 MB. The part that only changes with the package list or the
# dependencies (the base: everything but the project's wheel) is cached in
# $MINIKUBENET_VM_CACHE (default /var/cache/minikubenet-vm)/image/<hash>/base.tar, so a
# rebuild after a code change takes seconds.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
CACHE=${MINIKUBENET_VM_CACHE:-/var/cache/minikubenet-vm}
SUITE=bookworm
MIRROR=${MINIKUBENET_VM_MIRROR:-http://deb.debian.org/debian}
PY=${PYTHON:-$REPO/.venv/bin/python}
[ -x "$PY" ] || PY=python3
VERSION=$("$PY" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$REPO/pyproject.toml")
IMAGE=localhost/minikubenet:$VERSION
OCI_ARCHIVE=
read -r -a PODMAN <<< "podman ${PODMAN_OPTS:-}"

say() { echo "build-image: $*" >&2; }
die() { echo "build-image: error: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
  case "$1" in
    --oci-archive) OCI_ARCHIVE=${2:?--oci-archive needs a file name}; shift 2 ;;
    --print-name) echo "$IMAGE"; exit 0 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

[ "$(id -u)" = 0 ] || die "run as root (debootstrap and chroot need it)"
for tool in debootstrap podman tar; do
  command -v "$tool" >/dev/null || die "\`$tool\` is not installed: run ./setup.sh"
done

PACKAGES=(python3 python3-venv iproute2 iptables nftables conntrack kmod procps)
mapfile -t PYDEPS < <("$PY" - "$REPO/pyproject.toml" <<'EOF'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["dependencies"]))
EOF
)
[ ${#PYDEPS[@]} -gt 0 ] || die "could not read the dependencies from $REPO/pyproject.toml"

HASH=$( { sed -n '/^PACKAGES=/,/^say "minikubenet/p' "$0"; printf '%s\n' "${PACKAGES[@]}" "${PYDEPS[@]}" "$SUITE" "$MIRROR"; } | sha256sum | cut -c1-16)
BASE=$CACHE/image/$HASH/base.tar
mkdir -p "$CACHE/debs" "$CACHE/image"
WORK=$(mktemp -d "$CACHE/image/build.XXXXXX")
R=$WORK/rootfs
cleanup() {
  for m in $(awk -v r="$R" 'index($2, r) == 1 {print $2}' /proc/self/mounts | sort -r); do umount -l "$m" || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
in_root() { env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 chroot "$R" "$@"; }
START=$(date +%s)

if [ -s "$BASE" ]; then
  say "base cached: $BASE"
  mkdir -p "$R" && tar -C "$R" -xf "$BASE"
else
  say "debootstrap $SUITE minbase + ${PACKAGES[*]} ..."
  include=$(IFS=,; echo "${PACKAGES[*]}")
  if ! debootstrap --variant=minbase --include="$include" --cache-dir="$CACHE/debs" \
        "$SUITE" "$R" "$MIRROR" >"$WORK/debootstrap.log" 2>&1; then
    tail -20 "$WORK/debootstrap.log" >&2
    die "debootstrap failed (log above)"
  fi
  say "python dependencies: ${PYDEPS[*]} ..."
  mkdir -p "$R/tmp/wheels"
  "$PY" -m pip download -q --only-binary=:all: -d "$R/tmp/wheels" "${PYDEPS[@]}" >"$WORK/pip.log" 2>&1 \
    || { grep -v '^WARNING: Location' "$WORK/pip.log" | tail -20 >&2; die "pip download of the dependencies failed"; }
  in_root python3 -m venv /opt/minikubenet
  in_root /opt/minikubenet/bin/pip install -q --no-index --find-links /tmp/wheels "${PYDEPS[@]}" \
    || die "installing the dependencies into the image failed"
  rm -rf "$R/tmp/wheels" "$R/root/.cache"
  # what a container never needs: apt's caches, documentation, locales
  rm -rf "$R"/var/cache/apt/archives/*.deb "$R"/var/lib/apt/lists/* "$R"/usr/share/doc/* "$R"/usr/share/man/* \
         "$R"/usr/share/locale/* "$R"/var/log/*
  # a container gets its /dev, /proc, /sys and /etc/hosts from the runtime
  rm -rf "$R"/dev/* "$R"/proc/* "$R"/sys/*
  mkdir -p "$(dirname "$BASE")"
  tar -C "$R" --numeric-owner -cf "$BASE.tmp" . && mv "$BASE.tmp" "$BASE"
  say "  base done ($(( $(date +%s) - START ))s)"
fi

say "minikubenet $VERSION ..."
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$R/tmp/wheel" "$REPO" >"$WORK/wheel.log" 2>&1 \
  || { tail -20 "$WORK/wheel.log" >&2; die "building the project's wheel failed"; }
WHEEL=$(cd "$R/tmp/wheel" && ls minikubenet-"$VERSION"-*.whl | head -1)
in_root /opt/minikubenet/bin/pip install -q --no-index --no-deps "/tmp/wheel/$WHEEL" \
  || die "installing minikubenet into the image failed"
rm -rf "$R/tmp/wheel" "$R/root/.cache"
in_root /opt/minikubenet/bin/python -m compileall -q /opt/minikubenet/lib >/dev/null || true
# the CNI plugin the init container copies onto the host (minikubenet install finds it in the package)
in_root /opt/minikubenet/bin/minikubenet install --help >/dev/null || die "the installed minikubenet does not run"

say "podman import -> $IMAGE ..."
tar -C "$R" --numeric-owner -c . | "${PODMAN[@]}" import \
  --change 'ENV PATH=/opt/minikubenet/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV PYTHONDONTWRITEBYTECODE=1' \
  --change 'CMD ["/opt/minikubenet/bin/minikubenet-agent"]' \
  --change "LABEL org.opencontainers.image.title=minikubenet org.opencontainers.image.version=$VERSION" \
  - "$IMAGE" >/dev/null || die "podman import failed"
if [ -n "$OCI_ARCHIVE" ]; then
  rm -f "$OCI_ARCHIVE"
  "${PODMAN[@]}" save -q --format oci-archive -o "$OCI_ARCHIVE" "$IMAGE" || die "podman save failed"
  say "saved $OCI_ARCHIVE"
fi
say "done: $IMAGE ($(( $(date +%s) - START ))s)"
echo "$IMAGE"
