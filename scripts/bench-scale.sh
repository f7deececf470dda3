#!/usr/bin/env bash
# bench-scale.sh - N IKE-negotiated tunnels held by one gosec daemon
# (make bench-scale, as root).
#
#   scripts/bench-scale.sh [-n N] [-s SAMPLE] [-t TIMEOUT] [-B] [-p PREFIX] [-P]
#     -n N        conns (default 10000, at most 16384)
#     -s SAMPLE   tunnels that carry pings (default 20)
#     -t TIMEOUT  seconds to wait for all N tunnels (default 480)
#     -B          skip the Go lookup benchmarks
#     -p PREFIX   namespace prefix (default gsc-)
#     -P          CPU profiles of both daemons (gosec start --cpuprofile),
#                 kept with the logs in the run's directory
# GOSEC_START_ARGS are more `gosec start` arguments for both daemons (an
# A/B of a start option, e.g. --tun-queues=1).
#
# Topology: scripts/topo.sh with prefix gsc- and wan-default (a packet the
# gateways do not protect leaves on the WAN in the clear, so a leak would
# be seen). N conns between gw1 (192.0.2.1) and gw2 (192.0.2.2), conn i
# with a subnet pair of its own:
#   leftsubnet=10.(64+i/256).(i%256).0/30  rightsubnet=10.(128+i/256).(i%256).0/30
# authby=secret, Main Mode aes128-sha256-modp2048, Quick Mode aes128gcm16
# without PFS. gw2 loads them as auto=add (responder); gw1 starts with
# none and then reloads a configuration with all N as auto=start, so the
# bring-up starts at one instant and gw1's memory before it is measured.
#
# Printed: config load time, time from the reload to all N tunnels
# installed on both gateways (polling `gosec status --json`), each
# daemon's resident memory before and after (and per tunnel), the ISAKMP
# SAs used, the IKE counters that tell of trouble (queue-full,
# retransmits, failures), `gosec status` / `statusall` time and size at
# that scale, pings through SAMPLE random tunnels from addresses inside
# the LAN namespaces with a capture on gw1's WAN (ESP only, no
# cleartext), `gosec stop` time, and the SPD/SAD lookup benchmarks with
# 10,000 policies/SAs.
set -euo pipefail
cd "$(dirname "$0")/.."
N=10000 SAMPLE=20 TIMEOUT=480 BENCH=1 P=gsc- PROF=
while getopts n:s:t:Bp:P o; do
	case $o in
	n) N=$OPTARG ;;
	s) SAMPLE=$OPTARG ;;
	t) TIMEOUT=$OPTARG ;;
	B) BENCH= ;;
	p) P=$OPTARG ;;
	P) PROF=1 ;;
	*) sed -n 2,30p "$0" >&2; exit 2 ;;
	esac
done
[ "$(id -u)" = 0 ] || { echo "bench-scale.sh: run as root" >&2; exit 1; }
[ "$N" -ge 1 ] && [ "$N" -le 16384 ] || { echo "bench-scale.sh: -n between 1 and 16384" >&2; exit 2; }
[ "$SAMPLE" -le "$N" ] || SAMPLE=$N
for t in jq tcpdump; do command -v $t >/dev/null || { echo "bench-scale.sh: needs $t (scripts/deps.sh bench)" >&2; exit 1; }; done

GW1=${P}gw1 GW2=${P}gw2 LAN1=${P}lan1 LAN2=${P}lan2
DIR=$(mktemp -d /tmp/gsc-scale.XXXXXX)
CGO_ENABLED=0 go build -o "$DIR/gosec" ./cmd/gosec

g() { local gw=$1; shift; ip netns exec "${P}$gw" "$DIR/gosec" "$@" --socket "$DIR/$gw.ctl"; }
cleanup() {
	[ -n "${CAPPID:-}" ] && kill "$CAPPID" 2>/dev/null || true
	g gw1 stop >/dev/null 2>&1 || true
	g gw2 stop >/dev/null 2>&1 || true
	[ -n "$PROF" ] && echo "CPU profiles and logs kept in $DIR (go tool pprof $DIR/gosec $DIR/gw1.prof)"
	scripts/topo.sh down "$P" >/dev/null 2>&1 || true
}
trap cleanup EXIT

ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
secs() { awk -v ms="$1" 'BEGIN{printf "%.1f s", ms / 1000}'; }
rss_kb() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }
pid_of() { g "$1" status --json | jq -r .pid; }
installed() { g "$1" status --json | jq '[.conns[] | select(.state == "installed")] | length'; }
mb() { awk -v k="$1" 'BEGIN{printf "%.1f MB", k / 1024}'; }

