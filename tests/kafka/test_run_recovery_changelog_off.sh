#!/usr/bin/env bash
# test_run_recovery_changelog_off.sh - recovery of `tally run --changelog off`
# on a real broker, where nothing in Kafka can rebuild the state and the input
# is read again from the positions SQLite recorded:
#
#   1. never start empty when history exists: orders consumed, the state
#      directory deleted, no snapshot: the restart exits 1 and says what is
#      missing and that --allow-empty exists; a second restart still refuses
#      (the refused start left nothing it would accept); `tally recover
#      --dry-run` says the same and exits 1; --allow-empty starts, counts only
#      the orders produced after it (the group's committed offsets), and the
#      next restart without it is accepted;
#   2. a crash between the Kafka and the SQLite commit (TALLY_CRASH_AT=
#      after_commit, batch 3), then kill -9 at random moments while orders keep
#      arriving: each restart reads the input again from the positions SQLite
#      recorded, so the state ends exact; outputs and dead letters of a
#      re-read batch repeat with the same values, so the latest output per key
#      (what check_totals compares) is exact and the DLQ holds every malformed
#      line (at least once, nothing else);
#   3. the database lost after a kill -9, a snapshot left: the snapshot is
#      restored (source=snapshot) and the input is read again from the
#      positions inside it, to exact totals;
#   4. every snapshot corrupted and the database lost: the restart exits 1,
#      naming the rejected snapshots and --allow-empty;
#   5. the crash of case 2 in the first batch that reads a partition the state
#      has never recorded a position for (the state holds nothing of that
#      partition, while the group's committed offset is past the batch): the
#      restart reads that partition from its start and ends exact.
# shellcheck source=../lib/tally.sh
source "$(dirname "$0")/../lib/tally.sh"

# refused_run WHAT ARGS...: `tally run ARGS` must exit 1 within 90 s, its
# stderr in $WORK/refused.err.
refused_run() {
    local what=$1 rc=0
    shift
    timeout 90 "$TALLY" run --pipeline orders --brokers "$KAFKA_BROKERS" "$@" \
        >"$WORK/refused.out" 2>"$WORK/refused.err" || rc=$?
    assert_eq "$what: exit status (stderr: $(tail -n 2 "$WORK/refused.err" | cut -c1-400))" 1 "$rc"
    if grep -q 'event=started' "$WORK/refused.err"; then fail "$what: it started consuming"; fi
    ok
}

# ---- 1. never start empty when history exists -------------------------------
new_stream orders.db 1
ARGS=("${STREAM_ARGS[@]}" --changelog off --snapshot-interval 0 --max-batch 200)
create_topic "$IN" 2
: >"$WORK/before.tsv"
: >"$WORK/after.tsv"
gen_orders 600 61 1 "$WORK/before.tsv" >"$WORK/before.kv"
gen_orders 400 62 601 "$WORK/after.tsv" >"$WORK/after.kv"
produce "$IN" "$WORK/before.kv"
next_run_started "${ARGS[@]}"
wait_done "$DB" 600 "$PREFIX" 0 60 "$TALLY_PID"
tally_stop "$TALLY_PID"
check_totals "changelog off, before the loss" "$WORK/before.tsv" "$DB" "$OUT"

rm -rf "$STATE"
refused_run "state directory deleted" "${ARGS[@]}"
expect_in "$WORK/refused.err" "the refusal" "tally run: refusing to start with an empty state" \
    "the database $DB is missing" "no snapshot was found" "the changelog is off (--changelog off)" \
    "the consumer group has committed input offsets" "--allow-empty"
# Nothing it would later take for an intact database, nothing that blocks
# `tally restore` into that path.
[[ ! -e "$STATE/orders.db" ]] || fail "the refused start left $STATE/orders.db behind"
ok
refused_run "second restart after a refused one" "${ARGS[@]}"
expect_in "$WORK/refused.err" "the second refusal" "refusing to start with an empty state" "--allow-empty"
rc=0
"$TALLY" recover --pipeline orders --brokers "$KAFKA_BROKERS" --dry-run "${ARGS[@]}" \
    >"$WORK/plan.out" 2>"$WORK/plan.err" || rc=$?
assert_eq "tally recover --dry-run exit status when tally run would refuse" 1 "$rc"
expect_in "$WORK/plan.out" "the dry run's plan" "outcome     tally run would refuse to start: refusing" \
    "changelog   off" "--allow-empty"

next_run_started "${ARGS[@]}" --allow-empty
[[ "$(log_field "$RECOVERED" source)" =~ ^(new|local)$ && "$(log_field "$RECOVERED" records_replayed)" == 0 ]] ||
    fail "--allow-empty: unexpected recovered line: $RECOVERED"
