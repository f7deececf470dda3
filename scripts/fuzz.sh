#!/usr/bin/env bash
# Runs every fuzz target in the module for FUZZTIME each (default 10s).
set -euo pipefail
cd "$(dirname "$0")/.."
t=${FUZZTIME:-10s}
fail=0
for pkg in $(go list ./...); do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  for f in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u); do
    echo "fuzz $pkg $f ($t)"
    go test -run '^$' -fuzz "^$f\$" -fuzztime "$t" "$pkg" >/tmp/gosec-fuzz.$$.log 2>&1 || { cat /tmp/gosec-fuzz.$$.log; fail=1; }
  done
done
rm -f /tmp/gosec-fuzz.$$.log
exit $fail
