#!/usr/bin/env bash
# Runs every fuzz target in the module for FUZZTIME each (default 10s).
#
# A run that fails with nothing but "context deadline exceeded" at the end
# of -fuzztime, having written no failing input, is Go's fuzz coordinator
# racing its own deadline (golang/go#75804, fixed in Go 1.27, not in 1.26):
# that target is run once more, and only a failure with a written input or
# any other message fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."
t=${FUZZTIME:-10s}
fail=0
log=$(mktemp /tmp/gosec-fuzz.XXXXXX)
trap 'rm -f "$log"' EXIT

# corpus_count DIR TARGET prints how many inputs the target's corpus holds.
corpus_count() {
  local d="$1/testdata/fuzz/$2"
  if [ -d "$d" ]; then find "$d" -type f | wc -l; else echo 0; fi
}

# deadline_race LOG tells whether LOG's only failure is the coordinator race.
deadline_race() {
  grep -q '^    context deadline exceeded$' "$1" &&
    ! grep -q -e 'Failing input written' -e '^panic:' "$1" &&
    [ "$(grep -c -e '^    ' "$1")" -eq 1 ]
}

for pkg in $(go list ./...); do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  for f in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u); do
    echo "fuzz $pkg $f ($t)"
    for attempt in 1 2; do
      before=$(corpus_count "$dir" "$f")
      if go test -run '^$' -fuzz "^$f\$" -fuzztime "$t" "$pkg" >"$log" 2>&1; then
        break
      fi
      after=$(corpus_count "$dir" "$f")
      if [ "$attempt" = 1 ] && [ "$before" = "$after" ] && deadline_race "$log"; then
        echo "  $f: bare 'context deadline exceeded' with no input written (golang/go#75804); running it again"
        continue
      fi
      cat "$log"
      fail=1
      break
    done
  done
done
exit $fail
