#!/usr/bin/env bash
# test_run_broker_outage.sh - a stall and a broker outage longer than the
# group's session timeout and the transaction timeout, with no other
# instance anywhere. The daemon must neither exit nor blame one.
#
#   1. stall: batch 3 sleeps 20 s with its transaction open
#      (TALLY_STALL_AT=after_produce, --transaction-timeout 5s). The broker
#      aborts that transaction and bumps the producer's epoch, so the next
#      call fails as if another instance had fenced this one. tally logs
#      event=transaction_expired, starts over in-process (event=restarted:
#      new producer, recovery, rejoin) and goes on; /readyz answers 503 while
#      nothing commits and 200 again after.
#   2. outage: the broker is stopped for 25 s (scripts/kafka restart --down
#      25, data kept), longer than --session-timeout 10s and
#      --transaction-timeout 10s. /readyz answers 503 "broker unreachable"
#      during it; once the broker is back, orders produced then are counted
#      within SESSION + 9 s (the group's session timeout plus a few seconds),
#      and /readyz answers 200.
#
# At the end the latest outputs and the state equal the awk totals, and no
# line of the log says another instance took over.
# shellcheck source=../lib/tally.sh
source "$(dirname "$0")/../lib/tally.sh"

SESSION=10
DOWN=25

broker_restartable
new_stream orders.db
HTTP_PORT=$(free_port)
RUN_ARGS=("${STREAM_ARGS[@]}" --max-batch 200 --session-timeout "${SESSION}s"
    --http "127.0.0.1:$HTTP_PORT")

create_topic "$IN" 2
: >"$WORK/orders.tsv"
gen_orders 6000 7101 1 "$WORK/orders.tsv" >"$WORK/part1.kv"
gen_orders 4000 7102 6001 "$WORK/orders.tsv" >"$WORK/part2.kv"
gen_orders 3000 7103 10001 "$WORK/orders.tsv" >"$WORK/part3.kv"
N_ORDERS=$(wc -l <"$WORK/orders.tsv")

# readyz: the status code of one /readyz, its body in $WORK/readyz.body.
readyz() { curl -s -m 2 -o "$WORK/readyz.body" -w '%{http_code}' "127.0.0.1:$HTTP_PORT/readyz" || true; }
readyz_is() { [[ "$(readyz)" == "$1" ]]; }

# ---- 1. a stall longer than the transaction timeout ---------------------------
produce "$IN" "$WORK/part1.kv"
TALLY_STALL_AT=after_produce TALLY_CRASH_BATCH=3 TALLY_STALL_MS=20000 \
    tally_start "$LOG" "${RUN_ARGS[@]}" --transaction-timeout 5s
PID=$TALLY_PID
tally_wait_started "$PID" "$LOG"
poll_until 30 "$PID" "the stall point" grep -q 'event=stall_point' "$LOG"
POLL_EVERY=0.5 poll_until 30 "$PID" "/readyz 503 during the stall" readyz_is 503
poll_until 60 "$PID" "the start over after the expired transaction" grep -q 'event=restarted' "$LOG"
grep -q 'event=transaction_expired' "$LOG" || fail "restarted without event=transaction_expired"
ok
poll_until 60 "$PID" "all of part 1 counted after the start over" orders_above "$DB" 5999
POLL_EVERY=0.5 poll_until 30 "$PID" "/readyz 200 after the stall" readyz_is 200
tally_stop "$PID"

# ---- 2. the broker away longer than the session and transaction timeouts -----
tally_start "$LOG" "${RUN_ARGS[@]}" --transaction-timeout 10s
PID=$TALLY_PID
tally_wait_started "$PID" "$LOG"
POLL_EVERY=0.5 poll_until 30 "$PID" "/readyz 200 before the outage" readyz_is 200
produce "$IN" "$WORK/part2.kv"
poll_until 60 "$PID" "part 2 counted" orders_above "$DB" 9999
"$KAFKA_SCRIPT" restart --down "$DOWN" >"$WORK/restart.out" 2>&1 &
RESTART_PID=$!
POLL_EVERY=0.5 poll_until 20 "$PID" "/readyz 503 while the broker is away" readyz_is 503
grep -q 'broker unreachable' "$WORK/readyz.body" ||
    fail "/readyz during the outage: $(cat "$WORK/readyz.body")"
ok
wait "$RESTART_PID" || fail "scripts/kafka restart --down $DOWN failed: $(tail -n 3 "$WORK/restart.out")"
back=$SECONDS
alive_or_fail "$PID" "tally after the outage"
produce "$IN" "$WORK/part3.kv"
poll_until $((SESSION + 9)) "$PID" "part 3 counted within $((SESSION + 9)) s of the broker's return" \
    orders_above "$DB" $((N_ORDERS - 1))
took=$((SECONDS - back))
note "consuming again $took s after the broker was back"
POLL_EVERY=0.5 poll_until 30 "$PID" "/readyz 200 after the outage" readyz_is 200
tally_stop "$PID"

check_totals "after a stall and an outage" "$WORK/orders.tsv" "$DB" "$OUT"
if grep -q 'another instance' "$LOG"; then
    fail "the log blames another instance: $(grep -m1 'another instance' "$LOG" | cut -c1-300)"
fi
ok
finish "stall: $(grep -c 'event=restarted' "$LOG") start over; outage of $DOWN s: counting again $took s after; $N_ORDERS orders exact"
