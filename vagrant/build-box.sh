#!/usr/bin/env bash
# Build the Vagrant box "minikubenet/bookworm" from Debian's packages, because no box can be
# downloaded here. Cached: the box is rebuilt only when its inputs change (this script, the
# package list, the kernel version Debian currently ships, the project's runtime
# dependencies in pyproject.toml).
#
#   vagrant/build-box.sh [--force] [--print-path]
#
# What is in it:
#   - a debootstrap (minbase) Debian 12 root file system with systemd, udev,
#     systemd-networkd (DHCP on eth0; Vagrant writes the other NICs' files), sshd, sudo,
#     the user "vagrant" with Vagrant's public insecure key, python3, iproute2,
#     iptables, etcd, iperf3 and tcpdump;
#   - /opt/minikubenet, a virtualenv holding the project's runtime dependencies, installed
#     from wheels the host downloads with its own pip (the guests have no network here):
#     provisioning only has to add the project's own wheel;
#   - Debian's cloud kernel with all its modules (VXLAN, bridge, veth, netfilter are
#     modules) and a small busybox initramfs that mounts /dev/vda and starts systemd;
#     the box's own Vagrantfile boots them directly (libvirt's kernel/initrd options),
#     so the disk needs no partition table and no boot loader.
#
# The disk image is made without loop devices or mounts (mkfs.ext4 -d), then qcow2.
# Output: $MINIKUBENET_VM_CACHE (default /var/cache/minikubenet-vm)/boxes/<hash>/minikubenet-bookworm.box
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
CACHE=${MINIKUBENET_VM_CACHE:-/var/cache/minikubenet-vm}
SUITE=bookworm
MIRROR=${MINIKUBENET_VM_MIRROR:-http://deb.debian.org/debian}
BOX_NAME=minikubenet-bookworm
FORCE=0
PRINT_PATH=0
for a in "$@"; do
  case "$a" in
    --force) FORCE=1 ;;
    --print-path) PRINT_PATH=1 ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "build-box: unknown argument $a" >&2; exit 2 ;;
  esac
done

