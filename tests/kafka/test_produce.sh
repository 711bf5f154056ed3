#!/usr/bin/env bash
# tests/kafka/test_produce.sh - tally produce against a real broker.
#
# Produces to topics unique to this run and reads them back with kcat: exactly
# rate x duration events, spread over the run rather than sent in bursts, each
# valid JSON with the pipeline's fields (checked with sqlite3's JSON functions),
# keyed as documented (orders: storeId, telemetry: the VIN), one partition per
# key, event time = now. Ctrl-C stops early with an exact summary; a missing
# topic is an error that says to run `tally topics create`; bad flags exit 2.
#
# Environment: TALLY (the binary), KAFKA_BROKERS (default 127.0.0.1:9092).
# Run by hand: TALLY=build/tally bash tests/kafka/test_produce.sh

# shellcheck source=../lib/kafka.sh
source "$(dirname "$0")/../lib/kafka.sh"

RUN_ID="tp$$x$RANDOM"
broker_answers
CLEANUP_HOOKS+=(delete_run_topics)

# consume TOPIC FORMAT: every committed message of TOPIC, formatted by kcat.
consume() {
    kcat -b "$KAFKA_BROKERS" -C -e -q -t "$1" -X isolation.level=read_committed -f "$2"
}

topics_for() {
    run tally topics create --brokers "$KAFKA_BROKERS" --pipeline "$1" --topic-prefix "$RUN_ID-$1" \
        --input-topic "$RUN_ID.$1.in" --output-topic "$RUN_ID.$1.out" --partitions "$2"
    expect_rc "topics for $1" 0
}

now_ms() { date +%s%3N; }

# ------------------------------------------------------------------ orders ---

topics_for orders 3
orders_topic="$RUN_ID.orders.in"
before=$(now_ms)
run tally produce --pipeline orders --brokers "$KAFKA_BROKERS" --topic "$orders_topic" --rate 2000 \
    --duration 3s --keys 7 --seed 42
after=$(now_ms)
expect_rc "orders produce" 0
assert_contains "orders summary line" "$OUT" "produced pipeline=orders topic=$orders_topic "
assert_eq "orders events (2000/s x 3s, exactly)" 6000 "$(summary_field events "$OUT")"
assert_eq "orders readings" 6000 "$(summary_field readings "$OUT")"
assert_eq "orders errors" 0 "$(summary_field errors "$OUT")"
seconds=$(summary_field seconds "$OUT")
awk -v s="$seconds" 'BEGIN { exit !(s >= 2.9 && s < 10) }' ||
    fail "orders: 3s of events took $seconds s (paced, they take about 3 s)"
ok

consume "$orders_topic" '.\n' >"$WORK/orders.count"
assert_eq "kcat counts the orders" 6000 "$(wc -l <"$WORK/orders.count")"

# Keys and values side by side as JSON: keys are plain ids, values JSON objects.
consume "$orders_topic" '{"key":"%k","partition":%p,"timestamp":%T,"value":%s}\n' >"$WORK/orders.jsonl"
jsonl_load "$WORK/o.db" m "$WORK/orders.jsonl"
assert_eq "every order is valid JSON" 6000 "$(sq "$WORK/o.db" "SELECT count(*) FROM m WHERE json_valid(j)")"
assert_eq "orders have the pipeline's fields" 6000 "$(sq "$WORK/o.db" "
    SELECT count(*) FROM m
    WHERE json_type(j, '\$.value.orderId') = 'text' AND json_type(j, '\$.value.productId') = 'text'
      AND json_type(j, '\$.value.storeId') = 'text' AND json_type(j, '\$.value.qty') = 'integer'
      AND json_type(j, '\$.value.price') IN ('real', 'integer', 'text')
      AND json_type(j, '\$.value.ts') = 'integer' AND json_type(j, '\$.value.normTs') = 'integer'")"
assert_eq "order keys are the storeId" 6000 "$(sq "$WORK/o.db" "
    SELECT count(*) FROM m WHERE json_extract(j, '\$.key') = json_extract(j, '\$.value.storeId')")"
assert_eq "--keys 7: stores s-0 .. s-6" "s-0 s-1 s-2 s-3 s-4 s-5 s-6" "$(sq "$WORK/o.db" "
    SELECT group_concat(k, ' ') FROM (SELECT DISTINCT json_extract(j, '\$.key') AS k FROM m ORDER BY k)")"
assert_eq "one partition per key" 0 "$(sq "$WORK/o.db" "
    SELECT count(*) FROM (SELECT json_extract(j, '\$.key') FROM m
                          GROUP BY 1 HAVING count(DISTINCT json_extract(j, '\$.partition')) > 1)")"
assert_eq "event time is now" 0 "$(sq "$WORK/o.db" "
    SELECT count(*) FROM m WHERE json_extract(j, '\$.value.ts') NOT BETWEEN $before - 2000 AND $after + 2000")"
assert_eq "order ids are unique" 6000 "$(sq "$WORK/o.db" "SELECT count(DISTINCT json_extract(j, '\$.value.orderId')) FROM m")"
# Paced in small steps: the 3 s have events in nearly every 100 ms slice (a
# burst a second would leave 9 of 10 slices empty).
slices=$(sq "$WORK/o.db" "SELECT count(DISTINCT json_extract(j, '\$.timestamp') / 100) FROM m")
((slices >= 25)) || fail "orders: events fall into only $slices of the run's 30 slices of 100 ms"
ok

