# Sourced by scripts/bench-e2e.sh and scripts/bench-pinghops.sh (from the
# repository's root): the null relay (internal/tools/nulltun), the control
# for issue 12's ping goal, in a scripts/topo.sh topology.
#
# null_relay_up PREFIX DIR builds nulltun into DIR and starts it in
# PREFIXgw1 and PREFIXgw2 (UDP port 4790 between the WAN addresses; its
# errors go to DIR/nullN.err, the counts it prints when it ends to
# DIR/nullN.json), waits until its TUN is up and routes the other LAN
# into it. It sets NULL_RELAY_PIDS to gw1's and gw2's relay, and returns
# non-zero, with the relay's errors on stderr, if one did not come up.
# `scripts/topo.sh down PREFIX` ends them.
null_relay_up() {
  local p=$1 dir=$2 i
  CGO_ENABLED=0 go build -o "$dir/nulltun" ./internal/tools/nulltun || return 1
  NULL_RELAY_PIDS=()
  for i in 1 2; do
    ip netns exec "${p}gw$i" "$dir/nulltun" -tun null0 -local "192.0.2.$i:4790" -peer "192.0.2.$((3 - i)):4790" \
      >"$dir/null$i.json" 2>"$dir/null$i.err" &
    NULL_RELAY_PIDS+=($!)
  done
  for i in 1 2; do
    for _ in $(seq 50); do
      [ -n "$(ip -n "${p}gw$i" link show null0 up 2>/dev/null)" ] && break
      sleep 0.1
    done
    [ -n "$(ip -n "${p}gw$i" link show null0 up 2>/dev/null)" ] ||
      { echo "nulltun in ${p}gw$i did not come up:" >&2; cat "$dir/null$i.err" >&2; return 1; }
  done
  ip -n "${p}gw1" route add 10.2.0.0/24 dev null0
  ip -n "${p}gw2" route add 10.1.0.0/24 dev null0
}
