#!/usr/bin/env bash
# test_run_telemetry.sh - `tally run --pipeline telemetry --strategy inline` on
# a real broker (test_run_log_compacted.sh covers the default strategy).
#
# 4000 readings for 25 vehicles x 6 sensors arrive out of order (received_at
# shuffled), over 3 partitions, with vehicles whose data.id is empty (skipped)
# and malformed payloads (dead-lettered). The latest committed output per VIN
# (read_committed, kcat) must equal the record awk computes (produced_at aside:
# it is the emit time, checked apart): per sensor the value
# with the newest received_at, sensors in name order, received_at and
# produced_at the newest of the winning readings. The state's vehicle_latest
# view must hold the same records, also after the database is lost and
# rebuilt from the changelog topic (which also brings back the input
# positions of every batch).
# shellcheck source=../lib/tally.sh
source "$(dirname "$0")/../lib/tally.sh"

N=4000
new_stream telemetry.db
ARGS=(--pipeline telemetry "${STREAM_ARGS[@]}" --max-batch 300 --strategy inline)

PARTITIONS=3
create_topic "$IN" "$PARTITIONS"
T0=$(date +%s%3N)

gen_readings "$N" 42 >"$WORK/readings.kv"
printf 'x|{"data":{"id":"","speed":1},"received_at":5}\n%.0s' 1 2 3 >"$WORK/skipped.kv"
printf '%s\n' 'x|{"data":{"id":"VIN001","speed":1},"received_at":"soon"}' 'x|not json' \
    'x|{"data":"VIN001","received_at":5}' >"$WORK/bad.kv"
cat "$WORK/readings.kv" "$WORK/skipped.kv" "$WORK/bad.kv" | shuf --random-source=<(yes) >"$WORK/input.kv"
produce "$IN" "$WORK/input.kv"

expected_latest "$WORK/readings.kv" >"$WORK/expected.tsv"
[[ $(wc -l <"$WORK/expected.tsv") -eq 25 ]] || fail "expected 25 vehicles, awk made $(wc -l <"$WORK/expected.tsv")"

tally_start "$LOG" "${ARGS[@]}"
tally_wait_started "$TALLY_PID" "$LOG"

total=$(wc -l <"$WORK/input.kv")
wait_meta "$DB" "$total" 120 "$TALLY_PID" pipeline.telemetry.events_applied pipeline.telemetry.events_skipped \
    pipeline.telemetry.events_rejected
tally_stop "$TALLY_PID"

assert_eq "applied readings" "$N" "$(meta "$DB" pipeline.telemetry.events_applied)"
assert_eq "skipped (empty data.id)" 3 "$(meta "$DB" pipeline.telemetry.events_skipped)"
assert_eq "dead-lettered" 3 "$(meta "$DB" pipeline.telemetry.events_rejected)"
assert_eq "DLQ records" 3 "$(dlq_records "$PREFIX")"
[[ $(grep -c 'event=skip ' "$LOG") -eq 3 ]] || fail "expected 3 event=skip log lines"
ok

# Latest committed output per VIN: for one key, records stay in one partition
# in order, so the last one kcat prints is the latest.
check_latest "inline" "$OUT" "$T0" "$WORK/expected.tsv" "$DB"

# The database is lost (snapshots too: they live in the state directory): the
# restart rebuilds it from the changelog topic alone, one record per vehicle
# and batch (the newest record of a VIN holds the whole vehicle), and emits
# nothing again (inline: the committed history already has every output).
outputs_before=$(read_topic "$OUT" '%o\n' | wc -l)
rm -rf "$STATE"
tally_start "$LOG" "${ARGS[@]}" --http off
tally_wait_started "$TALLY_PID" "$LOG"
line=$(grep 'event=recovered' "$LOG" | tail -n 1)
assert_eq "recovery source after the database was lost" new "$(log_field "$line" source)"
# ... and each input partition is rebuilt from its changelog partition as it
# is assigned, before it is read.
# rebuilt_all: every partition was rebuilt from the changelog.
rebuilt_all() {
    rebuilt=$(grep -c 'event=partition_assigned .*source=changelog' "$LOG" || true)
    POLL_STATE="$rebuilt of $PARTITIONS"
    ((rebuilt == PARTITIONS))
}
POLL_EVERY=0.1 poll_until 30 "$TALLY_PID" "partitions rebuilt from the changelog" rebuilt_all
assert_eq "partitions rebuilt from the changelog after the database was lost" "$PARTITIONS" "$rebuilt"
sleep 1
tally_stop "$TALLY_PID"
vehicle_latest "$DB" >"$WORK/rebuilt.tsv"
assert_files_eq "vehicle_latest rebuilt from the changelog topic" "$WORK/expected.tsv" "$WORK/rebuilt.tsv"
check_positions "telemetry rebuilt from the changelog" "$DB" "$IN"
assert_eq "vehicles pending after the rebuild (all emitted before)" 0 \
    "$(sqlval "$DB" "SELECT count(*) FROM vehicle_pending")"
assert_eq "output records after the rebuild (nothing emitted twice)" "$outputs_before" \
    "$(read_topic "$OUT" '%o\n' | wc -l)"
changelog_records=$(read_topic "$PREFIX-changelog" '%o\n' | wc -l)
((changelog_records < N / 2)) || fail "$changelog_records changelog records for $N readings: not one per vehicle and batch"
note "$changelog_records changelog records for $N readings"

finish "$N readings, 25 vehicles"