# Rounding down: 3 events/s for 1.5 s is 4 events.
run tally produce --pipeline orders --brokers "$KAFKA_BROKERS" --topic "$orders_topic" --rate 3 --duration 1500ms
expect_rc "orders at 3/s" 0
assert_eq "3/s x 1.5s" 4 "$(summary_field events "$OUT")"
consume "$orders_topic" '.\n' >"$WORK/orders.count"
assert_eq "kcat counts 6004 orders" 6004 "$(wc -l <"$WORK/orders.count")"

# --------------------------------------------------------------- telemetry ---

topics_for telemetry 2
telemetry_topic="$RUN_ID.telemetry.in"
run tally produce --pipeline telemetry --brokers "$KAFKA_BROKERS" --topic "$telemetry_topic" --rate 500 \
    --duration 2s --keys 5
expect_rc "telemetry produce" 0
assert_eq "telemetry events" 1000 "$(summary_field events "$OUT")"
assert_eq "telemetry readings (5 sensors an event)" 5000 "$(summary_field readings "$OUT")"
assert_eq "telemetry errors" 0 "$(summary_field errors "$OUT")"
consume "$telemetry_topic" '{"key":"%k","partition":%p,"value":%s}\n' >"$WORK/telemetry.jsonl"
assert_eq "kcat counts the telemetry" 1000 "$(wc -l <"$WORK/telemetry.jsonl")"
jsonl_load "$WORK/t.db" m "$WORK/telemetry.jsonl"
assert_eq "every telemetry event is valid JSON with its fields" 1000 "$(sq "$WORK/t.db" "
    SELECT count(*) FROM m
    WHERE json_valid(j) AND json_type(j, '\$.value.data.id') = 'text'
      AND json_type(j, '\$.value.received_at') = 'integer'
      AND json_type(j, '\$.value.produced_at') = 'integer'
      AND (SELECT count(*) FROM json_each(j, '\$.value.data')) = 6")"
assert_eq "telemetry keys are the VIN" 1000 "$(sq "$WORK/t.db" "
    SELECT count(*) FROM m WHERE json_extract(j, '\$.key') = json_extract(j, '\$.value.data.id')
                             AND json_extract(j, '\$.key') GLOB 'VIN[0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]'")"
assert_eq "--keys 5: five vehicles" 5 "$(sq "$WORK/t.db" "SELECT count(DISTINCT json_extract(j, '\$.key')) FROM m")"
assert_eq "one partition per VIN" 0 "$(sq "$WORK/t.db" "
    SELECT count(*) FROM (SELECT json_extract(j, '\$.key') FROM m
                          GROUP BY 1 HAVING count(DISTINCT json_extract(j, '\$.partition')) > 1)")"

# ---------------------------------------------------------------- Ctrl-C ---

# No --duration: runs until interrupted, then flushes and reports exactly.
"$TALLY" produce --pipeline telemetry --brokers "$KAFKA_BROKERS" --topic "$telemetry_topic" --rate 400 \
    >"$WORK/int.out" 2>"$WORK/int.err" &
pid=$!
bg_track "$pid"
sleep 1.5
kill -INT "$pid"
if wait "$pid"; then RC=0; else RC=$?; fi
OUT=$(cat "$WORK/int.out") ERR=$(cat "$WORK/int.err")
expect_rc "interrupted produce" 0
assert_contains "interrupted summary" "$OUT" "interrupted=true"
interrupted_events=$(summary_field events "$OUT")
((interrupted_events >= 300 && interrupted_events <= 1000)) ||
    fail "interrupted after 1.5 s at 400/s, but events=$interrupted_events"
ok
consume "$telemetry_topic" '.\n' >"$WORK/telemetry.count"
assert_eq "kcat counts what the interrupted run reported" $((1000 + interrupted_events)) \
    "$(wc -l <"$WORK/telemetry.count")"

# ---------------------------------------------------------- missing topic ---

run tally produce --pipeline orders --brokers "$KAFKA_BROKERS" --topic "$RUN_ID.nowhere" --rate 10 --duration 1s
expect_rc "missing topic" 1
assert_contains "missing topic: says to create it" "$ERR" "tally topics create"
assert_contains "missing topic: names it" "$ERR" "$RUN_ID.nowhere"
assert_not_contains "missing topic: no summary" "$OUT" "produced"
kcat -b "$KAFKA_BROKERS" -L -m 10 | grep -qF "\"$RUN_ID.nowhere\"" && fail "produce created $RUN_ID.nowhere"
ok

# -------------------------------------------------------------- bad flags ---

run tally produce --help
expect_rc "produce --help" 0
assert_contains "--help documents the keys" "$OUT" "--keys K"
run env -u KAFKA_BROKERS "$TALLY" produce --pipeline orders --duration 1s
expect_rc "no brokers anywhere" 2
for args in "" "--pipeline payments" "--pipeline orders --rate 0" "--pipeline orders --rate fast" \
    "--pipeline orders --duration soon" "--pipeline orders --duration 0s" \
    "--pipeline orders --keys 0" "--pipeline orders --seed -1" "--pipeline orders --bogus" \
    "--pipeline orders --rate" "--pipeline orders extra" "--pipeline orders --topic="; do
    # shellcheck disable=SC2086 # split on purpose
    run tally produce --brokers "$KAFKA_BROKERS" $args
    expect_rc "bad flags [$args]" 2
done

finish
