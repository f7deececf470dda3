#!/usr/bin/env bash
# bench-ike.sh - can hostile IKE peers stall gosec? (make bench-ike, as root)
#
# Topology (test/interop/topo.sh, namespaces gsf-*): gosec on left
# 192.0.2.1, strongSwan on right 192.0.2.2, the flooders in right's
# namespace (192.0.2.3 reachable; spoofed 198.18.0.0/16, routed from left
# to right, where the replies die: nothing leaves the namespaces).
#
# An established tunnel "tun" (gosec initiates; ESP lifetime 16 s, rekey
# margin 6 s: gosec rekeys every 10 s; DPD every 2 s both ways, dead
# after 10 s, dpdaction=clear) runs through two floods of FLOOD_SECS
# (default 20) each:
#   mm1  Main Mode first messages at the transform cap (512 transforms,
#        the acceptable one last, 18 KB in fragments) with fresh cookies
#        from random spoofed sources, as fast as the flooder sends;
#   mm3  first and third messages from the reachable 192.0.2.3: every MM2
#        answered with a 3072-bit KE (Diffie-Hellman work for gosec).
# During each, after 3 s, strongSwan negotiates a fresh conn (its own
# Main Mode) and the time is taken; gosec statusall is timed every
# second; gosec's RSS is sampled every 0.5 s. Printed per flood: gosec's
# CPU, peak RSS, the strongSwan connect time, the slowest statusall, log
# growth, tun's rekeys (started/completed/failed) and the most any of
# them started late, and dead-peer events.
# Goals: RSS < 64 MB, connect < 5 s, statusall < 1 s, bounded logs, no
# missed rekey or DPD answer.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECS=${FLOOD_SECS:-20}
export NS_PREFIX=gsf-
L=${NS_PREFIX}left R=${NS_PREFIX}right
[ "$(id -u)" = 0 ] || { echo "bench-ike.sh: run as root" >&2; exit 1; }
DIR=$(mktemp -d /tmp/gsf-bench-ike.XXXXXX)
go build -o "$DIR/gosec" ./cmd/gosec
PSK=gsf-bench-psk

gs() { ip netns exec "$L" "$DIR/gosec" "$@" --socket "$DIR/gosec.ctl"; }
ss() { test/interop/strongswan-peer.sh "$R" "$DIR/right" "$@"; }
cleanup() {
	[ -n "${FLOODPID:-}" ] && kill "$FLOODPID" 2>/dev/null || true
	[ -n "${SAMPLERPID:-}" ] && kill "$SAMPLERPID" 2>/dev/null || true
	gs stop >/dev/null 2>&1 || true
	ss stop >/dev/null 2>&1 || true
	test/interop/topo.sh down >/dev/null 2>&1 || true
}
trap cleanup EXIT

test/interop/topo.sh up >/dev/null
ip -n "$R" addr add 192.0.2.3/24 dev wan0
ip -n "$L" route add 198.18.0.0/16 via 192.0.2.2
# the gateways' own addresses in the "fresh" conn's subnets (route sources)
ip -n "$L" addr add 10.1.1.1/32 dev lo
ip -n "$R" addr add 10.2.1.1/32 dev lo

defaults="config setup
	uniqueids=no

conn %default
	keyexchange=ikev1
	authby=psk
	ikelifetime=1h
	keyingtries=1
	type=tunnel
"
# gosec (left)
cat >"$DIR/ipsec.conf" <<EOF
$defaults
conn tun
	left=192.0.2.1
	right=192.0.2.2
	leftsubnet=10.1.0.0/24
	rightsubnet=10.2.0.0/24
	ike=aes128-sha256-modp3072!
	esp=aes128-sha256!
	lifetime=16s
	rekeymargin=6s
	rekeyfuzz=0%
	dpddelay=2s
	dpdtimeout=10s
	dpdaction=clear
	auto=add

conn fresh
	left=192.0.2.1
	right=192.0.2.2
	leftsubnet=10.1.1.0/24
	rightsubnet=10.2.1.0/24
	ike=aes256-sha256-modp2048!
	esp=aes256-sha256!
	auto=add

