#!/usr/bin/env bash
# make bench-e2e: LAN-to-LAN TCP throughput (iperf3, 1 and 4 streams), ping
# latency and the gateways' CPU, in one run, through
#   plain      the LANs routed over the veth, no IPsec
#   gosec      a gosec-gosec tunnel with manual keys, raw ESP (IP protocol 50)
#   gosec-udp  the same SAs as ESP-in-UDP (forceencaps=yes, UDP 4500)
#   strongswan a strongSwan 5.9 pair, IKEv1 PSK, userspace ESP (kernel-libipsec,
#              always ESP-in-UDP), set up by test/interop/
#   null       the control for the ping goal: a bare userspace relay
#              (internal/tools/nulltun, built by this script) in each
#              gateway, TUN to UDP and back with no cryptography, policy or
#              batching, on Go's netpoller with gosec's Go procs and
#              keep-warm. Its latency above plain is what moving each packet
#              through such a process costs on this machine, a floor for
#              gosec's; measured with the first suite only, as plain
# for the suites
#   aes128gcm16       AES-128-GCM-16
#   aes256gcm16       AES-256-GCM-16
#   chacha20poly1305  ChaCha20-Poly1305 (strongSwan: n/a, its IKEv1 cannot
#                     negotiate it; see test/interop/README.md)
#   aes128-sha1       AES-128-CBC/HMAC-SHA1-96
# and prints medians, ratios, each gateway's CPU, and the goals of issue 12
# with MET / NOT MET (raw ESP AES-128-GCM >= 2.5 Gbit/s and >= 14x strongSwan,
# ESP-in-UDP AES-128-GCM >= 3 Gbit/s, AES-128-CBC/HMAC-SHA1 >= 1.5 Gbit/s on
# either gosec path, all single stream; ping <= 0.2 ms above plain on every
# gosec path; the null relay's ping is printed beside it as the machine's
# floor, not judged). The ratios against issue 5's bar (>= 5x strongSwan for
# aes128-sha1, >= 10x for aes128gcm16) are shown beside them.
#
#   scripts/bench-e2e.sh [-n RUNS] [-t SECS] [-o FILE] [-s SUITES] [-p PATHS] [-U] [-b] [-P DIR]
#     -n RUNS    runs per measurement, the median is reported (default 3)
#     -t SECS    seconds per iperf3 run (default 4)
#     -o FILE    also write the results as a markdown block to FILE
#     -s SUITES  space-separated subset of the suites above (default: all four)
#     -p PATHS   space-separated subset of "plain gosec gosec-udp strongswan null"
#                (default: all five)
#     -U         skip the gosec ESP-in-UDP rows (same as leaving gosec-udp out of -p)
#     -b         exit 3 when a goal of issue 12 that was measured is not met
#                (default: report only)
#     -P DIR     afterwards, profile both gosec daemons with perf (cpu-clock,
#                call graphs, kernel included) during one more 1-stream run per
#                suite and encapsulation: DIR/gosec-SUITE-ENCAP-gwN.{perf.data,txt}
# Defaults take about 6-7 minutes (-s aes128gcm16 about 2). Root only.
# Uses bin/gosec (GOSEC=path overrides; `make bench-e2e` builds it first).
#
# Four identical topologies (scripts/topo.sh shape, all names start with gbe-):
#   gbe-p-*  plain (static routes between the LANs), gbe-g-* gosec,
#   gbe-s-*  strongSwan (test/interop/topo.sh, NS_PREFIX=gbe-s-),
#   gbe-n-*  the null relay (UDP port 4790 between the WAN addresses)
#   lan1 10.1.0.2 -- gw1 10.1.0.1 | 192.0.2.1 ==veth== 192.0.2.2 | 10.2.0.1 gw2 -- lan2 10.2.0.2
# The runs of all paths of a suite are interleaved (run 1 of every path, then
# run 2, ...) so that load from elsewhere on the machine hits them alike.
# Everything, iperf3 included, shares the machine's cores. CPU: utime+stime
# of the gosec daemons / charons from /proc/PID/stat during each iperf3 run,
# as % of one core, and the whole machine's busy time from /proc/stat as % of
# all its cores (the plain path's gateways are the kernel's forwarding, which
# only shows in the machine's total). Everything this script created is
# removed on exit, also on failure or Ctrl-C.
set -Eeuo pipefail
ORIG=$PWD
cd "$(dirname "$0")/.."
ROOT=$PWD
IOP=$ROOT/test/interop
. "$IOP/lib.sh"

