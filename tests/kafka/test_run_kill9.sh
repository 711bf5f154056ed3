#!/usr/bin/env bash
# test_run_kill9.sh - `tally run` killed with SIGKILL at random moments (10
# times, 0.5-3 s after each start: during startup, recovery, batches and
# snapshots) while orders keep arriving, each time restarted with the same
# --instance-id and --state-dir. Snapshots are taken every second into a
# directory outside the state directory; after kills 4 and 8 the whole state
# directory is deleted, so those restarts rebuild from snapshot + changelog.
# At the end it runs to completion: the latest committed output per key and
# the SQLite state equal the awk totals exactly (no order lost, none counted
# twice), and the DLQ holds each malformed line once.
# shellcheck source=../lib/tally.sh
source "$(dirname "$0")/../lib/tally.sh"

N_PRE=15000      # produced before the first start
CHUNKS=10        # then CHUNKS x N_CHUNK more, one chunk a second
N_CHUNK=1500
BAD_PER_CHUNK=2
KILLS=10
WIPE_AFTER=" 4 8 " # kills after which the state directory is deleted

# ---- flags: usage errors need no broker -----------------------------------
expect_usage_error "--max-batch 0" --pipeline orders --brokers "$KAFKA_BROKERS" --max-batch 0
expect_usage_error "--commit-interval-ms abc" --pipeline orders --brokers "$KAFKA_BROKERS" \
    --commit-interval-ms abc
expect_usage_error "unknown flag" --pipeline orders --brokers "$KAFKA_BROKERS" --no-such-flag

new_stream orders.db
RUN_ARGS=("${STREAM_ARGS[@]}" --max-batch 200 --snapshot-dir "$WORK/snaps" --snapshot-interval 1s)

create_topic "$IN" 3
: >"$WORK/orders.tsv"
: >"$WORK/bad.kv"
gen_orders "$N_PRE" 777 1 "$WORK/orders.tsv" >"$WORK/pre.kv"
gen_malformed 10 "pre" >>"$WORK/bad.kv"
mix "$WORK/pre.kv" "$WORK/bad.kv" >"$WORK/chunk0.kv"
for ((c = 1; c <= CHUNKS; c++)); do
    gen_orders "$N_CHUNK" $((1000 + c)) $((N_PRE + (c - 1) * N_CHUNK + 1)) "$WORK/orders.tsv" >"$WORK/orders$c.kv"
    gen_malformed "$BAD_PER_CHUNK" "chunk$c" >"$WORK/bad$c.kv"
    cat "$WORK/bad$c.kv" >>"$WORK/bad.kv"
    mix "$WORK/orders$c.kv" "$WORK/bad$c.kv" >"$WORK/chunk$c.kv"
done
N_ORDERS=$(wc -l <"$WORK/orders.tsv")
N_BAD=$(wc -l <"$WORK/bad.kv")
produce "$IN" "$WORK/chunk0.kv"

# Later chunks arrive while tally is being killed.
produce_chunks "$IN" "$CHUNKS"

# ---- kill -9 at random moments ---------------------------------------------
kill9_loop "$KILLS" "$WIPE_AFTER" "$DB" 'SELECT coalesce(sum(count), 0) FROM order_window_state' 0.5 3 \
    tally_start "$LOG" "${RUN_ARGS[@]}"
mid_stream=$MOVED
wait_producer
assert_eq "records in the input topic" $((N_ORDERS + N_BAD)) "$(topic_records "$IN")"

# ---- the last run goes to the end -------------------------------------------
tally_start "$LOG" "${RUN_ARGS[@]}"
tally_wait_started "$TALLY_PID" "$LOG"
wait_done "$DB" "$N_ORDERS" "$PREFIX" "$N_BAD" 150 "$TALLY_PID"
tally_stop "$TALLY_PID"

check_totals "after $KILLS kills" "$WORK/orders.tsv" "$DB" "$OUT"
check_dlq "$PREFIX" "$IN" "$WORK/bad.kv"

replays=$(grep -cE 'event=recovered .*records_replayed=[1-9]' "$LOG" || true)
rebuilt=$(grep -cE 'event=recovered source=(snapshot|changelog)' "$LOG" || true)
# Each wipe is followed by a start that rebuilds, unless the kill came before
# the first snapshot and changelog record (then it rebuilds from nothing).
((rebuilt >= 1)) || fail "no restart rebuilt the deleted state from a snapshot or the changelog"
finish "$KILLS kills ($mid_stream while the state moved), $replays changelog replays, $rebuilt rebuilds of a deleted state, $N_ORDERS orders"