conn flood
	left=192.0.2.1
	right=192.0.2.3
	leftsubnet=10.1.2.0/24
	rightsubnet=10.3.0.0/24
	ike=aes128-sha256-modp3072!
	esp=aes128-sha256!
	auto=add

conn roadwarrior
	left=192.0.2.1
	right=%any
	leftsubnet=10.1.3.0/24
	rightsubnet=10.4.0.0/16
	ike=aes128-sha1-modp2048!
	esp=aes128-sha1!
	auto=add
EOF
cat >"$DIR/ipsec.secrets" <<EOF
192.0.2.1 192.0.2.2 : PSK "$PSK"
192.0.2.1 192.0.2.3 : PSK "$PSK"
192.0.2.1 %any : PSK "$PSK"
EOF
chmod 600 "$DIR/ipsec.secrets"
# strongSwan (right)
mkdir -p "$DIR/right"
cat >"$DIR/right/ipsec.conf" <<EOF
$defaults
conn tun
	left=192.0.2.2
	right=192.0.2.1
	leftsubnet=10.2.0.0/24
	rightsubnet=10.1.0.0/24
	ike=aes128-sha256-modp3072!
	esp=aes128-sha256!
	lifetime=1h
	dpddelay=2s
	dpdtimeout=10s
	dpdaction=clear
	auto=add

conn fresh
	left=192.0.2.2
	right=192.0.2.1
	leftsubnet=10.2.1.0/24
	rightsubnet=10.1.1.0/24
	ike=aes256-sha256-modp2048!
	esp=aes256-sha256!
	auto=add
EOF
echo "192.0.2.2 192.0.2.1 : PSK \"$PSK\"" >"$DIR/right/ipsec.secrets"
chmod 600 "$DIR/right/ipsec.secrets"

ss start >/dev/null
ip netns exec "$L" "$DIR/gosec" start --config "$DIR/ipsec.conf" --socket "$DIR/gosec.ctl" --log "$DIR/gosec.log" >/dev/null
gs up tun >/dev/null
PID=$(gs statusall --json | grep -o '"pid": *[0-9]*' | grep -o '[0-9]*$')
HZ=$(getconf CLK_TCK)
echo "gosec with tun up, before the floods: RSS $(( $(awk '/VmRSS/{print $2}' "/proc/$PID/status") / 1024 )) MB"
NOTES=""

ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }

# sampler FILE: peak RSS (kB) and slowest statusall (ms) until killed.
sampler() {
	local rss=0 st=0 n=0 r t0 ms
	while :; do
		r=$(awk '/VmRSS/{print $2}' "/proc/$PID/status" 2>/dev/null || echo 0)
		[ "$r" -gt "$rss" ] && rss=$r
		if [ $((n % 2)) = 0 ]; then
			t0=$(date +%s%N)
			if timeout 10 ip netns exec "$L" "$DIR/gosec" statusall --socket "$DIR/gosec.ctl" >/dev/null 2>&1; then
				ms=$(ms_since "$t0")
			else
				ms=10000
			fi
			[ "$ms" -gt "$st" ] && st=$ms
		fi
		# write then rename: a kill between truncate and write must not
		# leave the reader an empty file
		echo "$rss $st" >"$1.tmp" && mv -f "$1.tmp" "$1"
		n=$((n + 1))
		sleep 0.5
	done
}

count() { # count PATTERN in the log since offset $LOG0
	tail -c +"$((LOG0 + 1))" "$DIR/gosec.log" | grep -c "$1" || true
}

