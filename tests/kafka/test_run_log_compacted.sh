#!/usr/bin/env bash
# test_run_log_compacted.sh - `tally run --pipeline telemetry --strategy
# log_compacted` on a real broker: outputs go out only at flushes, one
# transaction each, as the latest record of every vehicle changed since the
# last flush; a crash right after a flush's Kafka commit (before the database
# forgets what it emitted) and a kill -9 between flushes neither lose nor skip
# a vehicle:
# the latest output per VIN equals the awk-computed latest record, and so does
# the state.
# shellcheck source=../lib/tally.sh
source "$(dirname "$0")/../lib/tally.sh"

N=3000
new_stream telemetry.db
ARGS=(--pipeline telemetry "${STREAM_ARGS[@]}" --max-batch 200 --strategy log_compacted --http off)

expect_usage_error "--strategy bogus" --pipeline telemetry --brokers "$KAFKA_BROKERS" --strategy bogus
expect_usage_error "--flush-interval 0" --pipeline telemetry --brokers "$KAFKA_BROKERS" --flush-interval 0

create_topic "$IN" 3
T0=$(date +%s%3N)
gen_readings "$N" 7 >"$WORK/readings.kv"
expected_latest "$WORK/readings.kv" >"$WORK/expected.tsv"
head -n 1000 "$WORK/readings.kv" >"$WORK/part1.kv"
sed -n '1001,2000p' "$WORK/readings.kv" >"$WORK/part2.kv"
tail -n +2001 "$WORK/readings.kv" >"$WORK/part3.kv"

wait_applied() { wait_meta "$DB" "$1" "$2" "$TALLY_PID" pipeline.telemetry.events_applied; } # N SECONDS
output_records() { read_topic "$OUT" '%k\n' | grep -c . || true; }

# ---- 1. nothing goes out before the first flush; then one flush, all of it ----
produce "$IN" "$WORK/part1.kv"
tally_start "$LOG" "${ARGS[@]}" --flush-interval 6s
tally_wait_started "$TALLY_PID" "$LOG"
wait_applied 1000 60
assert_eq "output records before the first flush" 0 "$(output_records)"
poll_until 30 "" "event=flush" grep -q 'event=flush ' "$LOG"
flush_line=$(grep -m1 'event=flush ' "$LOG")
vins=$(sed -E 's/.* vin_count=([0-9]+).*/\1/' <<<"$flush_line")
((vins > 0 && vins <= 25)) || fail "first flush: vin_count=$vins: $flush_line"
assert_eq "output records after the first flush (one per vehicle)" "$vins" "$(output_records)"
ok

# ---- 2. crash right after a flush's Kafka commit: the restart repeats it -------
tally_stop "$TALLY_PID"
produce "$IN" "$WORK/part2.kv"
TALLY_CRASH_AT=after_flush tally_start "$LOG" "${ARGS[@]}" --flush-interval 1s
tally_wait_exit "$TALLY_PID" 60
assert_eq "exit status at the after_flush crash point" 134 "$RC"
pending_at_crash=$(sqlval "$DB" "SELECT count(*) FROM vehicle_pending")
((pending_at_crash > 0)) || fail "the crash after the flush's Kafka commit left nothing pending"
note "$pending_at_crash vehicles still pending after the crash between Kafka and SQLite"


# ---- 3. kill -9 between flushes while the last part arrives, then run out ------
tally_start "$LOG" "${ARGS[@]}" --flush-interval 1s
tally_wait_started "$TALLY_PID" "$LOG"
produce "$IN" "$WORK/part3.kv"
sleep 0.7
kill -KILL "$TALLY_PID"
tally_wait_exit "$TALLY_PID" 10
tally_start "$LOG" "${ARGS[@]}" --flush-interval 1s
tally_wait_started "$TALLY_PID" "$LOG"
wait_applied "$N" 90
sleep 1.5 # at least one flush after the last batch
tally_stop "$TALLY_PID"
grep -q 'event=shutdown_flush \|event=flush ' "$LOG" || fail "no flush logged"
assert_eq "vehicles pending at the end (everything flushed)" 0 \
    "$(sqlval "$DB" "SELECT count(*) FROM vehicle_pending")"
ok

check_latest "after the crash and the kill" "$OUT" "$T0" "$WORK/expected.tsv" "$DB"
records=$(output_records)
flushes=$(grep -c 'event=flush \|event=shutdown_flush ' "$LOG")
note "$records output records in $flushes flushes for $N readings"
((records < N / 4)) || fail "$records output records for $N readings: not compacted into flushes"
finish "$N readings, $flushes flushes, $records output records"
