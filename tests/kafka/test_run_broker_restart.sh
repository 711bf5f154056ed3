#!/usr/bin/env bash
# test_run_broker_restart.sh - the broker restarts (scripts/kafka restart:
# SIGTERM, same data directory) twice while `tally run` works through a
# backlog. tally should ride it out (librdkafka reconnects; an abortable
# transaction error leads to abort + rewind); if it exits non-zero instead, it
# is restarted - that is allowed, and reported. Either way, at the end the
# latest committed output per key and the SQLite state equal the awk totals
# exactly, and the DLQ holds each malformed line once.
# shellcheck source=../lib/tally.sh
source "$(dirname "$0")/../lib/tally.sh"

N_FIRST=30000
N_SECOND=5000
RESTARTS=2
MAX_TALLY_STARTS=6

# ---- flags: usage errors need no broker -----------------------------------
expect_usage_error "--window-size 0" --pipeline orders --brokers "$KAFKA_BROKERS" --window-size 0
expect_usage_error "--max-batch too large" --pipeline orders --brokers "$KAFKA_BROKERS" --max-batch 1000001
expect_usage_error "--brokers empty" --pipeline orders --brokers ""

# The other tests need the broker: if this one fails while it is down, it
# is brought up again.
broker_restartable

new_stream orders.db
RUN_ARGS=("${STREAM_ARGS[@]}" --max-batch 200)

create_topic "$IN" 3
: >"$WORK/orders.tsv"
gen_orders "$N_FIRST" 2024 1 "$WORK/orders.tsv" >"$WORK/first-orders.kv"
gen_malformed 10 "first" >"$WORK/first.bad"
mix "$WORK/first-orders.kv" "$WORK/first.bad" >"$WORK/first.kv"
gen_orders "$N_SECOND" 2025 $((N_FIRST + 1)) "$WORK/orders.tsv" >"$WORK/second-orders.kv"
gen_malformed 5 "second" >"$WORK/second.bad"
mix "$WORK/second-orders.kv" "$WORK/second.bad" >"$WORK/second.kv"
cat "$WORK/first.bad" "$WORK/second.bad" >"$WORK/bad.kv"
N_ORDERS=$(wc -l <"$WORK/orders.tsv")
N_BAD=$(wc -l <"$WORK/bad.kv")
produce "$IN" "$WORK/first.kv"

STARTS=0
EXITS=()
start_tally() {
    STARTS=$((STARTS + 1))
    ((STARTS <= MAX_TALLY_STARTS)) || fail "tally had to be started $MAX_TALLY_STARTS times; giving up"
    tally_start "$LOG" "${RUN_ARGS[@]}"
    PID=$TALLY_PID
}

# If tally exited, record how and start it again.
revive() {
    alive "$PID" && return 0
    tally_wait_exit "$PID" 5
    ((RC != 0)) || fail "tally exited 0 without being asked to (pid $PID)"
    EXITS+=("$RC")
    note "tally exited with status $RC ($1): $(grep -E 'level=error|^tally run:' "$LOG" | tail -n 1 | cut -c1-250)"
    start_tally
}

# What tally was doing when it stalled.
stall_report() {
    local rebalance
    rebalance=$(grep 'event=rebalance' "$LOG" | tail -n 1 | cut -c1-160)
    echo "tally (pid $PID) is $(alive "$PID" && echo alive || echo gone); its last rebalance line: ${rebalance:-none}"
}

# counted N: the state counts at least N orders; revives tally if it exited.
counted() {
    local have
    have=$(orders_in "$DB")
    ((have >= $1)) && return 0
    revive "while waiting for $1 orders"
    POLL_STATE="the state counts $have orders; $(stall_report)"
    return 1
}

# wait_counted N SECONDS: until the state counts at least N orders, reviving
# tally when it exits.
wait_counted() { POLL_EVERY=0.3 poll_until "$2" "" "state of $1 orders" counted "$1"; }

# finished: every order counted, every dead letter in the DLQ; revives tally
# if it exited.
finished() {
    orders_done "$DB" "$N_ORDERS" "$PREFIX" "$N_BAD" && return 0
    revive "while finishing"
    POLL_STATE="$POLL_STATE; $(stall_report)"
    return 1
}

restart_broker() {
    local t0=$SECONDS
    note "restarting the broker with $(orders_in "$DB") orders in the state"
    broker_restart
    note "broker back after $((SECONDS - t0)) s"
    ok
}

start_tally
tally_wait_started "$PID" "$LOG"

# ---- restart 1: in the middle of the backlog ---------------------------------
wait_counted 3000 60
restart_broker
had=$(orders_in "$DB")
wait_counted $((had + 2000)) 120
note "after restart 1: tally went on to $(orders_in "$DB") orders"

# ---- restart 2: more input, and again ------------------------------------------------
produce "$IN" "$WORK/second.kv"
wait_counted $(($(orders_in "$DB") + 1000)) 120
restart_broker
assert_eq "records in the input topic after the restarts" $((N_ORDERS + N_BAD)) "$(topic_records "$IN")"

# ---- to the end -------------------------------------------------------------------------
POLL_EVERY=0.5 poll_until 150 "" "end of the input after the last restart" finished
tally_stop "$PID"

check_totals "after $RESTARTS broker restarts" "$WORK/orders.tsv" "$DB" "$OUT"
check_dlq "$PREFIX" "$IN" "$WORK/bad.kv"

aborted=$(grep -c 'event=transaction_aborted' "$LOG" || true)
if ((${#EXITS[@]} == 0)); then
    how="tally survived both restarts ($aborted transactions aborted)"
else
    how="tally exited ${#EXITS[@]} time(s) (status ${EXITS[*]}) and was restarted; $aborted transactions aborted"
fi
finish "$how"
