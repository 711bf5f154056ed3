#!/usr/bin/env bash
# tally demo stops by itself with --duration, exits 0, says where its database
# is, and that database holds what the demo reported: state for both pipelines,
# the malformed events it slipped in counted as rejected, and a changelog.
set -euo pipefail
: "${TALLY:?}"
dir=$(mktemp -d /tmp/tally-cli-demo-XXXXXX)
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

out=$("$TALLY" demo --duration 3s --rate 1000 --dir "$dir/demo")
db="$dir/demo/state.db"
grep -q "state database $db" <<<"$out" || fail "database path not printed: $out"
grep -q "busiest windows" <<<"$out" || fail "no live view printed"

q() { "$TALLY" query --db "$db" --format csv "$1" | tail -n +2 | tr -d '\r'; }
windows=$(q "SELECT count(*) FROM order_windows")
vehicles=$(q "SELECT count(*) FROM vehicle_latest")
[ "$windows" -gt 0 ] || fail "no order windows"
[ "$vehicles" -gt 0 ] || fail "no vehicles"
# what the summary line says equals what the database says
summary=$(grep '^tally demo: stopped' <<<"$out")
orders_applied=$(sed -E 's/.*orders applied=([0-9]+).*/\1/' <<<"$summary")
[ "$(q "SELECT sum(count) FROM order_windows")" = "$orders_applied" ] || fail "sum(count) != $orders_applied"
[ "$(q "SELECT value FROM meta WHERE key = 'pipeline.orders.events_applied'")" = "$orders_applied" ] ||
    fail "events_applied != $orders_applied"
[ "$(q "SELECT value FROM meta WHERE key = 'pipeline.orders.events_rejected'")" -ge 1 ] ||
    fail "the malformed orders were not counted"
[ "$(q "SELECT count(*) FROM changelog")" -gt 0 ] || fail "empty changelog"

# a bad flag says what is wrong and exits 2
set +e
"$TALLY" demo --duration soon 2>"$dir/err"; rc=$?
set -e
[ $rc -eq 2 ] || fail "bad --duration exit $rc"
grep -q "invalid duration" "$dir/err" || fail "no message for a bad duration"
echo "ok: demo"
