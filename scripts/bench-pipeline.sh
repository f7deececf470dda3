#!/usr/bin/env bash
# make bench-pipeline: how the data plane's throughput grows with the cores
# it may use, without the kernel. Runs BenchmarkPipeline (internal/dataplane:
# two whole planes on in-memory fake TUNs and sockets, TUN -> seal -> wire ->
# open -> TUN, raw ESP tunnel mode, TUN batches of 64) with GOMAXPROCS
# 1, 2, ... nproc, for AES-128-CBC/HMAC-SHA1-96, 3DES-CBC/HMAC-SHA1-96 and
# AES-128-GCM-16 at 64 and 1400 octets, and prints per GOMAXPROCS the median
# packets/s and Gbit/s, the scaling against GOMAXPROCS=1, and packets/s per
# core. Both gateways run in the one process, so "per core" is per packet
# sealed AND opened. On a shared machine a process is not given all the
# cores GOMAXPROCS allows: the "cpus" column is the CPU time the benchmark
# actually got per second, and pkts/cpu-s the packets per CPU-second used
# (flat across GOMAXPROCS when the pipeline adds no overhead).
#
#   scripts/bench-pipeline.sh [-n COUNT] [-t BENCHTIME] [-c CPUS] [-o FILE]
#     -n COUNT      runs of each benchmark, the median is reported (default 3)
#     -t BENCHTIME  go test -benchtime (default 1s)
#     -c CPUS       GOMAXPROCS list (default 1,2,...,nproc)
#     -o FILE       also write the table to FILE
# The machine's load (uptime) before and after is printed: on a shared
# machine the figures are only as good as the CPU left to them.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
COUNT=3 BT=1s CPUS= OUT=
while getopts "n:t:c:o:h" o; do
  case "$o" in
    n) COUNT=$OPTARG ;; t) BT=$OPTARG ;; c) CPUS=$OPTARG ;; o) OUT=$OPTARG ;;
    *) awk 'NR > 1 && /^#/ {print; next} NR > 1 {exit}' "$0"; exit 2 ;;
  esac
done
if [ -z "$CPUS" ]; then
  CPUS=$(seq -s, 1 "$(nproc)")
fi
GO=${GO:-go}
raw=$(mktemp)
trap 'rm -f "$raw"' EXIT
load_before=$(uptime)
echo "bench-pipeline: GOMAXPROCS $CPUS, $COUNT runs of $BT each; load: $load_before" >&2
"$GO" test -run '^$' -bench '^BenchmarkPipeline$' -benchtime "$BT" -count "$COUNT" -cpu "$CPUS" ./internal/dataplane/ | tee "$raw" >&2
load_after=$(uptime)

# Benchmark lines: BenchmarkPipeline/SUITE/SIZE[-CPUS] N T ns/op X Gbit/s Y pkts/s ...
table=$(awk '
  /^BenchmarkPipeline\// {
    name = $1; sub(/^BenchmarkPipeline\//, "", name)
    cpus = 1
    if (match(name, /-[0-9]+$/)) { cpus = substr(name, RSTART + 1); name = substr(name, 1, RSTART - 1) }
    gb = ""; pps = ""; used = ""; ppc = ""
    for (i = 2; i < NF; i++) {
      if ($(i + 1) == "Gbit/s") gb = $i
      if ($(i + 1) == "pkts/s") pps = $i
      if ($(i + 1) == "cpus") used = $i
      if ($(i + 1) == "pkts/cpu-s") ppc = $i
    }
    key = name SUBSEP cpus
    n[key]++; G[key, n[key]] = gb; P[key, n[key]] = pps; U[key, n[key]] = used; C[key, n[key]] = ppc
    if (!(name in seen)) { seen[name] = 1; order[++names] = name }
    if (!(cpus in cseen)) { cseen[cpus] = 1; clist[++ncpus] = cpus }
  }
  function median(arr, key, k,   i, j, t, v) {
    for (i = 1; i <= k; i++) v[i] = arr[key, i] + 0
    for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
    return (k % 2) ? v[(k + 1) / 2] : (v[k / 2] + v[k / 2 + 1]) / 2
  }
  END {
    printf "%-20s %5s %12s %9s %8s %14s %6s %12s\n", "suite/octets", "procs", "pkts/s", "Gbit/s", "x procs1", "pkts/s/core", "cpus", "pkts/cpu-s"
    for (a = 1; a <= names; a++) {
      name = order[a]; base = 0
      for (c = 1; c <= ncpus; c++) {
        cpus = clist[c]; key = name SUBSEP cpus
        if (!(key in n)) continue
        pps = median(P, key, n[key]); gb = median(G, key, n[key])
        if (cpus == 1) base = pps
        ratio = base > 0 ? sprintf("%.2f", pps / base) : "-"
        printf "%-20s %5d %12.0f %9.3f %8s %14.0f %6.2f %12.0f\n", name, cpus, pps, gb, ratio, pps / cpus, median(U, key, n[key]), median(C, key, n[key])
      }
    }
  }' "$raw")
{
  echo "BenchmarkPipeline (median of $COUNT, -benchtime $BT), $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "load before: $load_before"
  echo "load after:  $load_after"
  echo "$table"
} | tee ${OUT:+"$OUT"}