scripts/topo.sh up "$P" wan-default >/dev/null

# conf SIDE-AUTO: N conns (left is gw1 in both files; each daemon finds its side by address).
conf() {
	cat <<EOF
conn %default
	keyexchange=ikev1
	authby=secret
	left=192.0.2.1
	right=192.0.2.2
	type=tunnel
	ike=aes128-sha256-modp2048!
	esp=aes128gcm16!
	pfs=no
	ikelifetime=8h
	lifetime=4h
	keyingtries=%forever
	auto=$1

EOF
	awk -v n="$N" 'BEGIN{for (i = 0; i < n; i++) printf "conn s%d\n\tleftsubnet=10.%d.%d.0/30\n\trightsubnet=10.%d.%d.0/30\n\n", i, 64 + int(i / 256), i % 256, 128 + int(i / 256), i % 256}'
}
echo '192.0.2.1 192.0.2.2 : PSK "gsc-scale-bench-psk"' >"$DIR/ipsec.secrets"
chmod 600 "$DIR/ipsec.secrets"
conf add >"$DIR/gw2.conf"
cp "$DIR/ipsec.secrets" "$DIR/gw2.secrets"
# gw1 starts with one conn that is never brought up.
cat >"$DIR/gw1.conf" <<EOF
conn idle
	keyexchange=ikev1
	authby=secret
	left=192.0.2.1
	right=192.0.2.2
	leftsubnet=10.63.255.0/30
	rightsubnet=10.127.255.0/30
	auto=add
EOF
cp "$DIR/ipsec.secrets" "$DIR/gw1.secrets"

echo "bench-scale: $N conns, gosec $(git describe --always --dirty 2>/dev/null || echo '?'), $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'))"
t0=$(date +%s%N)
prof() { [ -n "$PROF" ] && echo "--cpuprofile $DIR/$1.prof"; true; }
# shellcheck disable=SC2046
g gw2 start ${GOSEC_START_ARGS:-} --config "$DIR/gw2.conf" --secrets "$DIR/gw2.secrets" --log "$DIR/gw2.log" $(prof gw2) >/dev/null
echo "gw2: gosec start with $N conns (auto=add): $(secs "$(ms_since "$t0")")"
# shellcheck disable=SC2046
g gw1 start ${GOSEC_START_ARGS:-} --config "$DIR/gw1.conf" --secrets "$DIR/gw1.secrets" --log "$DIR/gw1.log" $(prof gw1) >/dev/null
PID1=$(pid_of gw1) PID2=$(pid_of gw2)
sleep 1
R1a=$(rss_kb "$PID1") R2a=$(rss_kb "$PID2")
echo "RSS before: gw1 (1 conn) $(mb "$R1a"), gw2 ($N conns loaded, none up) $(mb "$R2a")"

conf start >"$DIR/gw1.conf"
t0=$(date +%s%N)
g gw1 reload >/dev/null
echo "gw1: gosec reload to $N conns (auto=start): $(secs "$(ms_since "$t0")")"
last=-1 n1=0 n2=0 up_ms=
while :; do
	el=$(ms_since "$t0")
	n1=$(installed gw1) n2=$(installed gw2)
	if [ "$n1" -ge "$N" ] && [ "$n2" -ge "$N" ]; then
		up_ms=$el
		break
	fi
	if [ $((el / 10000)) != "$last" ]; then
		last=$((el / 10000))
		echo "  $(secs "$el"): installed gw1 $n1, gw2 $n2; RSS gw1 $(mb "$(rss_kb "$PID1")")"
	fi
	[ "$el" -ge $((TIMEOUT * 1000)) ] && break
	sleep 1
done
if [ -n "$up_ms" ]; then
	echo "all $N tunnels installed on both gateways $(secs "$up_ms") after the reload ($(awk -v n="$N" -v ms="$up_ms" 'BEGIN{printf "%.0f", n / (ms / 1000)}') tunnels/s)"
