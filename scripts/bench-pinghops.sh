#!/usr/bin/env bash
# make bench-pinghops: where a ping's time goes through two gosec gateways
# (issue 12's goal: ping through the tunnel <= 0.2 ms above plain routing).
#
# Two gosec gateways (scripts/topo.sh, prefix glt-) carry one manual-keyed
# AES-128-GCM-16 tunnel (raw ESP; -u: ESP-in-UDP); lan1 pings lan2 N times,
# 50 ms apart, while tcpdump on each gateway's LAN and WAN links
# timestamps every packet (one clock for all namespaces). It prints, per
# gateway and direction, the time from the packet's arrival on one link to
# its departure on the other (median, 10th and 90th percentile, in us):
# that is the gateway's whole share of the round trip (waking its reader,
# reading, sealing or opening, sending or writing, the kernel's part),
# and beside it ping's own round trip.
#
# With -N the gateways run the null relay instead (internal/tools/nulltun:
# TUN to UDP port 4790 and back, no cryptography), the control that
# scripts/bench-e2e.sh measures as path "null": the same table for a
# process that does nothing but move the packet.
#
# With -T each gateway's TUN device (gosec0; null0 for the relay) is
# captured as well, and every hop is split where the packet passes it: the
# kernel's part (LAN link to TUN, TUN to LAN link: routing, nftables, the
# TUN's queue) and the process's part (from the TUN to the WAN link: woken,
# read, sealed, sent; from the WAN link to the TUN: the kernel's input,
# the receive ring, woken, opened, written).
#
#   scripts/bench-pinghops.sh [-n PINGS] [-u | -N] [-T]
# Root only; uses bin/gosec (GOSEC=path overrides); needs tcpdump.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
N=40 ENCAP='' NULL='' SPLIT=''
while getopts "n:uNTh" o; do
  case "$o" in
    n) N=$OPTARG ;; u) ENCAP=1 ;; N) NULL=1 ;; T) SPLIT=1 ;;
    *) awk 'NR > 1 && /^#/ {print; next} NR > 1 {exit}' "$0"; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "bench-pinghops: run as root" >&2; exit 1; }
