#!/usr/bin/env bash
# ESP Seal/Open vs the bare cipher+MAC over the same bytes, per suite, at
# 1400 bytes: median of COUNT runs, and the ratio (the issue's goal: >= 85%).
# Usage: scripts/bench-esp-ratio.sh [COUNT] [BENCHTIME]
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-5}; bt=${2:-300ms}
go test -run '^$' -bench '^Benchmark(Bare)?(Seal|Open)$' -benchtime "$bt" -count "$count" ./esp/ |
awk '
/\/1400-/ {
  split($1, p, "/"); kind = p[1]; sub(/^Benchmark/, "", kind); sub(/-[0-9]+$/, "", p[4]);
  suite = p[2] "/" p[3]; v[kind, suite] = v[kind, suite] " " $3; suites[suite] = 1
}
function median(s,   a, n, i, j, t) {
  n = split(s, a, " ");
  for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
  return a[int((n + 1) / 2)]
}
END {
  printf "%-36s %10s %10s %7s %10s %10s %7s\n", "suite (1400 B)", "Seal ns", "bare ns", "ratio", "Open ns", "bare ns", "ratio"
  for (s in suites) {
    se = median(v["Seal", s]); bs = median(v["BareSeal", s]); op = median(v["Open", s]); bo = median(v["BareOpen", s])
    printf "%-36s %10.0f %10.0f %6.0f%% %10.0f %10.0f %6.0f%%\n", s, se, bs, 100 * bs / se, op, bo, 100 * bo / op
  }
}' | sort
