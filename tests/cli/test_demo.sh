#!/usr/bin/env bash
# tally demo runs both pipelines as daemons on librdkafka's in-process mock
# cluster, stops by itself with --duration, exits 0, says where its databases
# are, and those databases hold what the demo reported: every produced event
# applied, skipped or dead-lettered; the malformed ones it slipped in counted
# as dead letters; windows whose counts add up to the applied orders.
set -euo pipefail
: "${TALLY:?}"
dir=$(mktemp -d /tmp/tally-cli-demo-XXXXXX)
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

out=$("$TALLY" demo --duration 3s --rate 400 --dir "$dir/demo")
orders="$dir/demo/orders.db"
telemetry="$dir/demo/telemetry.db"
grep -qF "$orders" <<<"$out" || fail "orders database path not printed: $out"
grep -qF "$telemetry" <<<"$out" || fail "telemetry database path not printed"
grep -q "busiest windows" <<<"$out" || fail "no live view printed"

q() { "$TALLY" query --db "$1" --format csv "$2" | tail -n +2 | tr -d '\r'; }
summary=$(grep '^tally demo: stopped' <<<"$out")
produced_orders=$(sed -E 's/.*produced orders=([0-9]+).*/\1/' <<<"$summary")
produced_telemetry=$(sed -E 's/.*telemetry=([0-9]+);.*/\1/' <<<"$summary")
[ "$produced_orders" -ge 1000 ] || fail "only $produced_orders orders produced"

applied=$(q "$orders" "SELECT value FROM meta WHERE key = 'pipeline.orders.events_applied'")
rejected=$(q "$orders" "SELECT value FROM meta WHERE key = 'pipeline.orders.events_rejected'")
[ "$((applied + rejected))" = "$produced_orders" ] ||
    fail "orders: applied $applied + dead-lettered $rejected != produced $produced_orders"
[ "$rejected" -ge 2 ] || fail "the malformed orders were not dead-lettered ($rejected)"
[ "$(q "$orders" "SELECT sum(count) FROM order_windows")" = "$applied" ] || fail "sum(count) != $applied"
[ "$(q "$orders" "SELECT count(*) FROM changelog")" -gt 0 ] || fail "empty changelog"

t_done=$(q "$telemetry" "SELECT sum(value) FROM meta WHERE key IN ('pipeline.telemetry.events_applied', 'pipeline.telemetry.events_skipped', 'pipeline.telemetry.events_rejected')")
[ "$t_done" = "$produced_telemetry" ] || fail "telemetry: done $t_done != produced $produced_telemetry"
[ "$(q "$telemetry" "SELECT count(*) FROM vehicle_latest")" -gt 0 ] || fail "no vehicles"
# the daemons recorded their input positions in the same transactions
[ "$(q "$orders" "SELECT count(*) FROM meta WHERE key LIKE 'kafka.input.%'")" -ge 1 ] ||
    fail "no input positions recorded"

# a bad flag says what is wrong and exits 2
set +e
"$TALLY" demo --duration soon 2>"$dir/err"; rc=$?
set -e
[ $rc -eq 2 ] || fail "bad --duration exit $rc"
grep -q "invalid duration" "$dir/err" || fail "no message for a bad duration"
echo "ok: demo"