command -v tcpdump >/dev/null || { echo "bench-pinghops: tcpdump is missing (scripts/deps.sh bench)" >&2; exit 1; }
BIN=${GOSEC:-bin/gosec}
[[ $BIN = /* ]] || BIN=$ROOT/$BIN
[ -x "$BIN" ] || { echo "bench-pinghops: no $BIN (run make build)" >&2; exit 1; }
P=glt-
T=$(mktemp -d /tmp/gosec-pinghops.XXXXXX)
CAPS=() RELAYS=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for p in "${CAPS[@]}" "${RELAYS[@]}"; do kill "$p" 2>/dev/null || true; done
  for gw in gw1 gw2; do
    [ -S "$T/$gw.ctl" ] && ip netns exec "${P}$gw" "$BIN" stop --socket "$T/$gw.ctl" >/dev/null 2>&1 || true
  done
  scripts/topo.sh down "$P" >/dev/null 2>&1 || true
  rm -rf "$T"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

scripts/topo.sh up "$P" >/dev/null
if [ -n "$NULL" ]; then
  . scripts/nullrelay.sh
  null_relay_up "$P" "$T"
  RELAYS=("${NULL_RELAY_PIDS[@]}")
else
  hk() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }
  {
    printf 'conn t\n\ttype=tunnel\n\tauto=add\n\tleft=192.0.2.1\n\tleftsubnet=10.1.0.0/24\n\tright=192.0.2.2\n\trightsubnet=10.2.0.0/24\n'
    printf '\tesp=aes128gcm16\n\tleftspi=0x1001\n\trightspi=0x2001\n\tleftespenckey=0x%s\n\trightespenckey=0x%s\n' "$(hk 20)" "$(hk 20)"
    [ -n "$ENCAP" ] && printf '\tforceencaps=yes\n'
  } >"$T/ipsec.conf"
  : >"$T/ipsec.secrets"
  chmod 600 "$T/ipsec.conf" "$T/ipsec.secrets"
  for gw in gw1 gw2; do
    ip netns exec "${P}$gw" "$BIN" start ${GOSEC_START_ARGS:-} --config "$T/ipsec.conf" --socket "$T/$gw.ctl" --log "$T/$gw.log" >/dev/null
    ip netns exec "${P}$gw" "$BIN" up t --socket "$T/$gw.ctl" >/dev/null
  done
fi
ip netns exec "${P}lan1" ping -q -c 2 -i 0.2 -W 2 10.2.0.2 >/dev/null ||
  { echo "bench-pinghops: no ping through the tunnel" >&2; exit 1; }
wan=esp; [ -n "$ENCAP" ] && wan="udp port 4500"; [ -n "$NULL" ] && wan="udp port 4790"
cap() { # cap GW IFACE FILTER
  ip netns exec "${P}$1" tcpdump -i "$2" -n -tt --time-stamp-precision=nano -l "$3" >"$T/$1-$2.txt" 2>/dev/null &
  CAPS+=($!)
}
cap gw1 lan0 icmp; cap gw1 wan0 "$wan"; cap gw2 lan0 icmp
TUNDEV=gosec0; [ -n "$NULL" ] && TUNDEV=null0
[ -n "$SPLIT" ] && { cap gw1 $TUNDEV icmp; cap gw2 $TUNDEV icmp; }
sleep 1
RTT=$(ip netns exec "${P}lan1" ping -c "$N" -i 0.05 -W 2 10.2.0.2 | awk -F/ '/^rtt/ {print $5}')
sleep 0.5
for p in "${CAPS[@]}"; do kill "$p" 2>/dev/null || true; done
wait "${CAPS[@]}" 2>/dev/null || true
CAPS=()
path="gosec $(git rev-parse --short HEAD 2>/dev/null || echo '?'), aes128gcm16, raw ESP"; [ -n "$ENCAP" ] && path="${path%raw ESP}ESP-in-UDP"
[ -n "$NULL" ] && path="the null relay (nulltun, no cryptography)"
echo "$(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) cores, Linux $(uname -r); $path; $N pings 50 ms apart, ping's average round trip $RTT ms; load average $(cut -d' ' -f1-3 /proc/loadavg)."
echo
if [ -n "$SPLIT" ]; then
  # gw1 lan0, gw1 wan0, gw2 lan0, gw1 TUN, gw2 TUN: request (odd) and reply
  # (even) frames in order on each
  awk -v dir="$T" -v tun="$TUNDEV" 'BEGIN {
    split("gw1-lan0 gw1-wan0 gw2-lan0 gw1-" tun " gw2-" tun, f, " ")
    for (k = 1; k <= 5; k++) { n[k] = 0; file = dir "/" f[k] ".txt"
      while ((getline line < file) > 0) { split(line, a, " "); t[k, ++n[k]] = a[1] } }
    m = n[1]; for (k = 2; k <= 5; k++) if (n[k] < m) m = n[k]; m = int(m / 2)
    for (i = 0; i < m; i++) {
      q = 2*i+1; r = 2*i+2
      printf "1 %.1f\n", (t[4, q] - t[1, q]) * 1e6
      printf "2 %.1f\n", (t[2, q] - t[4, q]) * 1e6
      printf "3 %.1f\n", (t[5, q] - t[2, q]) * 1e6
      printf "4 %.1f\n", (t[3, q] - t[5, q]) * 1e6
      printf "5 %.1f\n", (t[5, r] - t[3, r]) * 1e6
      printf "6 %.1f\n", (t[2, r] - t[5, r]) * 1e6
      printf "7 %.1f\n", (t[4, r] - t[2, r]) * 1e6
      printf "8 %.1f\n", (t[1, r] - t[4, r]) * 1e6
    }
  }' >"$T/hops"
  name=("" "gw1 kernel: request LAN in -> TUN" "gw1 process: request TUN -> WAN out"
    "gw2: request WAN in -> TUN (kernel input, process)" "gw2 kernel: request TUN -> LAN out"
    "gw2 kernel: reply LAN in -> TUN" "gw2 process: reply TUN -> WAN out"
    "gw1: reply WAN in -> TUN (kernel input, process)" "gw1 kernel: reply TUN -> LAN out")
  HOPS=8
else
  awk -v dir="$T" 'BEGIN {
    split("gw1-lan0 gw1-wan0 gw2-lan0", f, " ")
    for (k = 1; k <= 3; k++) { n[k] = 0; file = dir "/" f[k] ".txt"
      while ((getline line < file) > 0) { split(line, a, " "); t[k, ++n[k]] = a[1] } }
    m = n[1]; if (n[2] < m) m = n[2]; if (n[3] < m) m = n[3]; m = int(m / 2)
    # gw1 lan0: request in, reply out; gw1 wan0: request out, reply in (the
    # same frames gw2 sees on its end of the veth); gw2 lan0: request out, reply in
    for (i = 0; i < m; i++) {
      printf "1 %.1f\n", (t[2, 2*i+1] - t[1, 2*i+1]) * 1e6
      printf "2 %.1f\n", (t[3, 2*i+1] - t[2, 2*i+1]) * 1e6
      printf "3 %.1f\n", (t[2, 2*i+2] - t[3, 2*i+2]) * 1e6
      printf "4 %.1f\n", (t[1, 2*i+2] - t[2, 2*i+2]) * 1e6
    }
  }' >"$T/hops"
  name=("" "gw1 seals the request (LAN in -> WAN out)" "gw2 opens the request (WAN in -> LAN out)"
    "gw2 seals the reply (LAN in -> WAN out)" "gw1 opens the reply (WAN in -> LAN out)")
  [ -n "$NULL" ] && name=("" "gw1 relays the request (LAN in -> WAN out)" "gw2 relays the request (WAN in -> LAN out)"
    "gw2 relays the reply (LAN in -> WAN out)" "gw1 relays the reply (WAN in -> LAN out)")
  HOPS=4
fi
echo "| hop | median (us) | p10 | p90 |"
echo "|---|--:|--:|--:|"
for k in $(seq 1 $HOPS); do
  awk -v k=$k '$1 == k {print $2}' "$T/hops" | sort -g |
    awk -v name="${name[$k]}" '{v[NR] = $1} END {
      if (NR == 0) {printf "| %s | n/a | n/a | n/a |\n", name; exit}
      printf "| %s | %.0f | %.0f | %.0f |\n", name, v[int((NR+1)/2)], v[int(NR/10)+1], v[int(9*NR/10)] }'
done
