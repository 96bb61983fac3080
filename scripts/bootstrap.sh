#!/usr/bin/env bash
# Install everything guestward, its lab and its tests need on a fresh Debian 12 machine (root).
# Idempotent: a second run only checks. Prints what it does on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${GW_VENV:-$ROOT/.venv}
ASSETS=${GW_ASSETS:-/var/cache/guestward/assets}

APT_PACKAGES=(
  qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-daemon libvirt-daemon-driver-qemu
  libvirt-clients python3-libvirt nftables python3-nftables iptables ebtables iproute2
  iputils-ping iperf3 busybox-static cpio e2fsprogs fdisk debootstrap socat gcc libc6-dev
  python3-venv python3-dev conntrack bubblewrap python3-seccomp
)

log() { echo "bootstrap: $*" >&2; }

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# /dev/kvm as Debian's udev rule leaves it (root:kvm 0660). Where nothing set it up (root:root 0600),
# libvirt finds KVM "enabled when probed but not usable now", throws its QEMU capabilities away and
# re-probes QEMU (about 4 s) on every call. Guests still run under TCG (domain type='qemu').
if [ -c /dev/kvm ] && getent group kvm >/dev/null; then chgrp kvm /dev/kvm; chmod 660 /dev/kvm; fi

# The guest kernel: the version Debian's cloud kernel metapackage points to, unpacked (never installed).
mkdir -p "$ASSETS"
if [ ! -e "$ASSETS/kernel/vmlinuz" ] || [ ! -e "$ASSETS/kernel/modules/virtio_console.ko" ]; then
  kpkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
  log "guest kernel $kpkg"
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -qq "$kpkg" 2>/dev/null)
  dpkg-deb -x "$tmp"/*.deb "$tmp/x"
  rm -rf "$ASSETS/kernel.new"; mkdir -p "$ASSETS/kernel.new"
  cp "$tmp"/x/boot/vmlinuz-* "$ASSETS/kernel.new/vmlinuz"
  kver=$(basename "$tmp"/x/lib/modules/*)
  mkdir -p "$ASSETS/kernel.new/modules"
  M="$tmp/x/lib/modules/$kver/kernel"
  cp "$M"/drivers/virtio/{virtio,virtio_ring,virtio_pci_legacy_dev,virtio_pci_modern_dev,virtio_pci}.ko \
     "$M"/net/core/failover.ko "$M"/drivers/net/{net_failover,virtio_net}.ko "$M"/drivers/char/virtio_console.ko \
     "$ASSETS/kernel.new/modules/"
  echo "$kver" > "$ASSETS/kernel.new/version"
  rm -rf "$ASSETS/kernel"; mv "$ASSETS/kernel.new" "$ASSETS/kernel"; rm -rf "$tmp"
fi
chmod 755 /var/cache/guestward "$ASSETS"

# The venv: system site packages give it apt's libvirt and nftables bindings.
if [ ! -x "$VENV/bin/guestward" ] || [ pyproject.toml -nt "$VENV/.installed" ]; then
  log "venv $VENV"
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -e ".[dev]"
  touch "$VENV/.installed"
fi
