#!/usr/bin/env bash
# The apply benchmark runs every scenario to completion on a small input
# (bench_apply exits non-zero if any generated event is rejected). Figures
# are not checked here: performance is measured by running benchmarks/, not
# asserted by tests.
set -euo pipefail
: "${BENCH_APPLY:?}"
dir=$(mktemp -d /tmp/tally-bench-smoke-XXXXXX)
trap 'rm -rf "$dir"' EXIT
out=$("$BENCH_APPLY" --events 2000 --batch 500 --dir "$dir")
echo "$out"
for s in orders_many_keys orders_few_keys telemetry_full telemetry_single; do
    grep -q "^scenario=$s events=" <<<"$out" || { echo "FAIL: no line for $s" >&2; exit 1; }
done
# few keys coalesce: far fewer changelog rows than events
few=$(grep '^scenario=orders_few_keys' <<<"$out" | sed -E 's/.* changes=([0-9]+).*/\1/')
[ "$few" -lt 2000 ] || { echo "FAIL: orders_few_keys changes=$few, expected coalescing" >&2; exit 1; }
echo "ok: bench smoke"
