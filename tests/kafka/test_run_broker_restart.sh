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

# The other tests need the broker: if this one fails while it is down, bring
# one up again (a fresh one if the data cannot be used).
ensure_broker() {
    "$KAFKA_SCRIPT" status >/dev/null 2>&1 && return 0
    echo "[$TEST_NAME] the broker is down; starting it again" >&2
    "$KAFKA_SCRIPT" start >&2 || true
}
CLEANUP_HOOKS+=(ensure_broker)
"$KAFKA_SCRIPT" status >/dev/null || fail "no broker up on port $KAFKA_PORT (scripts/kafka status)"
[[ "$("$KAFKA_SCRIPT" status)" == *"Apache Kafka"* ]] ||
    fail "scripts/kafka restart needs Apache Kafka: $("$KAFKA_SCRIPT" status)"

IN=$(name in)
OUT=$(name out)
PREFIX=$(name p)
STATE=$WORK/state
DB=$STATE/orders.db
LOG=$WORK/tally.log
RUN_ARGS=(--input-topic "$IN" --output-topic "$OUT" --topic-prefix "$PREFIX" --group-id "$(name g)"
    --instance-id "$(name i)" --state-dir "$STATE" --commit-interval-ms 50 --max-batch 200)

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

orders_in() { sqlval "$DB" 'SELECT coalesce(sum(count), 0) FROM order_window_state'; }

STARTS=0
EXITS=()
start_tally() {
    STARTS=$((STARTS + 1))
    ((STARTS <= MAX_TALLY_STARTS)) || fail "tally had to be started $MAX_TALLY_STARTS times; giving up"
    STARTS_BEFORE=$(grep -c 'event=started' "$LOG" 2>/dev/null || true)
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

# wait_orders N SECONDS: until the state counts at least N orders, reviving
# tally when it exits.
wait_orders() {
    local want=$1 limit=$((SECONDS + $2)) have
    while :; do
        have=$(orders_in)
        ((${have:-0} >= want)) && return 0
        revive "while waiting for $want orders"
        ((SECONDS < limit)) || fail "the state counts ${have:-0} orders, not $want, after $2 s; $(stall_report)"
        sleep 0.3
    done
}

broker_restart() {
    local t0=$SECONDS
    note "restarting the broker with $(orders_in) orders in the state"
    "$KAFKA_SCRIPT" restart >"$WORK/restart.out" 2>&1 || {
        cat "$WORK/restart.out" >&2
        fail "scripts/kafka restart failed"
    }
    note "broker back after $((SECONDS - t0)) s"
    ok
}

start_tally
tally_wait_started "$PID" "$LOG"

# ---- restart 1: in the middle of the backlog ---------------------------------
wait_orders 3000 60
broker_restart
had=$(orders_in)
wait_orders $((had + 2000)) 120
note "after restart 1: tally went on to $(orders_in) orders"

# ---- restart 2: more input, and again ------------------------------------------------
produce "$IN" "$WORK/second.kv"
wait_orders $(($(orders_in) + 1000)) 120
broker_restart
assert_eq "records in the input topic after the restarts" $((N_ORDERS + N_BAD)) "$(topic_records "$IN")"

# ---- to the end -------------------------------------------------------------------------
limit=$((SECONDS + 150))
while :; do
    have=$(orders_in)
    ((${have:-0} <= N_ORDERS)) || fail "the state counts $have orders, more than the $N_ORDERS produced (duplicates)"
    if ((${have:-0} == N_ORDERS)); then
        dlq=$(dlq_records "$PREFIX")
        ((dlq <= N_BAD)) || fail "the DLQ holds $dlq records, more than the $N_BAD malformed lines (duplicates)"
        ((dlq == N_BAD)) && break
    fi
    revive "while finishing"
    ((SECONDS < limit)) || fail "not done 150 s after the last restart: ${have:-0} of $N_ORDERS orders; $(stall_report)"
    sleep 0.5
done
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
