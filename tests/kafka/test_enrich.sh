#!/usr/bin/env bash
# test_enrich.sh - `tally enrich` on a real broker, no failures:
#   1. 600 distinct raw orders, a third of them sent twice and a sixth three
#      times (copies shuffled in, so many share a batch), ts as epoch ms, epoch
#      seconds (also fractional) and RFC 3339 (Z and offsets, fractions of 0-9
#      digits), plus 44 malformed records of every class: orders.enriched
#      (read_committed) holds each distinct order exactly once, keyed by
#      storeId, as the input object with the normTs computed here in awk and
#      validated: true; the DLQ holds each malformed record once with its
#      reason; the output topic was created as a stream (cleanup.policy=delete).
#   2. Copies sent again later, some with another price: nothing more comes
#      out, and the first copy's content stands.
#   3. Restarted with --dedup-window 5s (a per-run setting): copies of orders
#      first seen longer ago count as new and come out again, once; a copy
#      within the window does not; expired rows are pruned.
# shellcheck source=../lib/tally.sh
source "$(dirname "$0")/../lib/tally.sh"
# shellcheck source=../lib/enrich.sh
source "$(dirname "$0")/../lib/enrich.sh"

N_VALID=600
N_BAD=44

# ---- flags: usage errors need no broker -----------------------------------
expect_enrich_usage() {
    local what=$1 rc=0
    shift
    env -u KAFKA_BROKERS timeout 20 "$TALLY" enrich "$@" >"$WORK/usage.out" 2>"$WORK/usage.err" || rc=$?
    [[ "$rc" == 2 ]] || fail "$what: expected exit status 2, got $rc; stderr: $(head -c 300 "$WORK/usage.err")"
    grep -q "tally enrich --help" "$WORK/usage.err" || fail "$what: the message does not point to --help"
    ok
}
expect_enrich_usage "no --brokers" --state-dir "$WORK/none"
[[ ! -e "$WORK/none" ]] || fail "a usage error created the state directory"
expect_enrich_usage "--dedup-window 0" --brokers "$KAFKA_BROKERS" --dedup-window 0
expect_enrich_usage "--dedup-window abc" --brokers "$KAFKA_BROKERS" --dedup-window abc
expect_enrich_usage "--changelog off" --brokers "$KAFKA_BROKERS" --changelog off
grep -q 'twice' "$WORK/usage.err" || fail "--changelog off: the message does not say why"
expect_enrich_usage "--window-size" --brokers "$KAFKA_BROKERS" --window-size 60s
expect_enrich_usage "--pipeline" --brokers "$KAFKA_BROKERS" --pipeline orders
expect_enrich_usage "unknown flag" --brokers "$KAFKA_BROKERS" --no-such-flag
"$TALLY" enrich --help >"$WORK/help.out" || fail "tally enrich --help failed"
grep -q -- '--dedup-window' "$WORK/help.out" || fail "tally enrich --help does not describe --dedup-window"
ok

# ---- the generator's RFC 3339 times agree with GNU date ----------------------
: >"$WORK/sample.exp"
gen_raw_orders 60 99 1 "$WORK/sample.exp" >"$WORK/sample.kv"
checked=0
while IFS=$'\t' read -r id _ value; do
    [[ "$value" == *'"ts":"'* ]] || continue
    ts=$(sed -E 's/.*"ts":"([^"]*)".*/\1/' <<<"$value")
    norm=$(sed -E 's/.*"normTs":([0-9]+).*/\1/' <<<"$value")
    # GNU date takes at most 9 fraction digits and rounds nothing at 3
    want=$(date -u -d "$ts" +%s%3N) || fail "GNU date cannot read $ts"
    assert_eq "normTs of $id ($ts) by awk vs GNU date" "$want" "$norm"
    checked=$((checked + 1))
done <"$WORK/sample.exp"
((checked >= 20)) || fail "only $checked RFC 3339 samples (test bug)"

# ---- phase 1: duplicates and malformed records --------------------------------
new_stream enrich.db
ARGS=("${STREAM_ARGS[@]}" --max-batch 150)