log() { printf '%s\n' "$*" >&2; }
ALL_SUITES="aes128gcm16 aes256gcm16 chacha20poly1305 aes128-sha1"
ALL_PATHS="plain gosec gosec-udp strongswan null"
RUNS=3 SECS=4 OUT='' SUITES=$ALL_SUITES SEL_PATHS=$ALL_PATHS UDP=1 BARFAIL='' PROF=''
usage() { awk 'NR > 1 && /^#/ {print; next} NR > 1 {exit}' "$0"; exit 2; }
while getopts "n:t:o:s:p:UbP:h" o; do
  case "$o" in
    n) RUNS=$OPTARG ;; t) SECS=$OPTARG ;; o) OUT=$OPTARG ;; s) SUITES=$OPTARG ;;
    p) SEL_PATHS=$OPTARG ;; U) UDP= ;; b) BARFAIL=1 ;; P) PROF=$OPTARG ;; *) usage ;;
  esac
done
# -o and -P are relative to the caller's directory
[ -n "$OUT" ] && [[ $OUT != /* ]] && OUT=$ORIG/$OUT
[ -n "$PROF" ] && [[ $PROF != /* ]] && PROF=$ORIG/$PROF
[[ $RUNS =~ ^[1-9][0-9]*$ && $SECS =~ ^[1-9][0-9]*$ ]] || { echo "bench-e2e: -n and -t take positive integers" >&2; exit 2; }
for s in $SUITES; do
  [[ " $ALL_SUITES " = *" $s "* ]] || { echo "bench-e2e: unknown suite $s ($ALL_SUITES)" >&2; exit 2; }
done
for p in $SEL_PATHS; do
  [[ " $ALL_PATHS " = *" $p "* ]] || { echo "bench-e2e: unknown path $p ($ALL_PATHS)" >&2; exit 2; }
done
[ -n "$SUITES" ] && [ -n "$SEL_PATHS" ] || { echo "bench-e2e: -s and -p must name something" >&2; exit 2; }
# has_path PATH: PATH was selected
has_path() { [[ " $SEL_PATHS " = *" $1 "* ]] && { [ "$1" != gosec-udp ] || [ -n "$UDP" ]; }; }
# Suites strongSwan's kernel-libipsec can run here (test/interop/conf/SUITE)
ss_suite() { [ -d "$IOP/conf/$1" ]; }
[ "$(id -u)" = 0 ] || { echo "bench-e2e: needs root (network namespaces)" >&2; exit 1; }
BIN=${GOSEC:-bin/gosec}
[[ $BIN = /* ]] || BIN=$ROOT/$BIN
[ -x "$BIN" ] || { echo "bench-e2e: no $BIN (run make build)" >&2; exit 1; }

need_pkgs "${STRONGSWAN_PKGS[@]}" iperf3 iputils-ping procps jq
if [ -n "$PROF" ]; then
  command -v perf >/dev/null || need_pkgs linux-perf
  mkdir -p "$PROF"
  PROF=$(cd "$PROF" && pwd)
fi

T0=$(date +%s)
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
awk -v l="${LOAD0%% *}" -v n="$(nproc)" 'BEGIN {exit !(l > n / 2)}' &&
  log "bench-e2e: warning: load average $LOAD0 on $(nproc) cores; other work will make the numbers noisy"
PP=gbe-p- PG=gbe-g- PS=gbe-s- PN=gbe-n-
SS_L=${PS}left SS_R=${PS}right SS_LL=${PS}leftlan SS_RL=${PS}rightlan
RUNBASE=${GOSEC_INTEROP_RUN:-/run/gosec-interop}
TMP=$(mktemp -d /tmp/gosec-bench.XXXXXX)
SRV_PIDS=() SS_UP='' G_UP='' NULL_PIDS=()

# quiet: run a command, show its output only if it fails
quiet() {
  local out
  if ! out=$("$@" 2>&1); then log "bench-e2e: failed: $*"; log "$out"; return 1; fi
}

cleanup() {
  local rc=$? p
  trap - EXIT INT TERM
  for p in "${SRV_PIDS[@]}" "${NULL_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for gw in gw1 gw2; do
    [ -S "$TMP/$gw.ctl" ] && ip netns exec "${PG}$gw" "$BIN" stop --socket "$TMP/$gw.ctl" >/dev/null 2>&1 || true
  done
  if [ -n "$SS_UP" ]; then
    "$IOP/strongswan-peer.sh" "$SS_L" "$IOP/conf/$SS_UP/left" stop >/dev/null 2>&1 || true
    "$IOP/strongswan-peer.sh" "$SS_R" "$IOP/conf/$SS_UP/right" stop >/dev/null 2>&1 || true
  fi
  scripts/topo.sh down "$PP" >/dev/null 2>&1 || true
  scripts/topo.sh down "$PG" >/dev/null 2>&1 || true
  scripts/topo.sh down "$PN" >/dev/null 2>&1 || true
  NS_PREFIX=$PS "$IOP/topo.sh" down >/dev/null 2>&1 || true
  if [ $rc -ne 0 ] && [ $rc -ne 3 ]; then
    for gw in gw1 gw2; do
      [ -s "$TMP/$gw.log" ] && { log "--- gosec log of ${PG}$gw (tail)"; tail -20 "$TMP/$gw.log" >&2; }
    done
  fi
  rm -rf "$TMP" "${RUNBASE:?}/$SS_L" "${RUNBASE:?}/$SS_R"
  exit $rc
}
trap cleanup EXIT
trap 'log "bench-e2e: failed at line $LINENO: $BASH_COMMAND"' ERR
trap 'exit 130' INT
trap 'exit 143' TERM

median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) {print "n/a"; exit} if (NR%2) print a[(NR+1)/2]; else printf "%.2f\n", (a[NR/2]+a[NR/2+1])/2}'; }
hexkey() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# machine_ticks -> "busy total": all cores, from /proc/stat (guest time is
# already inside user and nice)
machine_ticks() { awk '/^cpu / {t = $2+$3+$4+$5+$6+$7+$8+$9; print t - $5 - $6, t; exit}' /proc/stat; }
HZ=$(getconf CLK_TCK)
pct() { awk -v d="$1" -v hz="$HZ" -v w="$2" 'BEGIN {printf "%.0f", 100 * d / hz / w}'; }
now() { date +%s.%N; }

# ---------------------------------------------------------------- topologies
log "bench-e2e: topologies ${PP}* ${PG}* ${PS}*$(has_path null && echo " ${PN}*")"
scripts/topo.sh up "$PP"
scripts/topo.sh up "$PG"
has_path null && scripts/topo.sh up "$PN"
NS_PREFIX=$PS quiet "$IOP/topo.sh" up
ip -n "${PP}gw1" route add 10.2.0.0/24 via 192.0.2.2
ip -n "${PP}gw2" route add 10.1.0.0/24 via 192.0.2.1

# path -> client namespace and server namespace
declare -A CLI_NS=([plain]=${PP}lan1 [gosec]=${PG}lan1 [gosec-udp]=${PG}lan1 [strongswan]=$SS_LL [null]=${PN}lan1)
for ns in "${PP}lan2" "${PG}lan2" "$SS_RL" $(has_path null && echo "${PN}lan2"); do
  ip netns exec "$ns" iperf3 -s -B 10.2.0.2 >/dev/null 2>&1 &
  SRV_PIDS+=($!)
done

# ---------------------------------------------------------------- null relay
# A nulltun in each gateway of ${PN}* (scripts/nullrelay.sh): the LANs are
# routed into its TUN, which it relays over UDP to the other gateway's.
declare -A NPID
if has_path null; then
  log "bench-e2e: starting the null relay"
  . scripts/nullrelay.sh
  null_relay_up "$PN" "$TMP" || { log "bench-e2e: the null relay did not start"; exit 1; }
  NULL_PIDS=("${NULL_RELAY_PIDS[@]}") NPID[gw1]=${NULL_RELAY_PIDS[0]} NPID[gw2]=${NULL_RELAY_PIDS[1]}
  ip netns exec "${PN}lan1" ping -q -c 2 -i 0.2 -W 2 10.2.0.2 >/dev/null ||
    { log "bench-e2e: no ping through the null relay"; exit 1; }
fi

# ---------------------------------------------------------------- gosec
# One config for both gateways (each finds its side by its addresses, as in
# demo/ipsec.conf), one conn per suite and encapsulation, fresh random keys.
declare -A ENCLEN=([aes128-sha1]=16 [aes128gcm16]=20 [aes256gcm16]=36 [chacha20poly1305]=36)
declare -A AUTHLEN=([aes128-sha1]=20 [aes128gcm16]=0 [aes256gcm16]=0 [chacha20poly1305]=0)
{
  echo "# generated by scripts/bench-e2e.sh (random test keys)"
  echo "conn %default"
  printf '\ttype=tunnel\n\tauto=add\n\tleft=192.0.2.1\n\tleftsubnet=10.1.0.0/24\n\tright=192.0.2.2\n\trightsubnet=10.2.0.0/24\n\treplay_window=64\n'
  n=0
  for s in $ALL_SUITES; do
    for encap in raw udp; do
      n=$((n + 1))
      echo
      echo "conn gosec-$s-$encap"
      printf '\tesp=%s\n\tleftspi=%#x\n\trightspi=%#x\n' "$s" $((0x1000 + n)) $((0x2000 + n))
      printf '\tleftespenckey=0x%s\n\trightespenckey=0x%s\n' "$(hexkey "${ENCLEN[$s]}")" "$(hexkey "${ENCLEN[$s]}")"
      if [ "${AUTHLEN[$s]}" -gt 0 ]; then
        printf '\tleftespauthkey=0x%s\n\trightespauthkey=0x%s\n' "$(hexkey "${AUTHLEN[$s]}")" "$(hexkey "${AUTHLEN[$s]}")"
      fi
      [ $encap = udp ] && printf '\tforceencaps=yes\n'
    done
  done
} >"$TMP/ipsec.conf"
: >"$TMP/ipsec.secrets"
chmod 600 "$TMP/ipsec.conf" "$TMP/ipsec.secrets"
declare -A GPID GPK   # GPK[conn]: packets gw2's inbound SA counted while conn was up
for gw in gw1 gw2; do
  quiet ip netns exec "${PG}$gw" "$BIN" start ${GOSEC_START_ARGS:-} --config "$TMP/ipsec.conf" --socket "$TMP/$gw.ctl" --log "$TMP/$gw.log"
  GPID[$gw]=$(ip netns exec "${PG}$gw" "$BIN" statusall --json --socket "$TMP/$gw.ctl" | jq -r .pid)
done
gctl() { # gctl GW ARGS...
  ip netns exec "${PG}$1" "$BIN" "${@:2}" --socket "$TMP/$1.ctl"
}
# gosec_use CONN|"": take the current conn down and bring CONN up on both sides
gosec_use() {
  [ "$G_UP" = "$1" ] && return 0
  if [ -n "$G_UP" ]; then
    GPK[$G_UP]=$((${GPK[$G_UP]:-0} + $(gosec_sa_packets "$G_UP")))
    quiet gctl gw1 down "$G_UP"
    quiet gctl gw2 down "$G_UP"
  fi
  G_UP=
  [ -n "$1" ] || return 0
  quiet gctl gw1 up "$1"
  quiet gctl gw2 up "$1"
  G_UP=$1
  ip netns exec "${PG}lan1" ping -q -c 2 -i 0.2 -W 2 10.2.0.2 >/dev/null ||
    { log "bench-e2e: no ping through gosec conn $1"; exit 1; }
}
# gosec_sa_packets CONN: packets counted on gw2's inbound SA (proof that ESP flowed)
gosec_sa_packets() {
  gctl gw2 statusall --json | jq -r --arg c "$1" \
    '[.conns[] | select(.name == $c) | .sas[]? | select(.dir == "in") | .packets] | add // 0'
}

# ---------------------------------------------------------------- strongSwan
# ss_stop: stop both charons if they run
ss_stop() {
  if [ -n "$SS_UP" ]; then
    quiet "$IOP/strongswan-peer.sh" "$SS_L" "$IOP/conf/$SS_UP/left" stop
    quiet "$IOP/strongswan-peer.sh" "$SS_R" "$IOP/conf/$SS_UP/right" stop
    SS_UP=
  fi
}
# ss_use SUITE: (re)start both charons with conf/SUITE and establish the tunnel
ss_use() {
  ss_stop
  quiet "$IOP/strongswan-peer.sh" "$SS_R" "$IOP/conf/$1/right" start
  SS_UP=$1
  quiet "$IOP/strongswan-peer.sh" "$SS_L" "$IOP/conf/$1/left" start
  local out
  out=$(timeout 60 "$IOP/strongswan-peer.sh" "$SS_L" "$IOP/conf/$1/left" ipsec up "$1" 2>&1) || true
  grep -q "established successfully" <<<"$out" ||
    { log "bench-e2e: strongSwan conn $1 did not come up:"; log "$out"; exit 1; }
  ip netns exec "$SS_LL" ping -q -c 2 -i 0.2 -W 2 10.2.0.2 >/dev/null ||
    { log "bench-e2e: no ping through the strongSwan tunnel ($1)"; exit 1; }
  SPID_L=$(cat "$RUNBASE/$SS_L/charon.pid") SPID_R=$(cat "$RUNBASE/$SS_R/charon.pid")
}
# ss_bytes_in: bytes_i of right's CHILD_SA (proof that ESP flowed)
ss_bytes_in() {
  "$IOP/strongswan-peer.sh" "$SS_R" "$IOP/conf/$SS_UP/right" ipsec statusall 2>/dev/null |
    awk '/bytes_i/ {for (i = 1; i <= NF; i++) if ($(i+1) ~ /^bytes_i/) {print $i; exit}}'
}

# ---------------------------------------------------------------- measuring
# activate PATH SUITE: make PATH carry SUITE's traffic; sets CPIDS (gateway PIDs)
activate() {
  case "$1" in
    plain) gosec_use ""; CPIDS= ;;
    gosec) gosec_use "gosec-$2-raw"; CPIDS="${GPID[gw1]} ${GPID[gw2]}" ;;
    gosec-udp) gosec_use "gosec-$2-udp"; CPIDS="${GPID[gw1]} ${GPID[gw2]}" ;;
    strongswan) CPIDS="$SPID_L $SPID_R" ;;
    null) gosec_use ""; CPIDS="${NPID[gw1]} ${NPID[gw2]}" ;;
  esac
}
# iperf NS STREAMS -> receiver Mbit/s (0 if iperf3 failed)
iperf() {
  timeout $((SECS + 20)) ip netns exec "$1" iperf3 -c 10.2.0.2 -P "$2" -t "$SECS" -f m --connect-timeout 3000 2>&1 |
    awk '/receiver/ {v=$(NF-2)} END {print (v=="" ? "0" : v)}'
}
# ping_stats NS -> "AVG MAX": average and slowest RTT in ms of 20 pings 50 ms
# apart (the average is what is judged; the slowest shows a lone stall,
# which moves the average of 20 by a twentieth of its length)
ping_stats() {
  ip netns exec "$1" ping -q -c 20 -i 0.05 -W 2 10.2.0.2 2>/dev/null |
    awk -F/ '/^rtt/ {v=$5; m=$6} END {print (v=="" ? "0 0" : v " " m)}'
}
declare -A V   # V[suite|path|metric] = "run1 run2 ..."
add() { V[$1]="${V[$1]:-}${V[$1]:+ }$2"; }
med() { { tr ' ' '\n' <<<"${V[$1]:-}" | grep . || true; } | median; }
# iperf_cpu SUITE PATH STREAMS: one iperf3 run; records Mbit/s (pSTREAMS),
# each gateway's CPU in % of one core (gw1_STREAMS, gw2_STREAMS) and the
# machine's busy share of all its cores (mach_STREAMS) during it
iperf_cpu() {
  local k="$1|$2" n=$3 v t0 t1 m0 m1 pid ticks0=() i=0 cpu=
  read -r -a m0 <<<"$(machine_ticks)"
  for pid in $CPIDS; do ticks0+=("$(cpu_ticks "$pid")"); done
  t0=$(now)
  v=$(iperf "${CLI_NS[$2]}" "$n")
  t1=$(now)
  read -r -a m1 <<<"$(machine_ticks)"
  add "$k|p$n" "$v"
  for pid in $CPIDS; do
    i=$((i + 1))
    add "$k|gw${i}_$n" "$(pct $(($(cpu_ticks "$pid") - ticks0[i - 1])) "$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')")"
  done
  add "$k|mach_$n" "$(awk -v b="$((m1[0] - m0[0]))" -v t="$((m1[1] - m0[1]))" 'BEGIN {printf "%.0f", (t > 0 ? 100 * b / t : 0)}')"
}
last() { local v=${V[$1]:-}; echo "${v##* }"; }
# measure SUITE PATH: one run of P1, P4 and ping, with the CPU during each
measure() {
  local s=$1 p=$2 v vmax cpu=
  activate "$p" "$s"
  iperf_cpu "$s" "$p" 1
  iperf_cpu "$s" "$p" 4
  read -r v vmax <<<"$(ping_stats "${CLI_NS[$p]}")"; add "$s|$p|ping" "$v"
  [ -n "$CPIDS" ] && cpu="  gw CPU $(last "$s|$p|gw1_1")/$(last "$s|$p|gw2_1") and $(last "$s|$p|gw1_4")/$(last "$s|$p|gw2_4") %"
  printf '  %-16s %-10s run %d: %6s Mbit/s 1 stream %6s Mbit/s 4 streams %6s ms ping (slowest %s)%s  machine %s/%s %%\n' "$s" "$p" "$RUN" \
    "$(last "$s|$p|p1")" "$(last "$s|$p|p4")" "$v" "$vmax" "$cpu" "$(last "$s|$p|mach_1")" "$(last "$s|$p|mach_4")" >&2
}

# perf_top DATA LINES ARGS...: the first LINES rows of perf report ARGS
perf_top() {
  perf report -i "$1" --stdio -g none "${@:3}" 2>/dev/null | grep -v '^#' | grep . | head -"$2" || true
}
# perf_where DATA: share of samples (with callees, so the lines overlap) in
# the parts of the hot path: crypto, TUN I/O, socket I/O (both include the
# kernel work done inline, e.g. forwarding), SPD, and the Go scheduler
perf_where() {
  local t
  t=$(perf report -i "$1" --stdio --children --sort sym -g none 2>/dev/null | grep -v '^#' | grep . || true)
  pick() { awk -v pat="$2" '$0 ~ pat {gsub("%", "", $1); s += $1} END {printf "  %-52s %5.1f %%\n", name, s}' name="$1" <<<"$t"; }
  pick "crypto: esp Seal + Open" '\] github.com/gosec-ipsec/gosec/esp\.\(\*Suite\)\.(Seal|Open)$'
  pick "TUN read (incl. GSO split)" 'wireguard/tun\.\(\*NativeTun\)\.Read$'
  pick "TUN write (incl. GRO and the kernel's forwarding)" 'wireguard/tun\.\(\*NativeTun\)\.Write$'
  pick "socket send (sendmmsg, incl. the kernel's output)" 'netio\.\((\*sock\)\.send|\*UDPConn\)\.SendCoalesced)$'
  pick "socket receive (recvmmsg)" 'netio\.\(\*sock\)\.recv$'
  pick "SPD lookups" 'spd\.\(\*DB\)\.(Lookup|CheckInbound)$'
  pick "Go runtime: sysmon thread" '\] runtime\.sysmon$'
  pick "Go runtime: park/schedule (mcall)" '\] runtime\.mcall$'
  perf report -i "$1" --stdio --no-children --sort dso -g none 2>/dev/null |
    awk '/kernel.kallsyms/ {printf "  %-52s %5.1f %%\n", "in the kernel (self; overlaps all of the above)", $1}' || true
}
# profile SUITE PATH: perf record both gosec daemons during one 1-stream run
profile() {
  local conn=gosec-$1-raw gw out v pids=()
  [ "$2" = gosec-udp ] && conn=gosec-$1-udp
  activate "$2" "$1"
  for gw in gw1 gw2; do
    perf record -q -F 999 -g -o "$PROF/$conn-$gw.perf.data" -p "${GPID[$gw]}" -- sleep "$SECS" >/dev/null 2>&1 &
    pids+=($!)
  done
  sleep 0.2
  v=$(iperf "${CLI_NS[$2]}" 1)
  wait "${pids[@]}" || true
  for gw in gw1 gw2; do
    out=$PROF/$conn-$gw.txt
    {
      echo "# perf record -F 999 -g -p <gosec in ${PG}$gw> during iperf3 -P 1 -t $SECS ($v Mbit/s), conn $conn"
      echo "## where the time goes (% of samples, with callees)"
      perf_where "$PROF/$conn-$gw.perf.data"
      echo "## by shared object"
      perf_top "$PROF/$conn-$gw.perf.data" 10 --no-children --sort dso
      echo "## by symbol (self)"
      perf_top "$PROF/$conn-$gw.perf.data" 40 --no-children --sort sym
      echo "## by symbol (children: time in the function and its callees)"
      perf_top "$PROF/$conn-$gw.perf.data" 40 --children --sort sym
    } >"$out"
  done
  log "  profiled $conn under iperf3 -P 1 ($v Mbit/s): $PROF/$conn-gw1.txt, $PROF/$conn-gw2.txt"
}

PATHS=()   # the tunnel paths measured per suite
for p in gosec gosec-udp strongswan; do has_path "$p" && PATHS+=("$p"); done
FIRST=1
for s in $SUITES; do
  paths=()
  for p in "${PATHS[@]}"; do
    [ "$p" = strongswan ] && ! ss_suite "$s" && continue
    paths+=("$p")
  done
  if [[ " ${paths[*]} " = *" strongswan "* ]]; then
    log "bench-e2e: suite $s: starting strongSwan pair"
    ss_use "$s"
  else
    ss_stop
    has_path strongswan && log "bench-e2e: suite $s: strongSwan n/a (no test/interop/conf/$s: its IKEv1 cannot negotiate it)"
  fi
  # the plain path and the null relay do not depend on the suite: measured
  # with the first
  [ -n "$FIRST" ] && has_path null && paths+=(null)
  [ -n "$FIRST" ] && has_path plain && paths=(plain "${paths[@]}")
  FIRST=
  [ ${#paths[@]} -gt 0 ] || continue
  for RUN in $(seq 1 "$RUNS"); do
    for p in "${paths[@]}"; do measure "$s" "$p"; done
  done
  [ -n "$PROF" ] && for p in "${paths[@]}"; do [[ $p = gosec* ]] && profile "$s" "$p"; done
  # proof that the tunnels carried the traffic (no route around them exists)
  gosec_use ""
  GP=- GPU=- SSB=- GPROP=- SPROP=-
  has_path gosec && GP=${GPK[gosec-$s-raw]:-0}
  has_path gosec-udp && GPU=${GPK[gosec-$s-udp]:-0}
  if [ -n "$SS_UP" ]; then
    SSB=$(ss_bytes_in)
    SPROP=$("$IOP/strongswan-peer.sh" "$SS_R" "$IOP/conf/$s/right" ipsec statusall 2>/dev/null |
      awk '/bytes_i/ {sub(/^.*\}: +/, ""); sub(/,.*/, ""); print; exit}')
  fi
  if has_path gosec || has_path gosec-udp; then
    c=gosec-$s-raw; has_path gosec || c=gosec-$s-udp
    GPROP=$(gctl gw1 statusall --json | jq -r --arg c "$c" '.conns[] | select(.name == $c) | .proposal')
  fi
  log "  SA counters: gosec raw in ${GP} packets, gosec udp in ${GPU} packets, strongSwan bytes_i ${SSB:-?}"
  log "  algorithms: gosec ${GPROP:-?}, strongSwan ${SPROP:-?}"
  for c in "$GP" "$GPU" "$SSB"; do
    [ "$c" = - ] || [ "${c:-0}" -gt 0 ] || { log "bench-e2e: an SA counted no traffic"; exit 1; }
  done
