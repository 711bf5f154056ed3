#!/usr/bin/env bash
# test_run_ownership.sh - the two partition ownership transitions the other
# Kafka tests do not reach on their own (adapters/kafka/ownership.h):
#
#   not_assigned       a starts alone on a 4-partition input and consumes it
#                      all, and stops. b starts with a copy of a's state
#                      directory and is assigned all four (taken over from
#                      its own rows: source=local). Then a starts again: it
#                      has the rows of all four (STANDBY), is assigned two,
#                      takes them over locally, and once the assignment has
#                      been left alone for 15 s drops the rows of the other
#                      two (event=partition_dropped reason=not_assigned),
#                      while b drops the two it gave up (reason=revoked). The
#                      two databases then hold disjoint partitions whose rows
#                      add up to every order.
#   consumer_restart   x and y share a 1-partition input; y, with the
#                      watchdog shortened to 3 s (TALLY_WATCHDOG_MS), holds no
#                      partition and replaces its consumer (event=
#                      consumer_restart) while the cluster answers. When x
#                      stops, y's replaced consumer is assigned the partition,
#                      takes it over and counts what x counted plus what comes
#                      after, exactly.
# shellcheck source=../lib/tally.sh
source "$(dirname "$0")/../lib/tally.sh"

N=2000
STORES=12
SESSION=6s

DB() { echo "$WORK/state-$1/orders.db"; }
LOG() { echo "$WORK/$1.log"; }
# rows of partitions the database does not hold
foreign_rows() { sqlval "$1" 'SELECT count(*) FROM order_window_state WHERE part NOT IN (SELECT part FROM partitions)'; }

# ---- not_assigned: the standby rows of partitions assigned elsewhere -------
# group_args: COMMON, the flags every instance of the stream passes.
group_args() { COMMON=("${TOPIC_ARGS[@]}" --snapshot-interval 0 --session-timeout "$SESSION" --commit-interval-ms 50); }
stream_names
group_args
create_topic "$IN" 4
gen_orders_by_store "$N" 4242 1 "$STORES" "$WORK/orders.tsv" >"$WORK/orders.kv"
produce "$IN" "$WORK/orders.kv"

tally_start "$(LOG a)" "${COMMON[@]}" --instance-id "$(name a)" --state-dir "$WORK/state-a"
A=$TALLY_PID
wait_done "$(DB a)" "$N" "$PREFIX" 0 120 "$A"
tally_stop "$A"
[[ "$(sqlval "$(DB a)" 'SELECT count(DISTINCT part) FROM order_window_state')" == 4 ]] ||
    fail "a alone should hold rows of all 4 partitions"
ok
cp -r "$WORK/state-a" "$WORK/state-b"

tally_start "$(LOG b)" "${COMMON[@]}" --instance-id "$(name b)" --state-dir "$WORK/state-b"
B=$TALLY_PID
limit=$((SECONDS + 60))
# (its partitions table is a's copy until b's start empties it: wait for b's own takes)
until (($(grep -c 'event=partition_assigned' "$(LOG b)" || true) == 4)) &&
    [[ "$(held_partitions "$(DB b)")" == 0,1,2,3 ]]; do
    alive "$B" || fail "b exited; log: $(tail -n 3 "$(LOG b)")"
    ((SECONDS < limit)) || fail "b alone did not take all 4 partitions over within 60 s"
    sleep 0.3
done
ok
tally_start "$(LOG a)" "${COMMON[@]}" --instance-id "$(name a)" --state-dir "$WORK/state-a"
A=$TALLY_PID
# Each holds two partitions, together all four; then the standby rows go.
limit=$((SECONDS + 120))
while :; do
    ha=$(held_partitions "$(DB a)") hb=$(held_partitions "$(DB b)")
    fa=$(foreign_rows "$(DB a)") fb=$(foreign_rows "$(DB b)")
    all=$(tr ',' '\n' <<<"$ha,$hb" | sort -n | tr '\n' ' ')
    [[ "$all" == "0 1 2 3 " && "$fa" == 0 && "$fb" == 0 ]] && break
    alive "$A" || fail "a exited; log: $(tail -n 3 "$(LOG a)")"
    alive "$B" || fail "b exited; log: $(tail -n 3 "$(LOG b)")"
    ((SECONDS < limit)) || fail "a [$ha] and b [$hb] did not settle with only their own rows (foreign rows: a $fa, b $fb)"
    sleep 0.5
done
ok
# a: its own standby rows taken over or dropped as not assigned; b: its
# copy taken over, the partitions it gave up dropped as revoked.
for x in a b; do
    held=$(held_partitions "$(DB "$x")")
    [[ $x == a ]] && reason=not_assigned || reason=revoked
    for p in 0 1 2 3; do
        if [[ ",$held," == *",$p,"* ]]; then
            line=$(grep -E "event=partition_assigned .*partition=$p( |$)" "$(LOG "$x")" | tail -n 1 || true)
            [[ "$(log_field "$line" source)" == local ]] ||
                fail "$x took partition $p over from its own rows, expected source=local: $line"
        else
            grep -qE "event=partition_dropped partition=$p reason=$reason" "$(LOG "$x")" ||
                fail "$x does not hold partition $p but logged no partition_dropped reason=$reason for it"
        fi
    done
done
ok
total=$(($(orders_in "$(DB a)") + $(orders_in "$(DB b)")))
((total == N)) || fail "a and b count $total orders together, $N were produced"
ok
tally_stop "$A"
tally_stop "$B"

# ---- consumer_restart: the watchdog replaces a consumer without partitions --
stream_names 2
group_args
create_topic "$IN" 1
gen_orders_by_store 500 77 1 4 "$WORK/first.tsv" >"$WORK/first.kv"
produce "$IN" "$WORK/first.kv"
tally_start "$(LOG x)" "${COMMON[@]}" --instance-id "$(name x)" --state-dir "$WORK/state-x"
X=$TALLY_PID
wait_done "$(DB x)" 500 "$PREFIX" 0 120 "$X"
TALLY_WATCHDOG_MS=3000 tally_start "$(LOG y)" "${COMMON[@]}" --instance-id "$(name y)" --state-dir "$WORK/state-y"
Y=$TALLY_PID
limit=$((SECONDS + 60))
until (($(grep -c 'event=consumer_restart' "$(LOG y)" || true) >= 2)); do
    alive "$Y" || fail "y exited; log: $(tail -n 3 "$(LOG y)")"
    ((SECONDS < limit)) || fail "y held no partition but its consumer was not replaced within 60 s"
    sleep 0.3
done
ok
[[ -z "$(held_partitions "$(DB y)")" ]] || fail "y holds partitions while x has the only one"
ok
tally_stop "$X"
gen_orders_by_store 300 78 501 4 "$WORK/second.tsv" >"$WORK/second.kv"
produce "$IN" "$WORK/second.kv"
wait_done "$(DB y)" 800 "$PREFIX" 0 120 "$Y"
[[ "$(held_partitions "$(DB y)")" == 0 ]] || fail "y should hold partition 0 now"
ok
tally_stop "$Y"
cat "$WORK/first.tsv" "$WORK/second.tsv" >"$WORK/all2.tsv"
check_totals "y after taking x's partition over" "$WORK/all2.tsv" "$(DB y)" "$OUT"

finish "a dropped its standby rows, b what it gave up; y replaced its consumer $(grep -c 'event=consumer_restart' "$(LOG y)") times and then took the partition over"
