#!/usr/bin/env bash
# Installs, idempotently, the Debian packages that gosec's tests, demo and
# benchmarks need. Only packages that are missing are installed; nothing is
# started. Usage: scripts/deps.sh [test|demo|bench|kernel-peer|all]
set -euo pipefail

what=${1:-test}
base=(iproute2 nftables iputils-ping tcpdump ethtool)
test_pkgs=(python3-scapy python3-cryptography tshark iperf3 strongswan strongswan-charon strongswan-starter libcharon-extra-plugins libstrongswan-standard-plugins libstrongswan-extra-plugins qemu-system-x86 busybox-static cpio kmod gcc libc6-dev socat jq procps util-linux dpkg-dev curl man-db systemd systemd-container passwd)
case "$what" in
  demo) pkgs=("${base[@]}") ;;
  test|bench|kernel-peer|all) pkgs=("${base[@]}" "${test_pkgs[@]}") ;;
  *) echo "deps.sh: unknown set '$what'" >&2; exit 2 ;;
esac

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ]; then
  echo "deps.sh: missing Debian packages: ${missing[*]} (run as root to install them)" >&2
  exit 1
fi
echo "deps.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# wireshark-common asks whether non-root users may capture; answer no.
echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