ok
produce "$IN" "$WORK/after.kv"
wait_done "$DB" 400 "$PREFIX" 0 60 "$TALLY_PID"
tally_stop "$TALLY_PID"
# The orders before the loss are gone for good; the ones after it are exact.
expected_windows "$WORK/after.tsv" >"$WORK/expected-after.tsv"
state_windows "$DB" >"$WORK/state-after.tsv"
assert_files_eq "--allow-empty: the state holds exactly the orders produced after the start" \
    "$WORK/expected-after.tsv" "$WORK/state-after.tsv"
next_run_started "${ARGS[@]}"
assert_eq "restart after --allow-empty: source" local "$(log_field "$RECOVERED" source)"
tally_stop "$TALLY_PID"

# ---- 2. crash after the Kafka commit, then kill -9 mid-stream ----------------
new_stream orders.db 2
ARGS=("${STREAM_ARGS[@]}" --changelog off --snapshot-interval 0 --max-batch 200)
create_topic "$IN" 3
: >"$WORK/orders2.tsv"
gen_orders 3000 71 1 "$WORK/orders2.tsv" >"$WORK/pre2.kv"
gen_malformed 10 "off-pre" >"$WORK/bad2.kv"
mix "$WORK/pre2.kv" "$WORK/bad2.kv" >"$WORK/input2.kv"
CHUNKS=4
for ((c = 1; c <= CHUNKS; c++)); do
    gen_orders 500 $((710 + c)) $((3001 + (c - 1) * 500)) "$WORK/orders2.tsv" >"$WORK/chunk$c.orders"
    gen_malformed 2 "off-chunk$c" >"$WORK/chunk$c.bad"
    cat "$WORK/chunk$c.bad" >>"$WORK/bad2.kv"
    mix "$WORK/chunk$c.orders" "$WORK/chunk$c.bad" >"$WORK/chunk$c.kv"
done
N2=$(wc -l <"$WORK/orders2.tsv")
produce "$IN" "$WORK/input2.kv"

export TALLY_CRASH_AT=after_commit TALLY_CRASH_BATCH=3
next_run "${ARGS[@]}"
FIRST_RUN2=$RUN
unset TALLY_CRASH_AT TALLY_CRASH_BATCH
tally_wait_exit "$TALLY_PID" 90
grep -q 'event=crash_point step=after_commit batch=3' "$LOG" ||
    fail "no crash_point line for after_commit batch 3 (status $RC): $(tail -n 2 "$LOG" | cut -c1-300)"
assert_eq "exit status of the crash (SIGABRT)" 134 "$RC"
crashed_with=$(orders_in "$DB")
# Kafka has batch 3 (its outputs count its orders), SQLite does not.
output_windows "$OUT" >"$WORK/crash-output.tsv"
in_kafka=$(total_count "$WORK/crash-output.tsv")
((in_kafka > crashed_with)) ||
    fail "after the crash the outputs count $in_kafka orders and SQLite $crashed_with: SQLite is not behind Kafka (test bug)"
ok

produce_chunks "$IN" "$CHUNKS"
kill9_loop 3 "" "$DB" 'SELECT coalesce(sum(count), 0) FROM order_window_state' 0.5 2.5 next_run "${ARGS[@]}"
wait_producer
next_run_started "${ARGS[@]}"
wait_orders "$DB" "$N2" 60 "$TALLY_PID" "the batches committed in Kafka but not in SQLite must be read again"
tally_stop "$TALLY_PID"
# Every restart found its database intact and replayed nothing.
for ((r = FIRST_RUN2 + 1; r <= RUN; r++)); do
    line=$(grep -m1 'event=recovered ' "$WORK/run$r.log" || true)
    [[ -z "$line" ]] && continue # killed before it got that far
    [[ "$(log_field "$line" source)" == local && "$(log_field "$line" records_replayed)" == 0 &&
        "$(log_field "$line" db)" == intact ]] || fail "changelog off: unexpected recovered line in run $r: $line"
    ok
done
check_totals "changelog off, crash after the Kafka commit and kill -9" "$WORK/orders2.tsv" "$DB" "$OUT"
check_dlq_set "$PREFIX" "$WORK/bad2.kv"
note "case 2: the crash left $crashed_with orders in SQLite, $in_kafka in Kafka; outputs written $(read_topic "$OUT" '%o\n' | wc -l) times for $(wc -l <"$WORK/actual-output.tsv") keys"

