#!/usr/bin/env bash
# test_run_fencing.sh - several `tally run` processes with the same
# --instance-id (same group and topics, each its own --state-dir), while orders
# keep arriving:
#
#   1. A runs and commits batches; B starts. B must take over promptly (within
#      TAKEOVER_S seconds, while A is still busy): its transactional producer
#      and static group membership fence A, which must exit with status 1 and
#      say why (fenced / instance).
#   2. B is frozen (SIGSTOP, most likely inside a transaction) and C starts;
#      once C runs, B is resumed: the zombie must find itself fenced and exit 1
#      without making anything visible.
#   3. C consumes everything (a tail is produced after A and B are gone).
#
# Then the latest committed output per key (read_committed) equals the awk
# totals exactly - so nothing A or B wrote after being fenced is visible - the
# DLQ holds each malformed line once, and C, which started with an empty state
# directory and rebuilt it from the changelog topic, holds exact totals too.
# shellcheck source=../lib/tally.sh
source "$(dirname "$0")/../lib/tally.sh"

N_PRE=2000
N_CHUNK=100     # a chunk every CHUNK_GAP s (plus kcat's time) while the
CHUNK_GAP=0.1   # instances take over: A never idles for long
MAX_CHUNKS=400
TAKEOVER_S=30

# ---- flags: usage errors need no broker -----------------------------------
expect_usage_error "--commit-interval-ms 0" --pipeline orders --brokers "$KAFKA_BROKERS" \
    --commit-interval-ms 0
expect_usage_error "--instance-id without a value" --pipeline orders --brokers "$KAFKA_BROKERS" \
    --instance-id

stream_names
COMMON=("${TOPIC_ARGS[@]}" --instance-id "$INSTANCE")
# A commits tiny batches back to back, so B's takeover lands among them.
A_ARGS=(--commit-interval-ms 1 --max-batch 10)
B_ARGS=(--commit-interval-ms 50 --max-batch 200)
DB_A=$WORK/state-a/orders.db
DB_B=$WORK/state-b/orders.db
DB_C=$WORK/state-c/orders.db

# ---- input: a head, chunks (the ones produced count), a tail -------------------
create_topic "$IN" 3
gen_orders "$N_PRE" 99 1 "$WORK/head.tsv" >"$WORK/head-orders.kv"
gen_malformed 10 "head" >"$WORK/head.bad"
mix "$WORK/head-orders.kv" "$WORK/head.bad" >"$WORK/head.kv"
next_id=$((N_PRE + 1))
for ((c = 1; c <= MAX_CHUNKS; c++)); do
    gen_orders "$N_CHUNK" $((500 + c)) "$next_id" "$WORK/chunk$c.tsv" >"$WORK/chunk$c-orders.kv"
    next_id=$((next_id + N_CHUNK))
    if ((c % 10 == 0)); then gen_malformed 1 "chunk$c" >"$WORK/chunk$c.bad"; else : >"$WORK/chunk$c.bad"; fi
    mix "$WORK/chunk$c-orders.kv" "$WORK/chunk$c.bad" >"$WORK/chunk$c.kv"
done
gen_orders 1500 4711 "$next_id" "$WORK/tail.tsv" >"$WORK/tail-orders.kv"
gen_malformed 5 "tail" >"$WORK/tail.bad"
mix "$WORK/tail-orders.kv" "$WORK/tail.bad" >"$WORK/tail.kv"
produce "$IN" "$WORK/head.kv"

# The stream: one chunk every CHUNK_GAP s until $WORK/stop exists.
start_stream() {
    (
        for ((c = 1; c <= MAX_CHUNKS; c++)); do
            [[ -e "$WORK/stop" ]] && exit 0
            produce "$IN" "$WORK/chunk$c.kv"
            echo "$c" >>"$WORK/produced"
            sleep "$CHUNK_GAP"
        done
    ) &
    STREAM=$!
    bg_track "$STREAM"
}
: >"$WORK/produced"

# ---- 1. A runs, B takes over ---------------------------------------------------------
LOG_A=$WORK/a.log
LOG_B=$WORK/b.log
LOG_C=$WORK/c.log
tally_start "$LOG_A" "${COMMON[@]}" "${A_ARGS[@]}" --state-dir "$WORK/state-a"
PID_A=$TALLY_PID
tally_wait_started "$PID_A" "$LOG_A"
start_stream
limit=$((SECONDS + 60))
while :; do
    have=$(orders_in "$DB_A")
    ((${have:-0} >= N_PRE)) && break
    alive "$PID_A" || { tally_wait_exit "$PID_A" 5; fail "A exited with status $RC before B started"; }
    ((SECONDS < limit)) || fail "A committed only ${have:-0} orders within 60 s"
    sleep 0.2
done
sleep 1 # A is on the stream now: a batch every few dozen ms
note "A has committed $(orders_in "$DB_A") orders; starting B with the same --instance-id"
tally_start "$LOG_B" "${COMMON[@]}" "${B_ARGS[@]}" --state-dir "$WORK/state-b"
PID_B=$TALLY_PID
b_started=$SECONDS

