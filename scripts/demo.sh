#!/usr/bin/env bash
# make demo: two namespaces with a gosec gateway each, a tunnel between
# them, a ping across it, `gosec statusall` from one side, then teardown.
#
#   lan1 10.1.0.2 -- gw1 10.1.0.1 | 192.0.2.1 ==== 192.0.2.2 | 10.2.0.1 gw2 -- lan2 10.2.0.2
set -euo pipefail
cd "$(dirname "$0")/.."
P=${DEMO_PREFIX:-gdemo-}
BIN=${GOSEC:-bin/gosec}
RUN=$(mktemp -d /tmp/gosec-demo.XXXXXX)
cleanup() {
  for gw in gw1 gw2; do
    ip netns exec "${P}$gw" "$BIN" stop --socket "$RUN/$gw.ctl" >/dev/null 2>&1 || true
  done
  scripts/topo.sh down "$P"
  rm -rf "$RUN"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# ipsec.secrets, and ipsec.conf as it holds manual keys (demo-manual), must
# be readable by root only; git does not keep modes.
install -m 600 demo/ipsec.conf "$RUN/ipsec.conf"
install -m 600 demo/ipsec.secrets "$RUN/ipsec.secrets"

step "topology: ${P}lan1 - ${P}gw1 ==== ${P}gw2 - ${P}lan2"
scripts/topo.sh up "$P"

for gw in gw1 gw2; do
  step "gosec start in ${P}$gw"
  ip netns exec "${P}$gw" "$BIN" start --config "$RUN/ipsec.conf" --socket "$RUN/$gw.ctl" --log "$RUN/$gw.log"
done

step "gosec up demo (${P}gw1 initiates IKEv1 Main Mode + Quick Mode with ${P}gw2)"
ip netns exec "${P}gw1" "$BIN" up demo --socket "$RUN/gw1.ctl"

step "ping 10.2.0.2 from ${P}lan1, through the tunnel"
ip netns exec "${P}lan1" ping -c 4 -i 0.2 10.2.0.2

step "what the wire carries (tcpdump on ${P}gw2's wan0 during one ping)"
ip netns exec "${P}gw2" timeout 3 tcpdump -n -c 2 -i wan0 esp 2>/dev/null &
sleep 0.5
ip netns exec "${P}lan1" ping -c 1 10.2.0.2 >/dev/null
wait || true

step "gosec statusall (${P}gw1)"
ip netns exec "${P}gw1" "$BIN" statusall --socket "$RUN/gw1.ctl"

step "teardown"