create_topic "$IN" 3
: >"$WORK/expected.tsv"
: >"$WORK/bad.kv"
: >"$WORK/reasons.tsv"
gen_raw_orders "$N_VALID" 4242 1 "$WORK/expected.tsv" >"$WORK/orders.kv"
gen_bad_raw "$N_BAD" one "$WORK/bad.kv" "$WORK/reasons.tsv"
dup_lines "$WORK/orders.kv" 17 >"$WORK/orders-dup.kv"
mix "$WORK/orders-dup.kv" "$WORK/bad.kv" >"$WORK/input1.kv"
N1=$(wc -l <"$WORK/input1.kv")
copies=$((N1 - N_VALID - N_BAD))
((copies > N_VALID / 3)) || fail "only $copies extra copies (test bug)"
grep -c '"ts":"' "$WORK/orders.kv" >/dev/null || fail "no RFC 3339 times (test bug)"
produce "$IN" "$WORK/input1.kv"

enrich_start "$LOG" "${ARGS[@]}"
PID=$TALLY_PID
tally_wait_started "$PID" "$LOG"
wait_positions "$DB" "$IN" "$PREFIX" "$N_BAD" 120 "$PID"
check_enriched "phase 1 ($copies copies among $N1 records)" "$OUT" "$WORK/expected.tsv"
check_dlq_reasons "$PREFIX" "$WORK/reasons.tsv"
# the key is the storeId of the value
awk -F'\t' '{ if (index($3, "\"storeId\":\"" $2 "\"") == 0) { print "key " $2 " is not the storeId of " $3; exit 1 } }' \
    "$WORK/enriched.actual" || fail "an output record is not keyed by its storeId"
ok
assert_eq "rows in enrich_seen" "$N_VALID" "$(sqlval "$DB" 'SELECT count(*) FROM enriched_orders')"
assert_eq "events_applied (copies included)" $((N1 - N_BAD)) "$(meta "$DB" pipeline.enrich.events_applied)"
assert_eq "events_rejected" "$N_BAD" "$(meta "$DB" pipeline.enrich.events_rejected)"
"$KAFKA_SCRIPT" topics --describe --topic "$OUT" >"$WORK/describe.out" 2>&1 || fail "cannot describe $OUT"
grep -q 'cleanup.policy=delete' "$WORK/describe.out" ||
    fail "$OUT was not created as a stream (cleanup.policy=delete): $(head -c 300 "$WORK/describe.out")"
ok

# ---- phase 2: the same orders again, across batches --------------------------
# Every order once more, and 50 with another price (the first copy stands).
awk -F'|' 'NR % 12 == 0 { sub(/"qty":/, "\"note\":\"changed\",\"qty\":") } { print }' "$WORK/orders.kv" |
    shuf >"$WORK/input2.kv"
produce "$IN" "$WORK/input2.kv"
wait_positions "$DB" "$IN" "$PREFIX" "$N_BAD" 120 "$PID"
check_enriched "phase 2 (every order sent again)" "$OUT" "$WORK/expected.tsv"
tally_stop "$PID"

# ---- phase 3: a window of 5 s, set for this run only --------------------------
sleep 5.5 # every order of phases 1 and 2 is now older than the window
head -n 5 "$WORK/orders.kv" >"$WORK/again.kv"
head -n 5 "$WORK/expected.tsv" >>"$WORK/expected.tsv"
enrich_start "$LOG" "${ARGS[@]}" --dedup-window 5s
PID=$TALLY_PID
tally_wait_started "$PID" "$LOG"
produce "$IN" "$WORK/again.kv"
wait_positions "$DB" "$IN" "$PREFIX" "$N_BAD" 60 "$PID"
produce "$IN" "$WORK/again.kv" # within the window: dropped
wait_positions "$DB" "$IN" "$PREFIX" "$N_BAD" 60 "$PID"
check_enriched "phase 3 (5 orders again after the window, twice)" "$OUT" "$WORK/expected.tsv"
# Pruning: the next batch after the window deletes every expired row.
sleep 5.5
: >"$WORK/late.tsv"
gen_raw_orders 1 7 100000 "$WORK/late.tsv" >"$WORK/late.kv"
cat "$WORK/late.tsv" >>"$WORK/expected.tsv"
produce "$IN" "$WORK/late.kv"
wait_positions "$DB" "$IN" "$PREFIX" "$N_BAD" 60 "$PID"
assert_eq "rows left in enrich_seen after pruning" 1 "$(sqlval "$DB" 'SELECT count(*) FROM enrich_seen')"
assert_eq "the row left" "o100000" "$(sqlval "$DB" 'SELECT order_id FROM enrich_seen')"
tally_stop "$PID"
check_enriched "at the end" "$OUT" "$WORK/expected.tsv"
! grep -q 'event=transaction_aborted' "$LOG" || note "warning: transactions were aborted in an undisturbed run"

finish "$N_VALID orders, $copies copies, $N_BAD malformed, window expiry and pruning"