# rekey_late: how late (ms, the most) tun's rekeys logged after offset
# $LOG0 started, against the 10 s (lifetime - rekeymargin, no fuzz) after
# the SA before them was established.
rekey_late() {
	awk -v off="$LOG0" -v every=10000 '
	function ms(f,  a) { split(substr(f, 17, 12), a, ":"); return (a[1] * 3600 + a[2] * 60 + a[3]) * 1000 }
	{ pos += length($0) + 1 }
	/IPsec SA established/ && /conn=tun / { est = ms($1) }
	/rekeying IPsec SA/ && /conn=tun / && est != "" && pos > off {
		l = ms($1) - est - every
		if (l < -43200000) l += 86400000 # midnight
		if (l > max) max = l
	}
	END { printf "%d", max }' "$DIR/gosec.log"
}

printf '%-5s %8s %6s %9s %10s %12s %9s %-24s %10s %s\n' flood sent cpu% peak-rss connect statusall-max log+ "tun rekeys start/ok/fail" "rekey-late" "dead-peer"
phase() { # phase NAME ARGS...: one flood, measured
	local name=$1
	shift
	LOG0=$(stat -c %s "$DIR/gosec.log")
	local ticks0 t0 sent connect st rss log rk ok fail dead
	ticks0=$(awk '{print $14 + $15}' "/proc/$PID/stat")
	t0=$(date +%s%N)
	ip netns exec "$R" /usr/bin/python3 scripts/bench-ike-flood.py "$@" >"$DIR/flood.out" 2>&1 &
	FLOODPID=$!
	sampler "$DIR/sample" &
	SAMPLERPID=$!
	sleep 3
	local c0
	c0=$(date +%s%N)
	if ss ipsec up fresh >"$DIR/connect-$name.out" 2>&1 && grep -q "established successfully" "$DIR/connect-$name.out"; then
		connect="$(awk "BEGIN{printf \"%.2f s\", $(ms_since "$c0")/1000}")"
	else
		connect="FAILED"
		NOTES="$NOTES
  $name: strongSwan's ipsec up fresh: $(tail -4 "$DIR/connect-$name.out" | tr '\n' ' ')"
	fi
	ss ipsec down fresh >/dev/null 2>&1 || true
	wait "$FLOODPID" || true
	FLOODPID=
	kill "$SAMPLERPID" 2>/dev/null || true
	wait "$SAMPLERPID" 2>/dev/null || true
	SAMPLERPID=
	local wall_ms cpu
	wall_ms=$(ms_since "$t0")
	cpu=$(awk -v a="$ticks0" -v b="$(awk '{print $14 + $15}' "/proc/$PID/stat")" -v hz="$HZ" -v ms="$wall_ms" 'BEGIN{printf "%.0f", (b - a) / hz / (ms / 1000) * 100}')
	rss=0 st=0
	read -r rss st <"$DIR/sample" || true
	sent=$(grep -o '[0-9]* messages' "$DIR/flood.out" | grep -o '[0-9]*' || echo "?")
	log=$(( $(stat -c %s "$DIR/gosec.log") - LOG0 ))
	rk=$(count 'rekeying IPsec SA.*conn=tun')
	ok=$(count 'IPsec SA established.*conn=tun')
	fail=$(count 'rekey failed.*conn=tun')
	dead=$(count 'dead peer detected')
	printf '%-5s %8s %5s%% %6d MB %10s %9d ms %6d kB %-24s %7d ms %s\n' "$name" "$sent" "$cpu" $((rss / 1024)) "$connect" "$st" $((log / 1024)) "$rk/$ok/$fail" "$(rekey_late)" "$dead"
}

phase mm1 mm1 192.0.2.1 "$SECS" 198.18.0.0
phase mm3 mm3 192.0.2.1 "$SECS" 192.0.2.3
echo
echo "after both floods:"
echo "  gosec counters: $(gs statusall --json | tr -d ' \n' | grep -o '"ike_counters":{[^}]*}' | head -c 600)"
echo "  strongSwan still has tun: $(ss ipsec statusall 2>/dev/null | grep -c 'tun{[0-9]*}:  INSTALLED' || true) CHILD_SA(s) installed"
[ -n "$NOTES" ] && echo "$NOTES"
echo "  gosec log: $(($(stat -c %s "$DIR/gosec.log") / 1024)) kB in all ($DIR/gosec.log)"
