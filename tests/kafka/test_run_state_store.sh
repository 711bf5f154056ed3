#!/usr/bin/env bash
# test_run_state_store.sh - `tally run --pipeline telemetry --strategy
# state_store` with `tally publish` as a separate process, on a real broker.
#
# The daemon emits nothing; publish reads the live database and emits the
# latest record of every vehicle changed since its last cycle, then forgets
# them there. Checked: nothing on the output topic before a publish; one
# --once cycle emits every vehicle once; while readings keep arriving, both
# the daemon and the publisher are killed with kill -9 and restarted, and
# the publisher packs records (--batch-size 2) for a while; at the end nothing
# is pending and the latest output per VIN equals the awk-computed latest
# record and the state.
# shellcheck source=../lib/tally.sh
source "$(dirname "$0")/../lib/tally.sh"

N=4000
new_stream telemetry.db
PLOG=$WORK/publish.log
ARGS=(--pipeline telemetry "${STREAM_ARGS[@]}" --max-batch 100 --strategy state_store --http off)
PUBLISH=(publish --db "$DB" --brokers "$KAFKA_BROKERS" --output-topic "$OUT")

expect_publish_usage_error() { # WHAT ARGS...
    local what=$1
    shift
    RC=0
    "$TALLY" publish "$@" >"$WORK/usage.out" 2>&1 || RC=$?
    [[ $RC -eq 2 ]] || fail "$what: exit status $RC, expected 2: $(cat "$WORK/usage.out")"
    grep -q "tally publish" "$WORK/usage.out" || fail "$what: no message: $(cat "$WORK/usage.out")"
    ok
}
expect_publish_usage_error "no --db" --brokers "$KAFKA_BROKERS"
expect_publish_usage_error "--pipeline orders" --db x --brokers "$KAFKA_BROKERS" --pipeline orders
expect_publish_usage_error "--interval 0" --db x --brokers "$KAFKA_BROKERS" --interval 0
"$TALLY" publish --db "$WORK/none.db" --brokers "$KAFKA_BROKERS" >"$WORK/nodb.out" 2>&1 && fail "publish without a database succeeded"
grep -q "no database at" "$WORK/nodb.out" || fail "no clear message for a missing database: $(cat "$WORK/nodb.out")"

create_topic "$IN" 3
T0=$(date +%s%3N)
gen_readings "$N" 11 >"$WORK/readings.kv"
expected_latest "$WORK/readings.kv" >"$WORK/expected.tsv"
head -n 1000 "$WORK/readings.kv" >"$WORK/part1.kv"
tail -n +1001 "$WORK/readings.kv" >"$WORK/part2.kv"
split -n l/3 -d "$WORK/part2.kv" "$WORK/chunk"

wait_applied() { wait_meta "$DB" "$1" "$2" "$TALLY_PID" pipeline.telemetry.events_applied; } # N SECONDS
output_records() { read_topic "$OUT" '%k\t%s\n' | unpack_records | grep -c . || true; }
# pending N: N vehicles pending.
pending() { [[ "$(sqlval "$DB" "SELECT count(*) FROM vehicle_pending")" == "$1" ]]; }
publish_start() { # ARGS...: the publisher in the background (PUB_PID)
    local daemon=$TALLY_PID
    tally_bg "$PLOG" "${PUBLISH[@]}" "$@"
    PUB_PID=$TALLY_PID
    TALLY_PID=$daemon
}

# ---- 1. the daemon keeps the state and emits nothing; one publish cycle ------
produce "$IN" "$WORK/part1.kv"
tally_start "$LOG" "${ARGS[@]}"
tally_wait_started "$TALLY_PID" "$LOG"
wait_applied 1000 60
sleep 0.5
assert_eq "output records from the daemon itself" 0 "$(output_records)"
pending=$(sqlval "$DB" "SELECT count(DISTINCT vin) FROM vehicle_pending")
((pending > 0)) || fail "nothing pending after 1000 readings"
"$TALLY" "${PUBLISH[@]}" --once >>"$PLOG" 2>&1 || fail "publish --once failed: $(tail -n 3 "$PLOG")"
line=$(grep 'event=flush ' "$PLOG" | tail -n 1)
assert_eq "vin_count of the first cycle" "$pending" "$(log_field "$line" vin_count)"
assert_eq "output records after one cycle (one per vehicle)" "$pending" "$(output_records)"
assert_eq "pending after the cycle" 0 "$(sqlval "$DB" "SELECT count(*) FROM vehicle_pending")"
"$TALLY" "${PUBLISH[@]}" --once >>"$PLOG" 2>&1 || fail "second publish --once failed"
assert_eq "a cycle with nothing changed emits nothing" "$pending" "$(output_records)"

# ---- 2. readings keep coming; kill -9 the publisher and the daemon -----------
publish_start --interval 300ms --batch-size 2
produce "$IN" "$WORK/chunk00"
sleep 0.6
kill -KILL "$PUB_PID"
tally_wait_exit "$PUB_PID" 10
kill -KILL "$TALLY_PID"
tally_wait_exit "$TALLY_PID" 10
produce "$IN" "$WORK/chunk01"
tally_start "$LOG" "${ARGS[@]}"
tally_wait_started "$TALLY_PID" "$LOG"
publish_start --interval 300ms
produce "$IN" "$WORK/chunk02"
wait_applied "$N" 120
POLL_EVERY=0.3 poll_until 30 "" "nothing pending after the last reading" pending 0
kill -TERM "$PUB_PID"
tally_wait_exit "$PUB_PID" 30
assert_eq "publish exit status after SIGTERM" 0 "$RC"
tally_stop "$TALLY_PID"

check_latest "through kills of both" "$OUT" "$T0" "$WORK/expected.tsv" "$DB"
grep -q 'message_count=' "$PLOG" || fail "publish logged no event=flush"
cycles=$(grep -c 'event=flush ' "$PLOG")
finish "$N readings, $cycles publish cycles, $(output_records) output records"