say() { echo "build-box: $*" >&2; }
# commands inside the new root file system, with a clean environment (no PIP_* or proxy
# settings of the host leak into the box)
in_root() { env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 chroot "$R" "$@"; }
die() { echo "build-box: error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (debootstrap and chroot need it)"
for tool in debootstrap mkfs.ext4 qemu-img cpio depmod apt-get dpkg-deb; do
  command -v "$tool" >/dev/null || die "\`$tool\` is not installed: run ./setup.sh (vagrant/setup-host.sh installs the VM tier's packages)"
done

PACKAGES=(
  systemd systemd-sysv udev dbus                  # init, device names, hostnamectl (Vagrant sets the hostname)
  openssh-server sudo                             # how Vagrant gets in
  python3 python3-venv                            # the project runs in /opt/minikubenet
  iproute2 iptables nftables conntrack kmod      # what the agent and the proxy call
  iputils-ping procps
  etcd-server etcd-client                         # etcd on node1 (disabled by default)
  iperf3 tcpdump                                  # throughput and underlay captures
  podman containernetworking-plugins              # the DaemonSet's containers from the image (deploy/, tests/vm);
                                                  # the plugins provide container-network-stack, which debootstrap
                                                  # does not resolve (a virtual package)
  busybox-static                                  # the initramfs is busybox
)

# The project's runtime dependencies, as pyproject.toml declares them.
PY=${PYTHON:-$REPO/.venv/bin/python}
[ -x "$PY" ] || PY=python3
mapfile -t PYDEPS < <("$PY" - "$REPO/pyproject.toml" <<'EOF'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["dependencies"]))
EOF
)
[ ${#PYDEPS[@]} -gt 0 ] || die "could not read the dependencies from $REPO/pyproject.toml"

# The cloud kernel Debian ships today (a security update changes it, and so the box).
kernel_package() { apt-cache depends linux-image-cloud-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*-cloud-amd64\)$/\1/p' | head -1; }
KPKG=$(kernel_package)
if [ -z "$KPKG" ]; then
  apt-get update -qq
  KPKG=$(kernel_package)
fi
[ -n "$KPKG" ] || die "apt knows no linux-image-cloud-amd64 (is a Debian mirror in /etc/apt/sources.list?)"
KVER=${KPKG#linux-image-}

HASH=$( { cat "$0"; printf '%s\n' "${PACKAGES[@]}" "${PYDEPS[@]}" "$KPKG" "$SUITE" "$MIRROR"; } | sha256sum | cut -c1-16)
OUT=$CACHE/boxes/$HASH
BOX=$OUT/$BOX_NAME.box
if [ "$FORCE" = 0 ] && [ -s "$BOX" ]; then
  say "cached: $BOX"
  [ "$PRINT_PATH" = 1 ] && echo "$BOX"
  exit 0
fi

START=$(date +%s)
mkdir -p "$CACHE/boxes" "$CACHE/debs"
WORK=$(mktemp -d "$CACHE/build.XXXXXX")
R=$WORK/rootfs
cleanup() {
  # debootstrap mounts /proc and /sys inside the target; a failed run can leave them
  for m in $(awk -v r="$R" 'index($2, r) == 1 {print $2}' /proc/self/mounts | sort -r); do umount -l "$m" || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

say "debootstrap $SUITE (${#PACKAGES[@]} extra packages) from $MIRROR ..."
include=$(IFS=,; echo "${PACKAGES[*]}")
if ! debootstrap --variant=minbase --include="$include" --cache-dir="$CACHE/debs" \
      "$SUITE" "$R" "$MIRROR" >"$WORK/debootstrap.log" 2>&1; then
  tail -20 "$WORK/debootstrap.log" >&2
  die "debootstrap failed (log above)"
fi
say "  rootfs done ($(( $(date +%s) - START ))s)"

# -- the kernel and its modules (the .deb is unpacked, not installed: no initramfs-tools) --
say "kernel $KPKG ..."
(cd "$WORK" && apt-get download -qq -o APT::Sandbox::User=root "$KPKG" >/dev/null) || die "apt-get download $KPKG failed"
dpkg-deb -x "$WORK"/"$KPKG"_*.deb "$WORK/kernel"
mkdir -p "$R/usr/lib/modules"
cp -a "$WORK/kernel/lib/modules/$KVER" "$R/usr/lib/modules/"
depmod -b "$R" "$KVER"
mkdir -p "$OUT.tmp"
cp "$WORK/kernel/boot/vmlinuz-$KVER" "$OUT.tmp/vmlinuz"

# -- the initramfs: busybox, the modules to reach the disk, an /init that starts systemd --
I=$WORK/initramfs
mkdir -p "$I"/{bin,dev,proc,sys,newroot,usr/lib/modules}
cp "$R/bin/busybox" "$I/bin/busybox"
# the modules to reach an ext4 root on a virtio disk, dependencies first (built-ins are skipped)
modprobe -a -d "$R" -S "$KVER" --show-depends virtio_pci virtio_blk ext4 \
  | awk '$1 == "insmod" && !seen[$2]++ {print $2}' | sed "s|^$R||" > "$I/modules.order"
grep -q virtio_blk "$I/modules.order" || grep -q virtio_blk "$R/usr/lib/modules/$KVER/modules.builtin" \
  || die "virtio_blk is neither a module nor built into $KPKG"
while read -r rel; do
  mkdir -p "$I$(dirname "$rel")"
  cp "$R$rel" "$I$rel"
done < "$I/modules.order"
cat > "$I/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
for m in $(/bin/busybox cat /modules.order); do /bin/busybox insmod "$m" 2>/dev/null; done
root=/dev/vda
for arg in $(/bin/busybox cat /proc/cmdline); do
  case "$arg" in root=*) root=${arg#root=} ;; esac
done
i=0
while [ ! -b "$root" ] && [ $i -lt 100 ]; do /bin/busybox sleep 0.1; i=$((i + 1)); done
if ! /bin/busybox mount -t ext4 -o rw "$root" /newroot; then
  echo "initramfs: cannot mount $root; powering off" >&2
  /bin/busybox poweroff -f
fi
/bin/busybox umount /proc /sys
/bin/busybox mount --move /dev /newroot/dev
exec /bin/busybox switch_root /newroot /sbin/init
EOF
chmod +x "$I/init"
(cd "$I" && find . | cpio -o -H newc --quiet | gzip -1 > "$OUT.tmp/initrd.gz")

# -- configuration --------------------------------------------------------------------------
say "configuring ..."
echo "$BOX_NAME" > "$R/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 %s\n' "$BOX_NAME" > "$R/etc/hosts"
echo "/dev/vda / ext4 defaults,noatime 0 1" > "$R/etc/fstab"
# every VM must get its own machine-id (DHCP client IDs derive from it): systemd makes one at boot
: > "$R/etc/machine-id"
rm -f "$R/var/lib/dbus/machine-id"
# DHCP on the first NIC (Vagrant's management network); Vagrant writes the others' files
mkdir -p "$R/etc/systemd/network" "$R/etc/systemd/networkd.conf.d"
printf '[Match]\nName=eth0\n\n[Network]\nDHCP=ipv4\n' > "$R/etc/systemd/network/10-eth0.network"
# the agent owns routes and rules for pods and the overlay: networkd must not remove them
printf '[Network]\nManageForeignRoutes=no\nManageForeignRoutingPolicyRules=no\n' \
  > "$R/etc/systemd/networkd.conf.d/10-minikubenet.conf"
in_root systemctl -q enable systemd-networkd ssh
# etcd runs on node1 only: provisioning enables it there
in_root systemctl -q disable etcd 2>/dev/null || true
# nothing waits for "network-online" for minutes, no getty on a screen that does not exist
in_root systemctl -q mask systemd-networkd-wait-online.service getty@tty1.service \
  e2scrub_reap.service apt-daily.timer apt-daily-upgrade.timer 2>/dev/null || true
# the vagrant user, with Vagrant's well-known insecure key (a local, isolated box only)
in_root useradd -m -s /bin/bash -G sudo vagrant
echo 'vagrant ALL=(ALL) NOPASSWD: ALL' > "$R/etc/sudoers.d/vagrant"
chmod 440 "$R/etc/sudoers.d/vagrant"
VAGRANT_PUB=$(ls /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub 2>/dev/null | head -1)
[ -n "$VAGRANT_PUB" ] || die "Vagrant's keys/vagrant.pub not found: install vagrant (vagrant/setup-host.sh)"
install -d -m 700 -o 1000 -g 1000 "$R/home/vagrant/.ssh"
install -m 600 -o 1000 -g 1000 "$VAGRANT_PUB" "$R/home/vagrant/.ssh/authorized_keys"
printf 'UseDNS no\nPasswordAuthentication no\n' > "$R/etc/ssh/sshd_config.d/vagrant.conf"
# modules the agent needs, loaded at boot (saves the first CNI ADD a modprobe under TCG)
printf 'vxlan\nbridge\nveth\nbr_netfilter\n' > "$R/etc/modules-load.d/minikubenet.conf"

# -- the project's runtime dependencies, from wheels the host downloads --------------------
say "python dependencies: ${PYDEPS[*]} ..."
mkdir -p "$R/tmp/wheels"
"$PY" -m pip download -q --only-binary=:all: -d "$R/tmp/wheels" "${PYDEPS[@]}" >"$WORK/pip.log" 2>&1 \
  || { grep -v '^WARNING: Location' "$WORK/pip.log" | tail -20 >&2; die "pip download of the runtime dependencies failed"; }
in_root python3 -m venv /opt/minikubenet
in_root /opt/minikubenet/bin/pip install -q --no-index --find-links /tmp/wheels "${PYDEPS[@]}" \
  || die "installing the runtime dependencies into the box failed"
rm -rf "$R/tmp/wheels" "$R/root/.cache"
# byte-compile natively now: under TCG in the guest this would cost minutes
in_root /opt/minikubenet/bin/python -m compileall -q /opt/minikubenet/lib >/dev/null || true

# -- slim down and make the disk ------------------------------------------------------------
rm -rf "$R"/var/cache/apt/archives/*.deb "$R"/var/lib/apt/lists/* "$R"/usr/share/doc/* "$R"/usr/share/man/* \
       "$R"/usr/share/locale/*
say "disk image ..."
truncate -s 4G "$WORK/root.raw"
mkfs.ext4 -q -F -L root -d "$R" "$WORK/root.raw"
qemu-img convert -O qcow2 "$WORK/root.raw" "$OUT.tmp/box.img"
cat > "$OUT.tmp/metadata.json" <<'EOF'
{"provider": "libvirt", "format": "qcow2", "virtual_size": 4}
EOF
# the box's own Vagrantfile: how to boot it (a project Vagrantfile can override any of this)
cat > "$OUT.tmp/Vagrantfile" <<'EOF'
# Boots the local box "minikubenet/bookworm" (built by minikubenet's vagrant/build-box.sh):
# no boot loader on the disk, libvirt starts the kernel and the initramfs shipped here.
Vagrant.configure("2") do |config|
  config.ssh.insert_key = false        # the box has Vagrant's insecure key; the VMs are local
  config.vm.provider :libvirt do |lv|
    lv.kernel = File.join(__dir__, "vmlinuz")
    lv.initrd = File.join(__dir__, "initrd.gz")
    lv.cmd_line = "root=/dev/vda console=ttyS0 net.ifnames=0 panic=-1 quiet"
    lv.disk_bus = "virtio"
  end
end
EOF
echo "$KPKG" > "$OUT.tmp/kernel-package"
(cd "$OUT.tmp" && tar cf "$BOX_NAME.box.tmp" metadata.json Vagrantfile box.img vmlinuz initrd.gz kernel-package \
  && mv "$BOX_NAME.box.tmp" "$BOX_NAME.box" && rm -f box.img)
rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"
# older boxes are not needed any more
for old in "$CACHE"/boxes/*; do
  [ "$old" = "$OUT" ] || rm -rf "$old"
done
say "built $BOX ($(du -m "$BOX" | cut -f1) MB) in $(( $(date +%s) - START ))s"
[ "$PRINT_PATH" = 1 ] && echo "$BOX"
exit 0
