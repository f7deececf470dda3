#!/bin/sh
# Boots systemd in a container (systemd-nspawn) whose root is a
# copy-on-write overlay of this Debian 12 system (discarded afterwards,
# in a private mount namespace), installs the gosec package there and
# drives the real unit: systemctl start (Type=notify: active only after
# READY=1), the watchdog's keep-alives, systemctl reload, the hardening
# in effect on the running process, systemctl stop.
# Usage (as root): deb-in-nspawn.sh DEB WORKDIR
# Prints "STEP name" before each step; exits 3 with a "NOBOOT reason"
# line when systemd cannot be booted in a container here, non-zero at the
# first other failure. GSP_FAKE_NOBOOT fakes the first (see STEP boot).
set -eu
deb=$1 work=$2
mkdir -p "$work/upper" "$work/work" "$work/root"
exec unshare --mount --propagation private sh -eu -c '
deb=$1 work=$2 root=$2/root
mount -t overlay overlay -o "lowerdir=/,upperdir=$work/upper,workdir=$work/work" "$root"
cp "$deb" "$root/root/gosec.deb"
# A machine id of its own (the host'"'"'s would make journald and nspawn
# treat the container as the host).
uuid=$(od -An -N16 -tx1 /dev/urandom | tr -d " \n")
echo "$uuid" > "$root/etc/machine-id"

echo "STEP boot"
# GSP_FAKE_NOBOOT=FILE (tests of the retry): no boot when FILE is not
# there yet; FILE is made, so the next run boots (an uncreatable FILE:
# never).
if [ -n "${GSP_FAKE_NOBOOT:-}" ] && [ ! -e "$GSP_FAKE_NOBOOT" ]; then
	touch "$GSP_FAKE_NOBOOT" 2>/dev/null || true
	echo "NOBOOT faked (GSP_FAKE_NOBOOT)"
	exit 3
fi
# basic.target: no host services (strongSwan on UDP 500, databases) in
# the container; its own network namespace with only lo.
systemd-nspawn --directory="$root" --machine="gsp-$(echo "$uuid" | cut -c1-8)" --uuid="$uuid" \
	--register=no --keep-unit --link-journal=no --private-network --boot --console=pipe --capability=CAP_BPF --system-call-filter=bpf \
	systemd.unit=basic.target >"$work/nspawn.log" 2>&1 </dev/null &
nspawn=$!
leader=
state=
for i in $(seq 120); do
	if ! kill -0 $nspawn 2>/dev/null; then break; fi
	# The container'"'"'s init: the child of nspawn that is PID 1 in a PID
	# namespace of its own. Looked for again until systemd answers: while
	# nspawn sets the container up its first child is the "outer child"
	# (comm systemd-nspawn, in the host'"'"'s PID namespace), which exits
	# once it has started init; a leader taken from that moment never
	# answered, and the boot was reported as stalled (state "", twice in
	# a row on a fresh machine).
	leader=
	for c in $(cat /proc/$nspawn/task/*/children 2>/dev/null); do
		if [ "$(awk "/^NSpid:/ {print \$NF}" /proc/$c/status 2>/dev/null)" = 1 ]; then
			leader=$c
			break
		fi
	done
	if [ -n "$leader" ]; then
		state=$(nsenter --target "$leader" --all systemctl is-system-running 2>/dev/null || true)
		case "$state" in running|degraded) break ;; esac
	fi
	sleep 0.5
done
case "$state" in
running|degraded) echo "systemd in the container: $state (leader pid $leader)" ;;
*)
	echo "NOBOOT systemd-nspawn did not boot systemd to basic.target within 60 s (state \"$state\")"
	kill $nspawn 2>/dev/null || true
	wait $nspawn 2>/dev/null || true
	cat "$work/nspawn.log"
	exit 3
	;;
esac
in_ct() { nsenter --target "$leader" --all "$@"; }
cleanup() {
	in_ct systemctl --no-block poweroff >/dev/null 2>&1 || kill $nspawn 2>/dev/null || true
	for i in $(seq 60); do kill -0 $nspawn 2>/dev/null || break; sleep 0.5; done
	kill -9 $nspawn 2>/dev/null || true
}
trap cleanup EXIT
[ -d "$root/run/systemd/system" ] || in_ct test -d /run/systemd/system

echo "STEP install"
in_ct dpkg -i /root/gosec.deb
in_ct systemctl cat gosec.service | grep -q "^Type=notify"
# Keep-alives every WatchdogSec/2: make them quick to observe.
in_ct mkdir -p /etc/systemd/system/gosec.service.d
in_ct sh -c "printf \"[Service]\nWatchdogSec=4s\n\" > /etc/systemd/system/gosec.service.d/watchdog.conf"
in_ct systemctl daemon-reload

echo "STEP start"
# Type=notify: systemctl start returns once the daemon sent READY=1.
in_ct systemctl start gosec || { in_ct journalctl -u gosec --no-pager -o cat | tail -n 30; exit 1; }
in_ct systemctl is-active gosec
show() { in_ct systemctl show gosec --value -p "$1"; }
pid=$(show MainPID)
[ "$pid" -gt 0 ]
echo "MainPID $pid"
in_ct systemctl show gosec -p Type -p NotifyAccess -p StatusText -p WatchdogUSec -p User -p NRestarts

echo "STEP hardening"
in_ct grep -E "^(Uid|Gid|CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):" /proc/$pid/status
# CAP_BPF was for the start-up: the eBPF programs it loaded work without it
in_ct journalctl -u gosec --no-pager -o cat | grep "start-up capabilities dropped"
in_ct gosec statusall | grep -E "TUN device|raw ESP/AH"
in_ct ls -l /proc/$pid/exe 2>&1 | sed "s/.*-> //" || true
# ProtectSystem=strict: the daemon'"'"'s view of /usr is read-only.
out=$(in_ct nsenter --target "$pid" --mount sh -c "touch /usr/gosec-probe 2>&1 || true")
echo "$out"
echo "$out" | grep -q "Read-only file system"

echo "STEP watchdog"
w1=$(show WatchdogTimestampMonotonic)
sleep 5
w2=$(show WatchdogTimestampMonotonic)
sleep 5
w3=$(show WatchdogTimestampMonotonic)
echo "watchdog keep-alives at $w1 $w2 $w3 (monotonic usec)"
[ "$w1" != "$w2" ] && [ "$w2" != "$w3" ]
[ "$(show MainPID)" = "$pid" ] && [ "$(show NRestarts)" = 0 ]

echo "STEP reload"
in_ct sh -c "printf \"\nconn hp-vpn\n\tleft=127.0.0.1\n\tright=192.0.2.2\n\tauthby=secret\n\tkeyexchange=ikev1\n\tauto=add\n\" >> /etc/gosec/ipsec.conf"
in_ct systemctl reload gosec
in_ct systemctl is-active gosec
[ "$(show MainPID)" = "$pid" ]
in_ct gosec status
in_ct gosec status | grep -q hp-vpn

echo "STEP stop"
in_ct systemctl stop gosec
st=$(in_ct systemctl is-active gosec || true)
echo "after stop: $st, Result=$(show Result), ExecMainStatus=$(show ExecMainStatus)"
[ "$st" = inactive ] && [ "$(show Result)" = success ]
in_ct journalctl -u gosec --no-pager -o cat | tail -n 40

echo "STEP done"
' sh "$deb" "$work"