# ---- 3. database lost, snapshot left: the input from the snapshot's positions
new_stream orders.db 3
SNAPS=$WORK/snaps3
ARGS=("${STREAM_ARGS[@]}" --snapshot-dir "$SNAPS" --changelog off --max-batch 200)
create_topic "$IN" 2
: >"$WORK/orders3.tsv"
gen_orders 1000 91 1 "$WORK/orders3.tsv" >"$WORK/first3.kv"
gen_orders 800 92 1001 "$WORK/orders3.tsv" >"$WORK/second3.orders"
gen_malformed 4 "off-snap" >"$WORK/bad3.kv"
mix "$WORK/second3.orders" "$WORK/bad3.kv" >"$WORK/second3.kv"
produce "$IN" "$WORK/first3.kv"
next_run_started "${ARGS[@]}" --snapshot-interval 500ms
wait_done "$DB" 1000 "$PREFIX" 0 60 "$TALLY_PID"
wait_snapshot_of "$DB" "$LOG" 30 "$TALLY_PID"
S=$SNAP_ID
tally_stop "$TALLY_PID"
next_run_started "${ARGS[@]}" --snapshot-interval 0
produce "$IN" "$WORK/second3.kv"
wait_done "$DB" 1800 "$PREFIX" 4 60 "$TALLY_PID"
tally_kill9 "$TALLY_PID"
rm -rf "$STATE"
next_run_started "${ARGS[@]}" --snapshot-interval 0
assert_eq "changelog off, database lost: source" snapshot "$(log_field "$RECOVERED" source)"
assert_eq "changelog off, database lost: snapshot" "$S" "$(log_field "$RECOVERED" snapshot)"
assert_eq "changelog off, database lost: records_replayed" 0 "$(log_field "$RECOVERED" records_replayed)"
wait_orders "$DB" 1800 60 "$TALLY_PID" "the input after the snapshot's positions must be read again"
tally_stop "$TALLY_PID"
check_totals "changelog off, restored snapshot + input from its positions" "$WORK/orders3.tsv" "$DB" "$OUT"
check_dlq_set "$PREFIX" "$WORK/bad3.kv"

# ---- 4. every snapshot corrupted, database lost: refuse ----------------------
n_snaps=0
for f in "$SNAPS"/snapshot-*.db; do
    size=$(stat -c %s "$f")
    printf '\xff\xff\xff\xff' | dd of="$f" bs=1 seek=$((size / 2)) conv=notrunc status=none
    n_snaps=$((n_snaps + 1))
done
((n_snaps > 0)) || fail "no snapshot file left to corrupt (test bug)"
rm -rf "$STATE"
refused_run "every snapshot corrupted" "${ARGS[@]}" --snapshot-interval 0
expect_in "$WORK/refused.err" "the refusal with bad snapshots" "refusing to start with an empty state" \
    "snapshot(s) found verifies (see event=snapshot_rejected)" "--allow-empty"
rejected=$(grep -c 'event=snapshot_rejected ' "$WORK/refused.err" || true)
((rejected >= n_snaps)) || fail "only $rejected event=snapshot_rejected lines for $n_snaps corrupted snapshots"
ok

# ---- 5. crash in the first batch of a partition the state never recorded -----
new_stream orders.db 5
ARGS=("${STREAM_ARGS[@]}" --changelog off --snapshot-interval 0 --max-batch 200)
create_topic "$IN" 2
: >"$WORK/orders5.tsv"
gen_orders 400 81 1 "$WORK/orders5.tsv" >"$WORK/p0.kv"
gen_orders 600 82 401 "$WORK/orders5.tsv" >"$WORK/p1.kv"
produce "$IN" "$WORK/p0.kv" 0
next_run_started "${ARGS[@]}"
wait_done "$DB" 400 "$PREFIX" 0 60 "$TALLY_PID"
tally_stop "$TALLY_PID"
assert_eq "recorded position of partition 0" 400 "$(meta "$DB" "kafka.input.$IN.0")"
assert_eq "recorded position of partition 1 (never read)" "" "$(meta "$DB" "kafka.input.$IN.1")"
export TALLY_CRASH_AT=after_commit TALLY_CRASH_BATCH=1
next_run_started "${ARGS[@]}"
unset TALLY_CRASH_AT TALLY_CRASH_BATCH
produce "$IN" "$WORK/p1.kv" 1
tally_wait_exit "$TALLY_PID" 60
grep -q 'event=crash_point step=after_commit batch=1' "$LOG" ||
    fail "no crash_point line for after_commit batch 1 (status $RC): $(tail -n 2 "$LOG" | cut -c1-300)"
assert_eq "exit status of the crash in partition 1's first batch" 134 "$RC"
assert_eq "orders in SQLite after the crash" 400 "$(orders_in "$DB")"
output_windows "$OUT" >"$WORK/crash-output.tsv"
in_kafka=$(total_count "$WORK/crash-output.tsv")
((in_kafka > 400)) || fail "after the crash the outputs count $in_kafka orders: SQLite is not behind Kafka (test bug)"
ok
next_run_started "${ARGS[@]}"
wait_orders "$DB" 1000 30 "$TALLY_PID" \
    "partition 1's first batch, committed in Kafka but not in SQLite, must be read again"
tally_stop "$TALLY_PID"
check_totals "changelog off, crash in a new partition's first batch" "$WORK/orders5.tsv" "$DB" "$OUT"

finish "$RUN runs; crash left $crashed_with orders in SQLite"