tally_wait_exit "$PID_A" "$TAKEOVER_S"
if ((TIMED_OUT)); then
    b_state=$(grep -E 'event=(recovered|started)' "$LOG_B" | cut -c1-200 | tr '\n' ' ' || true)
    fail "A was still running $TAKEOVER_S s after B started with the same --instance-id while input kept arriving; B: ${b_state:-no event=recovered line yet: B is still in its changelog recovery, chasing the commits of A}"
fi
((RC == 1)) || fail "A exited with status $RC after being fenced; expected 1"
ok
fatal=$(grep -E 'level=error|^tally run:' "$LOG_A" | grep -iE 'fenced|instance' | head -n 1 || true)
[[ -n "$fatal" ]] || fail "A's error does not say it was fenced: $(tail -n 3 "$LOG_A" | cut -c1-300)"
ok
note "A exited $((SECONDS - b_started)) s after B started: ${fatal:0:160}"
A_ORDERS=$(orders_in "$DB_A")
tally_wait_started "$PID_B" "$LOG_B"
# An empty state directory: B rebuilds each partition from the changelog as
# it is assigned (after A's last transaction is settled).
for ((i = 0; i < 600; i++)); do
    rebuilt=$(grep -c 'event=partition_assigned .*source=changelog' "$LOG_B" || true)
    ((rebuilt > 0)) && break
    sleep 0.1
done
((rebuilt > 0)) ||
    fail "B started with an empty state directory but did not replay the changelog: $(grep -m3 'event=recovered\|event=partition_assigned' "$LOG_B")"
ok

# ---- 2. B frozen, C takes over, B resumes as a zombie ------------------------------
limit=$((SECONDS + 60))
applied_b=0
while :; do
    applied_b=$(meta "$DB_B" pipeline.orders.events_applied)
    ((${applied_b:-0} > 0)) && break
    alive "$PID_B" || { tally_wait_exit "$PID_B" 5; fail "B exited with status $RC before C started"; }
    ((SECONDS < limit)) || fail "B applied nothing within 60 s of A's exit"
    sleep 0.1
done
sleep 0.$((RANDOM % 10))
kill -STOP "$PID_B"
note "B froze after applying ${applied_b}+ orders; starting C with the same --instance-id"
tally_start "$LOG_C" "${COMMON[@]}" "${B_ARGS[@]}" --state-dir "$WORK/state-c"
PID_C=$TALLY_PID
tally_wait_started "$PID_C" "$LOG_C" 60
kill -CONT "$PID_B"
tally_wait_exit "$PID_B" 90
((TIMED_OUT == 0)) || fail "B still ran 90 s after it was resumed behind C"
((RC == 1)) || fail "B exited with status $RC after being fenced as a zombie; expected 1"
ok
fatal=$(grep -E 'level=error|^tally run:' "$LOG_B" | grep -iE 'fenced|instance' | head -n 1 || true)
[[ -n "$fatal" ]] || fail "B's error does not say it was fenced: $(tail -n 3 "$LOG_B" | cut -c1-300)"
ok
note "B: ${fatal:0:160}"

# ---- 3. C consumes everything -----------------------------------------------------------
touch "$WORK/stop"
if wait "$STREAM"; then :; else fail "the input stream failed"; fi
produce "$IN" "$WORK/tail.kv"
cat "$WORK/head.tsv" >"$WORK/orders.tsv"
cat "$WORK/head.bad" >"$WORK/bad.kv"
while read -r c; do
    cat "$WORK/chunk$c.tsv" >>"$WORK/orders.tsv"
    cat "$WORK/chunk$c.bad" >>"$WORK/bad.kv"
done <"$WORK/produced"
cat "$WORK/tail.tsv" >>"$WORK/orders.tsv"
cat "$WORK/tail.bad" >>"$WORK/bad.kv"
N_ORDERS=$(wc -l <"$WORK/orders.tsv")
N_BAD=$(wc -l <"$WORK/bad.kv")
assert_eq "records in the input topic" $((N_ORDERS + N_BAD)) "$(topic_records "$IN")"
wait_positions "$DB_C" "$IN" "$PREFIX" "$N_BAD" 150 "$PID_C"
tally_stop "$PID_C"
! grep -qi 'fenced' "$LOG_C" || fail "C reports being fenced: $(grep -i fenced "$LOG_C" | head -n 1)"
ok

# ---- exact totals -------------------------------------------------------------------------
check_totals "output after two takeovers" "$WORK/orders.tsv" "" "$OUT"
check_dlq "$PREFIX" "$IN" "$WORK/bad.kv"
state_windows "$DB_C" >"$WORK/state-c.tsv"
assert_files_eq "C's SQLite order_windows vs awk (rebuilt from the changelog, then consumed)" \
    "$WORK/expected.tsv" "$WORK/state-c.tsv"

finish "A committed $A_ORDERS orders before it was fenced; $(wc -l <"$WORK/produced") chunks streamed; $N_ORDERS orders in all"
