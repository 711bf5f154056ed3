#!/usr/bin/env bash
# test_run_window_stream.sh - `tally run --pipeline telemetry --strategy
# window_stream` on a real broker: event-time windows of 10 s with 3 s of
# allowed lateness, outputs packed 3 records to a message (--batch-size 3).
#
# 3000 readings for 25 vehicles span 60 s of event time, up to 6 s out of
# order, on one partition (so the input order is defined). awk replays the
# rule independently: a reading is late when its received_at is before the
# newest accepted received_at minus the lateness, rounded down to a window
# boundary. Checked:
#   - late readings: counted (meta, log event=late), dead-lettered once each
#     with the reason, never applied - the state equals the latest record of
#     the accepted readings only;
#   - a vehicle whose readings are all in a window still open has no output,
#     and is pending; after a reading far ahead closes every window it does;
#   - a kill -9 mid-run and a restart change nothing of the above;
#   - the latest output per VIN (packed messages unpacked) equals the state;
#   - /metrics counts the late readings (tally_events_late_total).
# shellcheck source=../lib/tally.sh
source "$(dirname "$0")/../lib/tally.sh"

N=3000
W=10000
L=3000
BASE=1700000000000
new_stream telemetry.db
ARGS=(--pipeline telemetry "${STREAM_ARGS[@]}" --max-batch 100 --strategy window_stream --window-size 10s
    --allowed-lateness 3s --batch-size 3)

expect_usage_error "--allowed-lateness without window_stream" --pipeline telemetry \
    --brokers "$KAFKA_BROKERS" --strategy inline --allowed-lateness 3s
expect_usage_error "--batch-size with log_compacted" --pipeline telemetry \
    --brokers "$KAFKA_BROKERS" --strategy log_compacted --batch-size 3
expect_usage_error "--strategy window_stream for orders" --pipeline orders \
    --brokers "$KAFKA_BROKERS" --strategy window_stream

create_topic "$IN" 1
T0=$(date +%s%3N)
# Readings i = 0..N-1 at BASE + 20 i minus up to 6 s; one or two sensors each.
awk -v n="$N" -v base="$BASE" 'BEGIN {
    srand(7)
    split("battery,door,fuel,gear,speed,temp", names, ",")
    for (i = 0; i < n; i++) {
        vin = sprintf("VIN%03d", int(rand() * 25))
        at = 20 * i - int(rand() * 6000); if (at < 0) at = 0
        s1 = names[int(rand() * 6) + 1]
        v1 = (s1 == "door") ? (rand() < 0.5 ? "\"open\"" : "\"closed\"") : sprintf("%d.%d", int(rand() * 200), i % 10)
        data = sprintf("\"id\":\"%s\",\"%s\":%s", vin, s1, v1)
        if (rand() < 0.3) { s2 = names[int(rand() * 6) + 1]; if (s2 != s1) data = data sprintf(",\"%s\":%d", s2, i) }
        # base + at without floating point: base ends in 000000000
        printf "%s|{\"data\":{%s},\"received_at\":%d%09d,\"produced_at\":%d%09d}\n", vin, data,
            substr(base, 1, 4), at, substr(base, 1, 4), at + 1
    }
}' >"$WORK/main.kv"
# A vehicle whose readings all fall in the last window, [BASE+50s, BASE+60s):
# still open when the main readings end (newest ~BASE+60s - 3 s < BASE+60s).
for k in 1 2 3; do
    printf 'VINLAST|{"data":{"id":"VINLAST","speed":%d},"received_at":%d%09d}\n' "$k" \
        "${BASE:0:4}" $((55000 + k))
done >"$WORK/last.kv"
# One reading far ahead closes every window up to BASE+90s.
printf 'VINZZZ|{"data":{"id":"VINZZZ","speed":1},"received_at":%d%09d}\n' "${BASE:0:4}" 100000 \
    >"$WORK/ahead.kv"
head -n 1500 "$WORK/main.kv" >"$WORK/part1.kv"
tail -n +1501 "$WORK/main.kv" >"$WORK/part2.kv"
cat "$WORK/main.kv" "$WORK/last.kv" "$WORK/ahead.kv" >"$WORK/all.kv"

# The rule, applied independently in input order.
awk -v w="$W" -v l="$L" -F'|' '{
    match($2, /"received_at":[0-9]+/); t = substr($2, RSTART + 14, RLENGTH - 14) + 0
    if (seen && t < int((max - l) / w) * w) { print > "'"$WORK/late.kv"'"; next }
    print > "'"$WORK/accepted.kv"'"
    if (!seen || t > max) max = t
    seen = 1
}' "$WORK/all.kv"
n_late=$(wc -l <"$WORK/late.kv")
((n_late > 20 && n_late < N / 2)) || fail "the data should have some late readings, awk found $n_late"
note "$n_late of $N readings are late by the rule"
grep '^VIN0' "$WORK/accepted.kv" >"$WORK/accepted_main.kv"
expected_latest "$WORK/accepted_main.kv" >"$WORK/expected.tsv"

# applied: readings applied or found late.
applied() { meta_sum "$DB" pipeline.telemetry.events_applied pipeline.telemetry.events_late; }
# wait_readings N SECONDS: until N readings are applied or found late.
wait_readings() { wait_meta "$DB" "$1" "$2" "$TALLY_PID" pipeline.telemetry.events_applied pipeline.telemetry.events_late; }
# pending N: N vehicles pending.
pending() { [[ "$(sqlval "$DB" "SELECT count(*) FROM vehicle_pending")" == "$1" ]]; }