done
ss_stop

# ---------------------------------------------------------------- report
ratio() { awk -v a="$1" -v b="$2" -v f="${3:-%.1f}" 'BEGIN {if (a == "n/a" || b == "n/a" || b + 0 == 0) print "n/a"; else printf f, a / b}'; }
# cpu_cell SUITE PATH N -> "gw1/gw2" median % of one core, or "-"
cpu_cell() { [[ $2 = plain ]] && { echo -; return; }; echo "$(med "$1|$2|gw1_$3")/$(med "$1|$2|gw2_$3")"; }
declare -A BAR=([aes128-sha1]=5 [aes128gcm16]=10)
declare -A LABEL=([plain]="plain routed (no IPsec)" [gosec]="gosec, raw ESP" [gosec-udp]="gosec, ESP-in-UDP"
  [strongswan]="strongSwan kernel-libipsec (ESP-in-UDP)" [null]="null userspace relay (control: no IPsec)")
CPU_MODEL=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
COMMIT=$(git -c safe.directory="$ROOT" describe --always --dirty 2>/dev/null || echo unknown)
if [ -n "${GOSEC:-}" ]; then GOSEC_DESC="$GOSEC (work tree at $COMMIT)"; else GOSEC_DESC="$COMMIT"; fi
SSVER=$(dpkg-query -W -f='${Version}' strongswan-charon)
IPVER=$(dpkg-query -W -f='${Version}' iperf3)
ELAPSED=$(($(date +%s) - T0))
first=$(set -- $SUITES; echo "$1")
PLAIN_PING=$(med "$first|plain|ping")
# ge A B: A >= B (both numbers)
ge() { awk -v a="$1" -v b="$2" 'BEGIN {exit !(a != "n/a" && a != "" && a + 0 >= b + 0)}'; }
GOALS_FAILED=0
# goal TEXT VALUE THRESHOLD UNIT [le]: one row of the goals table; VALUE
# "n/a" means not measured in this run
goal() {
  local verdict m
  if [ "$2" = n/a ]; then
    verdict="not measured"
  elif { [ "${5:-}" = le ] && ge "$3" "$2"; } || { [ "${5:-}" != le ] && ge "$2" "$3"; }; then
    verdict="**MET**"
  else
    verdict="**NOT MET**"
    GOALS_FAILED=$((GOALS_FAILED + 1))
  fi
  m="$2 $4"
  [ "$2" = n/a ] && m=n/a
  printf '| %s | %s | %s %s | %s |\n' "$1" "$m" "$([ "${5:-}" = le ] && echo "<=" || echo ">=")" "$3 $4" "$verdict"
}
# gm SUITE PATH METRIC -> median, or n/a when that suite/path was not run
gm() { med "$1|$2|$3"; }
{
  echo "### LAN-to-LAN throughput and latency (scripts/bench-e2e.sh)"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) cores ($CPU_MODEL), Linux $(uname -r); gosec $GOSEC_DESC ($(go version "$BIN" 2>/dev/null | awk '{print $NF}' || true));" \
    "strongSwan $SSVER; iperf3 $IPVER. TCP lan1 10.1.0.2 -> lan2 10.2.0.2 through two gateways (veth), ${SECS} s per run," \
    "median of $RUNS runs; ping: 20 x 50 ms. Everything (iperf3's sender and receiver, both gateways) shares the same $(nproc) cores;" \
    "load average before the run: $LOAD0. Run took ${ELAPSED} s."
  echo
  echo "| suite | path | 1 stream (Mbit/s) | 4 streams (Mbit/s) | ping avg (ms) | ping - plain (ms) | gateway CPU gw1/gw2, 1 stream (% of a core) | 4 streams | machine busy 1 / 4 streams (% of $(nproc) cores) |"
  echo "|---|---|--:|--:|--:|--:|--:|--:|--:|"
  for s in $SUITES; do
    for p in plain null "${PATHS[@]}"; do
      if [ $p = plain ] || [ $p = null ]; then
        [ "$s" = "$first" ] && has_path $p || continue
        sl="-"
      else
        sl=$s
      fi
      if [ $p = strongswan ] && ! ss_suite "$s"; then
        printf '| %s | %s | n/a | n/a | n/a | n/a | n/a | n/a | n/a |\n' "$sl" "${LABEL[$p]}"
        continue
      fi
      pd=n/a; [ "$PLAIN_PING" != n/a ] && [ $p != plain ] && pd=$(awk -v a="$(med "$s|$p|ping")" -v b="$PLAIN_PING" 'BEGIN {printf "%+.3f", a - b}')
      [ $p = plain ] && pd="-"
      printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s / %s |\n' "$sl" "${LABEL[$p]}" "$(med "$s|$p|p1")" "$(med "$s|$p|p4")" \
        "$(med "$s|$p|ping")" "$pd" "$(cpu_cell "$s" "$p" 1)" "$(cpu_cell "$s" "$p" 4)" "$(med "$s|$p|mach_1")" "$(med "$s|$p|mach_4")"
    done
  done
  echo
  P1=$(gm "$first" plain p1) P4=$(gm "$first" plain p4)
  echo "| suite | gosec path | gosec/strongSwan 1 stream | 4 streams | gosec/plain 1 stream | 4 streams | issue 5 bar (x strongSwan) | met |"
  echo "|---|---|--:|--:|--:|--:|--:|---|"
  for s in $SUITES; do
    S1=$(gm "$s" strongswan p1) S4=$(gm "$s" strongswan p4)
    for p in "${PATHS[@]}"; do
      [ $p = strongswan ] && continue
      G1=$(gm "$s" "$p" p1) G4=$(gm "$s" "$p" p4)
      r1=$(ratio "$G1" "$S1") r4=$(ratio "$G4" "$S4")
      bar=${BAR[$s]:--} ok=-
      if [ "$bar" != - ] && [ "$r1" != n/a ]; then
        ok=no; ge "$r1" "$bar" && ge "$r4" "$bar" && ok=yes
      fi
      printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$s" "${LABEL[$p]}" "$r1" "$r4" "$(ratio "$G1" "$P1" %.3f)" "$(ratio "$G4" "$P4" %.3f)" "$bar" "$ok"
    done
  done
  echo
  echo "Goals of issue 12 (single TCP stream; on this machine the two gateways, iperf3's sender and its receiver share the same $(nproc) cores):"
  echo
  echo "| goal | measured | goal | verdict |"
  echo "|---|--:|--:|---|"
  goal "raw ESP, AES-128-GCM-16" "$(gm aes128gcm16 gosec p1)" 2500 Mbit/s
  goal "raw ESP, AES-128-GCM-16, x strongSwan in the same run" "$(ratio "$(gm aes128gcm16 gosec p1)" "$(gm aes128gcm16 strongswan p1)")" 14 x
  goal "ESP-in-UDP, AES-128-GCM-16" "$(gm aes128gcm16 gosec-udp p1)" 3000 Mbit/s
  best=n/a
  for p in gosec gosec-udp; do
    v=$(gm aes128-sha1 "$p" p1)
    [ "$v" != n/a ] && { [ "$best" = n/a ] || ge "$v" "$best"; } && best=$v
  done
  goal "AES-128-CBC/HMAC-SHA1-96, the faster gosec path" "$best" 1500 Mbit/s
  worst=n/a wl=
  if [ "$PLAIN_PING" != n/a ]; then
    for s in $SUITES; do
      for p in gosec gosec-udp; do
        v=$(gm "$s" "$p" ping); [ "$v" = n/a ] && continue
        d=$(awk -v a="$v" -v b="$PLAIN_PING" 'BEGIN {printf "%.3f", a - b}')
        [ "$worst" = n/a ] || ge "$d" "$worst" && { worst=$d; wl=" ($s, ${LABEL[$p]})"; }
      done
    done
  fi
  goal "ping through the tunnel above plain, worst gosec path$wl" "$worst" 0.2 ms le
  echo
  NULL_PING=$(gm "$first" null ping)
  if [ "$NULL_PING" != n/a ] && [ "$PLAIN_PING" != n/a ]; then
    nd=$(awk -v a="$NULL_PING" -v b="$PLAIN_PING" 'BEGIN {printf "%.3f", a - b}')
    echo "Control for the ping goal: the null userspace relay (no cryptography, no policy) is $nd ms above plain on this machine:" \
      "what moving each packet through a process (Go, woken by its netpoller, as gosec is) costs here, four times per round trip."
    [ "$worst" != n/a ] && echo "The worst gosec path is $(awk -v a="$worst" -v b="$nd" 'BEGIN {printf "%.3f", a - b}') ms above the null relay."
    echo
  fi
  if [ "$GOALS_FAILED" -eq 0 ]; then echo "Goals of issue 12 measured in this run: **all met**."; else echo "Goals of issue 12: **$GOALS_FAILED not met**."; fi
} >"$TMP/report.md"
echo
cat "$TMP/report.md"
if [ -n "$OUT" ]; then
  cp "$TMP/report.md" "$OUT"
  log "bench-e2e: markdown written to $OUT"
fi
[ -n "$BARFAIL" ] && [ "$GOALS_FAILED" -gt 0 ] && exit 3
exit 0
