#!/usr/bin/env bash
# test_run_fencing.sh - two `tally run` processes with the same --instance-id
# (same group, same topics, different --state-dir). Instance A runs under load;
# B starts while A is committing batches. B's transactional producer and static
# group membership fence A: A must exit non-zero saying why (fenced / instance),
# B keeps going and consumes everything. Then the latest committed output per
# key (read_committed) equals the awk totals exactly - so nothing A wrote after
# it was fenced is visible - and the DLQ holds each malformed line once.
#
# B starts with an empty state directory: it must rebuild the state from the
# changelog topic (recovered source=changelog) and end with exact totals too.
source "$(dirname "$0")/lib_run.sh"

N_PRE=10000
CHUNKS=20
N_CHUNK=750

# ---- flags: usage errors need no broker -----------------------------------
expect_usage_error "--commit-interval-ms 0" --pipeline orders --brokers "$KAFKA_BROKERS" \
    --commit-interval-ms 0
expect_usage_error "--instance-id without a value" --pipeline orders --brokers "$KAFKA_BROKERS" \
    --instance-id

IN=$(name in)
OUT=$(name out)
PREFIX=$(name p)
INSTANCE=$(name i)
COMMON=(--input-topic "$IN" --output-topic "$OUT" --topic-prefix "$PREFIX" --group-id "$(name g)"
    --instance-id "$INSTANCE" --commit-interval-ms 50 --max-batch 200)
DB_A=$WORK/state-a/orders.db
DB_B=$WORK/state-b/orders.db

create_topic "$IN" 3
: >"$WORK/orders.tsv"
gen_orders "$N_PRE" 99 1 "$WORK/orders.tsv" >"$WORK/pre.kv"
gen_malformed 10 "fence" >"$WORK/bad.kv"
mix "$WORK/pre.kv" "$WORK/bad.kv" >"$WORK/chunk0.kv"
for ((c = 1; c <= CHUNKS; c++)); do
    gen_orders "$N_CHUNK" $((500 + c)) $((N_PRE + (c - 1) * N_CHUNK + 1)) "$WORK/orders.tsv" >"$WORK/chunk$c.kv"
done
# The tail is produced after A is gone, so B has work on every partition.
gen_orders "$N_CHUNK" 4711 $((N_PRE + CHUNKS * N_CHUNK + 1)) "$WORK/orders.tsv" >"$WORK/tail-orders.kv"
gen_malformed 5 "fence-tail" >"$WORK/tail-bad.kv"
cat "$WORK/tail-bad.kv" >>"$WORK/bad.kv"
mix "$WORK/tail-orders.kv" "$WORK/tail-bad.kv" >"$WORK/tail.kv"
N_ORDERS=$(wc -l <"$WORK/orders.tsv")
N_BAD=$(wc -l <"$WORK/bad.kv")
produce "$IN" "$WORK/chunk0.kv"

# ---- A runs; the input keeps coming --------------------------------------------
LOG_A=$WORK/a.log
LOG_B=$WORK/b.log
tally_start "$LOG_A" "${COMMON[@]}" --state-dir "$WORK/state-a"
PID_A=$TALLY_PID
tally_wait_started "$PID_A" "$LOG_A"

# Wait until A has committed a few batches, then start B while more input
# arrives (one chunk every 0.5 s).
limit=$((SECONDS + 60))
while :; do
    have=$(sqlval "$DB_A" 'SELECT coalesce(sum(count), 0) FROM order_window_state')
    ((${have:-0} >= 1000)) && break
    alive "$PID_A" || { tally_wait_exit "$PID_A" 5; fail "A exited with status $RC before B started"; }
    ((SECONDS < limit)) || fail "A committed only ${have:-0} orders within 60 s"
    sleep 0.2
done
note "A has committed ${have} orders; starting B with the same --instance-id"
(
    for ((c = 1; c <= CHUNKS; c++)); do
        produce "$IN" "$WORK/chunk$c.kv"
        sleep 0.5
    done
) &
PRODUCER=$!
BG_PIDS+=("$PRODUCER")
tally_start "$LOG_B" "${COMMON[@]}" --state-dir "$WORK/state-b"
PID_B=$TALLY_PID

# ---- A is fenced, B goes on ---------------------------------------------------------
tally_wait_exit "$PID_A" 90
((TIMED_OUT == 0)) || fail "A still ran 90 s after B started with the same --instance-id"
((RC != 0)) || fail "A exited 0 after being fenced; expected a non-zero status"
((RC == 1)) || fail "A died with status $RC after being fenced; expected an orderly exit with status 1"
ok
fatal=$(grep -iE 'fenced|instance' "$LOG_A" | grep -E 'level=error|^tally run:' | head -n 1 || true)
[[ -n "$fatal" ]] || fail "A's error does not say it was fenced: $(tail -n 3 "$LOG_A" | cut -c1-300)"
ok
note "A: ${fatal:0:200}"
A_COMMITTED=$(sqlval "$DB_A" 'SELECT coalesce(sum(count), 0) FROM order_window_state')

tally_wait_started "$PID_B" "$LOG_B"
if wait "$PRODUCER"; then :; else fail "the background producer failed"; fi
produce "$IN" "$WORK/tail.kv"
assert_eq "records in the input topic" $((N_ORDERS + N_BAD)) "$(topic_records "$IN")"
wait_positions "$DB_B" "$IN" "$PREFIX" "$N_BAD" 150 "$PID_B"
tally_stop "$PID_B"
! grep -qi 'fenced' "$LOG_B" || fail "B reports being fenced: $(grep -i fenced "$LOG_B" | head -n 1)"
ok

# ---- exact totals -------------------------------------------------------------------
check_totals "output after the takeover" "$WORK/orders.tsv" "" "$OUT"
check_dlq "$PREFIX" "$IN" "$WORK/bad.kv"

recovered=$(grep -m1 'event=recovered' "$LOG_B" || true)
note "B: ${recovered:0:200}"
[[ "$recovered" == *"source=changelog"* ]] ||
    fail "B started with an empty state directory but did not replay the changelog: $recovered"
ok
state_windows "$DB_B" >"$WORK/state-b.tsv"
assert_files_eq "B's SQLite order_windows vs awk (rebuilt from the changelog, then consumed)" \
    "$WORK/expected.tsv" "$WORK/state-b.tsv"

finish "A committed $A_COMMITTED orders before it was fenced; $N_ORDERS orders in all"
