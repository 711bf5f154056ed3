#!/usr/bin/env bash
# test_run_handover_open_txn.sh - partitions that move twice while a dead
# instance's transaction is still open on their changelog partitions.
#
# a dies in the middle of a batch (TALLY_CRASH_AT=after_produce: its changelog
# records are on the broker, its input offsets were not sent), and its
# transaction stays open until the broker aborts it (--transaction-timeout).
# Until then read_committed readers of those changelog partitions stop at the
# open transaction's first record: whatever another instance commits there
# meanwhile is hidden from them. b takes a's partitions over once a's session
# has timed out; c starts while a's transaction is still open and takes one
# of them from b. Had b taken over at once and committed batches, c would
# have read the changelog only up to a's open transaction and lost them. So
# a take waits until no transaction is open on the changelog partition
# (event=committed_offsets_wait, partition_assigned waited_ms > 0), and at
# the end the latest outputs and the union of b's and c's states equal the
# awk totals, no window is in both, and each partition's tally.counters
# chain runs without gap or overlap to its end offset.
# shellcheck source=../lib/tally.sh
source "$(dirname "$0")/../lib/tally.sh"

STORES=6
TXN_TIMEOUT=15s

expect_usage_error "--transaction-timeout 0s" --pipeline orders --brokers "$KAFKA_BROKERS" --transaction-timeout 0s
expect_usage_error "--transaction-timeout 20m" --pipeline orders --brokers "$KAFKA_BROKERS" --transaction-timeout 20m
expect_usage_error "--session-timeout 1s" --pipeline orders --brokers "$KAFKA_BROKERS" --session-timeout 1s

stream_names
COMMON=("${TOPIC_ARGS[@]}" --snapshot-dir "$WORK/snaps" --snapshot-interval 1s --session-timeout 6s
    --transaction-timeout "$TXN_TIMEOUT" --commit-interval-ms 50 --max-batch 200 --http off)

create_topic "$IN" 2
: >"$WORK/orders.tsv"
gen_orders_by_store 3000 5151 1 "$STORES" "$WORK/orders.tsv" >"$WORK/part1.kv"
produce "$IN" "$WORK/part1.kv"

# a: batch 5 dies after its records reached the broker.
TALLY_CRASH_AT=after_produce TALLY_CRASH_BATCH=5 \
    tally_start "$WORK/a.log" "${COMMON[@]}" --instance-id "$(name a)" --state-dir "$WORK/state-a"
PID_A=$TALLY_PID
tally_wait_exit "$PID_A" 60
((TIMED_OUT == 0)) || fail "a did not reach its crash point within 60 s"
grep -q 'event=crash_point step=after_produce' "$WORK/a.log" || fail "a exited without its crash point (status $RC)"
ok
crashed=$SECONDS
[[ -n "$(open_transactions "$PREFIX-changelog" 0 1)" ]] ||
    fail "no transaction of a's is open on $PREFIX-changelog after its crash (test bug)"
ok

# More orders, so that b has batches to commit behind a's open transaction.
gen_orders_by_store 3000 5152 3001 "$STORES" "$WORK/orders.tsv" >"$WORK/part2.kv"
produce "$IN" "$WORK/part2.kv"
tally_start "$WORK/b.log" "${COMMON[@]}" --instance-id "$(name b)" --state-dir "$WORK/state-b"
PID_B=$TALLY_PID
sleep 7 # a's session ends after 6 s: b is assigned both partitions
tally_start "$WORK/c.log" "${COMMON[@]}" --instance-id "$(name c)" --state-dir "$WORK/state-c"
PID_C=$TALLY_PID
((SECONDS - crashed < 15)) || fail "c started $((SECONDS - crashed)) s after the crash: a's transaction may be over already (test too slow)"
ok
gen_orders_by_store 2000 5153 6001 "$STORES" "$WORK/orders.tsv" >"$WORK/part3.kv"
produce "$IN" "$WORK/part3.kv"

# Until both partitions' counters reach the input's end, and b and c hold one each.
limit=$((SECONDS + 120))
while :; do
    alive "$PID_B" || fail "b exited: $(tail -n 3 "$WORK/b.log" | cut -c1-300)"
    alive "$PID_C" || fail "c exited: $(tail -n 3 "$WORK/c.log" | cut -c1-300)"
    behind=$(counters_behind "$PREFIX" "$IN")
    held_b=$(held_partitions "$WORK/state-b/orders.db")
    held_c=$(held_partitions "$WORK/state-c/orders.db")
    [[ -z "$behind" && -n "$held_b" && -n "$held_c" ]] && break
    ((SECONDS < limit)) || fail "not done after 120 s: behind [$behind] b [$held_b] c [$held_c]"
    sleep 0.5
done
ok
tally_stop "$PID_B"
tally_stop "$PID_C"

# Exactness: outputs, states (disjoint), counters.
N_ORDERS=$(wc -l <"$WORK/orders.tsv")
check_totals "after two moves behind an open transaction" "$WORK/orders.tsv" "" "$OUT"
for x in b c; do state_windows "$WORK/state-$x/orders.db"; done | sort >"$WORK/union.tsv"
expected_windows "$WORK/orders.tsv" | sort >"$WORK/expected.sorted"
assert_files_eq "b's and c's order_windows together vs awk" "$WORK/expected.sorted" "$WORK/union.tsv"
check_counters_chain "$PREFIX" "$IN"


# The takes waited for a's transaction to end.
waits=$(cat "$WORK/b.log" "$WORK/c.log" | grep -c 'event=committed_offsets_wait' || true)
((waits > 0)) || fail "neither b nor c waited for a's open transaction (no event=committed_offsets_wait)"
ok
first=$(grep -m1 'event=partition_assigned' "$WORK/b.log" || true)
[[ -n "$first" ]] || fail "b took no partition over"
(($(log_field "$first" waited_ms) > 0)) || fail "b took a partition over without waiting: $first"
ok

finish "a died with a transaction open; b waited $(log_field "$first" waited_ms) ms before taking over; b [$held_b] c [$held_c]; $N_ORDERS orders"