else
	echo "NOT all up after ${TIMEOUT} s: gw1 $n1, gw2 $n2 of $N"
fi
for gw in gw1 gw2; do
	g $gw statusall --json >"$DIR/$gw.statusall.json"
	echo "$gw: $(jq '.isakmp | length' "$DIR/$gw.statusall.json") ISAKMP SA(s); IKE counters: $(jq -c '.ike_counters | {established, "children-installed", sent, received, retransmits, "queue-full", "crypto-busy", "half-open-evicted", failed, duplicates}' "$DIR/$gw.statusall.json")"
done
sleep 1
R1b=$(rss_kb "$PID1") R2b=$(rss_kb "$PID2")
echo "RSS after: gw1 $(mb "$R1b") (+$(mb $((R1b - R1a)))), gw2 $(mb "$R2b") (+$(mb $((R2b - R2a))))"
awk -v a="$R1a" -v b="$R1b" -v c="$R2a" -v d="$R2b" -v n="$N" 'BEGIN{printf "RSS per tunnel: gw1 %.1f kB (conn config included), gw2 %.1f kB (tunnel only); gw2 config %.1f kB per conn loaded\n", (b - a) / n, (d - c) / n, c / n}'

for cmd in status "status --json" statusall "statusall --json"; do
	t=$(date +%s%N)
	# shellcheck disable=SC2086
	sz=$(g gw1 $cmd | wc -c)
	echo "gw1: gosec $cmd: $(ms_since "$t") ms, $((sz / 1024)) kB"
done

# Traffic through SAMPLE random tunnels, from addresses inside the LANs.
ip -n "$GW1" route add 10.64.0.0/10 via 10.1.0.2
ip -n "$GW2" route add 10.128.0.0/10 via 10.2.0.2
mapfile -t picks < <(shuf -i 0-$((N - 1)) -n "$SAMPLE")
for i in "${picks[@]}"; do
	ip -n "$LAN1" addr add "10.$((64 + i / 256)).$((i % 256)).1/32" dev eth0
	ip -n "$LAN2" addr add "10.$((128 + i / 256)).$((i % 256)).1/32" dev eth0
done
ip netns exec "$GW1" tcpdump -i wan0 -n -U -w "$DIR/wan.pcap" 'net 10.0.0.0/8 or esp' >/dev/null 2>&1 &
CAPPID=$!
sleep 1
ok=0 bad=""
for i in "${picks[@]}"; do
	src=10.$((64 + i / 256)).$((i % 256)).1 dst=10.$((128 + i / 256)).$((i % 256)).1
	if ip netns exec "$LAN1" ping -q -c 3 -i 0.2 -W 2 -I "$src" "$dst" >/dev/null 2>&1; then
		ok=$((ok + 1))
	else
		bad="$bad s$i"
	fi
done
sleep 1
kill "$CAPPID" 2>/dev/null || true
wait "$CAPPID" 2>/dev/null || true
CAPPID=
esp=$(tcpdump -r "$DIR/wan.pcap" -n esp 2>/dev/null | wc -l)
clear=$(tcpdump -r "$DIR/wan.pcap" -n 'not esp and net 10.0.0.0/8' 2>/dev/null | wc -l)
echo "traffic: $ok of $SAMPLE sampled tunnels answer 3 pings${bad:+ (failed:$bad)}; gw1 WAN capture: $esp ESP packets, $clear cleartext packets of the LANs"

t=$(date +%s%N)
g gw1 stop >/dev/null
echo "gw1: gosec stop with $N tunnels: $(ms_since "$t") ms"

if [ -n "$BENCH" ]; then
	echo "lookup cost at 10,000 (Go benchmarks, this machine):"
	# spd: outbound lookup (index/10000: the trie; linear/10000: a scan of
	# every policy, for comparison), a miss, the inbound check after
	# decapsulation; sad: inbound by SPI (serial, parallel), outbound by reqid.
	go test -run '^$' -bench 'Lookup|CheckInbound' -benchtime 20000x ./spd/ ./sad/ 2>&1 | grep -E '^(Benchmark|FAIL)' | grep -Ev '/(10|1000)-' | sed 's/^/  /'
fi
[ -n "$up_ms" ] && [ "$ok" = "$SAMPLE" ] && [ "$clear" = 0 ] && [ "$esp" -gt 0 ]
