#!/usr/bin/env bash
# The host packages of the VM tier (tests/vm, vagrant/): Vagrant with its libvirt
# provider, the libvirt daemon and its QEMU driver, QEMU, and what vagrant/build-box
# needs to make a box from Debian's packages. Called by ../setup.sh; idempotent, quiet.
#
# Deliberately not libvirt-daemon-system: its maintainer scripts enable and start
# libvirtd (and its "default" NAT network, virbr0) in the host's own namespace. The VM
# tier starts its own libvirtd, inside a network and mount namespace it creates
# (vagrant/mkvm host-up), and stops it by PID. On a normal lab host, install
# libvirt-daemon-system yourself (see vagrant/README.md).
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
  echo "vagrant/setup-host.sh: run as root" >&2
  exit 1
fi

APT_PACKAGES=(
  vagrant vagrant-libvirt                          # vagrant 2.3 and its libvirt provider
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
  dnsmasq-base                                     # DHCP on the VMs' management network
  qemu-system-x86 qemu-utils                       # KVM where it works, TCG where it does not
  openssh-client                                   # vagrant ssh
  debootstrap cpio kmod e2fsprogs                  # the local box: rootfs, initramfs, depmod, mkfs.ext4 -d
  tcpdump                                          # captures on the VMs' underlay
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "vagrant/setup-host.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