# ---- 1. first half, kill -9 while it is applied, restart, second half --------
produce "$IN" "$WORK/part1.kv"
tally_start "$LOG" "${ARGS[@]}" --http off
tally_wait_started "$TALLY_PID" "$LOG"
POLL_EVERY=0.05 wait_readings 300 60
kill -KILL "$TALLY_PID"
tally_wait_exit "$TALLY_PID" 10
note "killed after $(applied) readings"
# tally recover brings the database to what Kafka committed (a batch whose
# SQLite commit the kill cut off comes back from the changelog, counters too)
# without consuming: what the restarted process counts starts from here.
"$TALLY" recover --brokers "$KAFKA_BROKERS" "${ARGS[@]}" --http off >>"$LOG" 2>&1 ||
    fail "tally recover failed: $(tail -n 3 "$LOG")"
late_at_kill=$(meta "$DB" pipeline.telemetry.events_late)
PORT=$(free_port)
tally_start "$LOG" "${ARGS[@]}" --http "127.0.0.1:$PORT"
tally_wait_started "$TALLY_PID" "$LOG"
produce "$IN" "$WORK/part2.kv"
produce "$IN" "$WORK/last.kv"
wait_readings $((N + 3)) 120
sleep 1 # a last batch may still be committing its outputs
read_topic "$OUT" '%k\t%s\n' | unpack_records >"$WORK/before_ahead.tsv"
if grep -q '^VINLAST' "$WORK/before_ahead.tsv"; then
    fail "VINLAST was emitted although its window is still open"
fi
assert_eq "VINLAST pending (open window)" 1 \
    "$(sqlval "$DB" "SELECT count(*) FROM vehicle_pending WHERE vin = 'VINLAST'")"
ok

# ---- 2. a reading far ahead closes every window ------------------------------
produce "$IN" "$WORK/ahead.kv"
wait_readings $((N + 4)) 60
poll_until 30 "" "windows closing (one vehicle left pending)" pending 1
assert_eq "the one vehicle still pending" VINZZZ "$(sqlval "$DB" "SELECT vin FROM vehicle_pending")"
curl -s -o "$WORK/metrics.txt" "http://127.0.0.1:$PORT/metrics" || fail "cannot scrape /metrics"
tally_stop "$TALLY_PID"

# The counters in meta commit with SQLite; a kill -9 between a batch's Kafka
# commit and SQLite's loses nothing of them either (the changelog's counters
# row brings them back with the state).
assert_eq "late readings (meta)" "$n_late" "$(meta "$DB" pipeline.telemetry.events_late)"
assert_eq "applied readings (meta)" $((N + 4 - n_late)) "$(meta "$DB" pipeline.telemetry.events_applied)"
assert_eq "tally_events_late_total (the restarted process)" $((n_late - ${late_at_kill:-0})) \
    "$(metric "$WORK/metrics.txt" tally_events_late_total)"
assert_eq "tally_events_dead_lettered_total (the restarted process)" $((n_late - ${late_at_kill:-0})) \
    "$(metric "$WORK/metrics.txt" tally_events_dead_lettered_total)"
assert_eq "DLQ records (each late reading once)" "$n_late" "$(dlq_records "$PREFIX")"
read_topic "$PREFIX-dlq" '%h\n' | grep -c 'tally.error=late: received_at' >"$WORK/dlq_late" || true
assert_eq "DLQ records with the late reason" "$n_late" "$(cat "$WORK/dlq_late")"
grep -q 'event=late .*reason="late: received_at' "$LOG" || fail "no event=late log line"
# the dead letters are exactly the late readings, in order
read_topic "$PREFIX-dlq" '%s\n' >"$WORK/dlq.txt"
cut -d'|' -f2- "$WORK/late.kv" >"$WORK/late.txt"
assert_files_eq "dead-lettered payloads = the late readings" "$WORK/late.txt" "$WORK/dlq.txt"

sqlite3 -batch -readonly "$DB" "SELECT vin || char(9) || record FROM vehicle_latest WHERE vin LIKE 'VIN0%' ORDER BY vin" >"$WORK/state.tsv"
assert_files_eq "vehicle_latest = latest of the accepted readings" "$WORK/expected.tsv" "$WORK/state.tsv"

latest_outputs "$OUT" "$T0" | grep '^VIN0' >"$WORK/output.tsv"
without_produced_at "$WORK/expected.tsv" >"$WORK/expected_out.tsv"
assert_files_eq "latest output record per VIN" "$WORK/expected_out.tsv" "$WORK/output.tsv"
read_topic "$OUT" '%k\t%s\n' | unpack_records | grep -c '^VINLAST' >"$WORK/n_last" || true
(($(cat "$WORK/n_last") >= 1)) || fail "VINLAST was not emitted after its window closed"
if read_topic "$OUT" '%k\t%s\n' | unpack_records | grep -q '^VINZZZ'; then
    fail "VINZZZ was emitted although its window is open"
fi
messages=$(read_topic "$OUT" '%o\n' | wc -l)
records=$(read_topic "$OUT" '%k\t%s\n' | unpack_records | wc -l)
((messages < records)) || fail "$records records in $messages messages: not packed"
read_topic "$OUT" '%s\n' | awk '{ n = gsub(/\{"data":/, "&"); if (n > 3) bad = 1 } END { exit bad }' ||
    fail "a message packs more than --batch-size 3 records"
ok
finish "$N readings, $n_late late, $records records in $messages messages"
