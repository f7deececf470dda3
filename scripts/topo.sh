#!/usr/bin/env bash
# Test topologies for gosec, in network namespaces that this script creates
# and removes itself. Only addresses inside these namespaces are used.
#
#   scripts/topo.sh up   [PREFIX]   site-to-site:
#     PREFIXlan1 10.1.0.2 --eth0|lan0-- PREFIXgw1 10.1.0.1  192.0.2.1 --wan0|wan0-- 192.0.2.2 PREFIXgw2 10.2.0.1 --lan0|eth0-- PREFIXlan2 10.2.0.2
#   scripts/topo.sh down [PREFIX]   removes them and ends every process inside
#   scripts/topo.sh up PREFIX wan-default
#     the same, and each gateway also has a default route out of its WAN
#     link (via the other gateway's WAN address), as a real gateway has: a
#     packet for the remote LAN that gosec does not protect then leaves on
#     the wire in the clear (and is forwarded), so a leak is visible.
#
# PREFIX defaults to "gs-". Gateways forward; LAN hosts route via their
# gateway only (and gateways have no default route unless wan-default is
# given); IPv6 is off.
set -euo pipefail
cmd=${1:-}
P=${2:-gs-}
opt=${3:-}
nss=("${P}lan1" "${P}gw1" "${P}gw2" "${P}lan2")

ns_exec() { ip netns exec "$1" "${@:2}"; }

down() {
  for ns in "${nss[@]}"; do
    if ip netns list | grep -qw "^$ns"; then
      pids=$(ip netns pids "$ns" 2>/dev/null || true)
      [ -n "$pids" ] && kill $pids 2>/dev/null || true
    fi
  done
  sleep 0.2
  for ns in "${nss[@]}"; do
    if ip netns list | grep -qw "^$ns"; then
      pids=$(ip netns pids "$ns" 2>/dev/null || true)
      [ -n "$pids" ] && kill -9 $pids 2>/dev/null || true
      ip netns del "$ns" 2>/dev/null || true
    fi
  done
}

up() {
  down
  for ns in "${nss[@]}"; do
    ip netns add "$ns"
    ns_exec "$ns" ip link set lo up
    ns_exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
  done
  # veth pairs: lan1:eth0 - gw1:lan0, gw1:wan0 - gw2:wan0, gw2:lan0 - lan2:eth0
  ip link add eth0 netns "${P}lan1" type veth peer name lan0 netns "${P}gw1"
  ip link add wan0 netns "${P}gw1" type veth peer name wan0 netns "${P}gw2"
  ip link add lan0 netns "${P}gw2" type veth peer name eth0 netns "${P}lan2"

  ns_exec "${P}lan1" ip addr add 10.1.0.2/24 dev eth0
  ns_exec "${P}gw1"  ip addr add 10.1.0.1/24 dev lan0
  ns_exec "${P}gw1"  ip addr add 192.0.2.1/24 dev wan0
  ns_exec "${P}gw2"  ip addr add 192.0.2.2/24 dev wan0
  ns_exec "${P}gw2"  ip addr add 10.2.0.1/24 dev lan0
  ns_exec "${P}lan2" ip addr add 10.2.0.2/24 dev eth0
  for ns in "${nss[@]}"; do
    for dev in $(ns_exec "$ns" ls /sys/class/net); do ns_exec "$ns" ip link set "$dev" up; done
  done
  ns_exec "${P}lan1" ip route add default via 10.1.0.1
  ns_exec "${P}lan2" ip route add default via 10.2.0.1
  for gw in "${P}gw1" "${P}gw2"; do
    ns_exec "$gw" sysctl -qw net.ipv4.ip_forward=1
  done
  if [ "$opt" = wan-default ]; then
    ns_exec "${P}gw1" ip route add default via 192.0.2.2 dev wan0
    ns_exec "${P}gw2" ip route add default via 192.0.2.1 dev wan0
  fi
}

case "$cmd" in
  up)
    case "$opt" in
      ""|wan-default) ;;
      *) echo "unknown option $opt (want wan-default)" >&2; exit 2 ;;
    esac
    up ;;
  down) down ;;
  *) echo "usage: $0 up [PREFIX [wan-default]] | down [PREFIX]" >&2; exit 2 ;;
esac
