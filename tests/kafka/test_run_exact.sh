#!/usr/bin/env bash
# test_run_exact.sh - one `tally run`, no failures: 20000 orders over 20 keys x
# 5 windows in 3 input partitions, with 30 malformed lines mixed in. After all
# is consumed and a SIGTERM (exit 0): the latest committed output per key and
# the SQLite state equal totals computed with awk, exactly; the DLQ holds each
# malformed line once, with its headers; the changelog topic mirrors the state;
# the recorded input positions are the ends of the input partitions.
# shellcheck source=../lib/tally.sh
source "$(dirname "$0")/../lib/tally.sh"

N_ORDERS=20000
N_BAD=30

# ---- flags: usage errors need no broker -----------------------------------
expect_usage_error "no --brokers and no KAFKA_BROKERS" --pipeline orders --state-dir "$WORK/none"
grep -q -- '--brokers' "$WORK/usage.err" || fail "the missing-brokers message does not name --brokers"
[[ ! -e "$WORK/none" ]] || fail "a usage error created the state directory"
expect_usage_error "no --pipeline" --brokers "$KAFKA_BROKERS"
"$TALLY" run --help >"$WORK/help.out" || fail "tally run --help failed"
grep -q -- '--instance-id' "$WORK/help.out" || fail "tally run --help does not describe --instance-id"
ok

# ---- input -----------------------------------------------------------------
new_stream orders.db

create_topic "$IN" 3
: >"$WORK/orders.tsv"
gen_orders "$N_ORDERS" 4242 1 "$WORK/orders.tsv" >"$WORK/orders.kv"
gen_malformed "$N_BAD" "exact" >"$WORK/bad.kv"
mix "$WORK/orders.kv" "$WORK/bad.kv" >"$WORK/input.kv"
produce "$IN" "$WORK/input.kv"
TOTAL=$((N_ORDERS + N_BAD))
assert_eq "records in the input topic" "$TOTAL" "$(topic_records "$IN")"
end_offsets "$IN" >"$WORK/input.ends"
assert_eq "input partitions" 3 "$(wc -l <"$WORK/input.ends")"
awk '$2 == 0 { exit 1 }' "$WORK/input.ends" || fail "an input partition is empty: $(cat "$WORK/input.ends")"

# ---- run until everything is consumed --------------------------------------
LOG=$WORK/tally.log
started=$SECONDS
tally_start "$LOG" "${STREAM_ARGS[@]}" --max-batch 200
PID=$TALLY_PID
tally_wait_started "$PID" "$LOG"
# consumed: applied + rejected is every record produced (fails on more).
consumed() {
    local done_n
    done_n=$(meta_sum "$DB" pipeline.orders.events_applied pipeline.orders.events_rejected)
    POLL_STATE="$done_n of $TOTAL records consumed"
    ((done_n <= TOTAL)) || fail "applied + rejected ($done_n) exceeds the $TOTAL records produced"
    ((done_n == TOTAL))
}
POLL_EVERY=0.5 poll_until 150 "$PID" "all $TOTAL records consumed" consumed
elapsed=$((SECONDS - started))
tally_stop "$PID"

assert_eq "events_applied" "$N_ORDERS" "$(meta "$DB" pipeline.orders.events_applied)"
assert_eq "events_rejected" "$N_BAD" "$(meta "$DB" pipeline.orders.events_rejected)"
grep -q "event=shutdown applied=$N_ORDERS rejected=$N_BAD " "$LOG" ||
    fail "no shutdown line with applied=$N_ORDERS rejected=$N_BAD: $(grep 'event=shutdown' "$LOG" | cut -c1-300)"
ok
! grep -q 'event=transaction_aborted' "$LOG" || note "warning: transactions were aborted in an undisturbed run"

# The positions SQLite recorded are the ends of the input partitions.
while read -r p end; do
    assert_eq "recorded input position of partition $p" "$end" "$(meta "$DB" "kafka.input.$IN.$p")"
done <"$WORK/input.ends"

# ---- totals, dead letters, changelog -----------------------------------------
check_totals "one run" "$WORK/orders.tsv" "$DB" "$OUT"
check_dlq "$PREFIX" "$IN" "$WORK/bad.kv"

# The changelog topic: committed records whose newest image per key (the
# highest key_seq: this input is keyed by orderId, so a window's changes come
# from every input partition and land in every changelog partition) is the
# state (sum in micros and count), and no more records than state changes.
read_topic "$PREFIX-changelog" '%k\t%s\n' >"$WORK/changelog.raw"
CL=$(wc -l <"$WORK/changelog.raw")
((CL > 0)) || fail "the changelog topic $PREFIX-changelog is empty"
ok
awk -F'\t' '
    function num(v, name) {
        if (!match(v, "\"" name "\":-?[0-9]+")) return "?"
        return substr(v, RSTART + length(name) + 3, RLENGTH - length(name) - 3)
    }
    index($2, "\"entity\":\"order_window\"") {
        v = num($2, "key_seq") + 0
        if (!($1 in seq) || v > seq[$1]) { seq[$1] = v; last[$1] = num($2, "sum_micros") "\t" num($2, "count") }
    }
    END { for (k in last) { split(k, a, "#"); print a[1] "\t" a[2] "\t" a[3] "\t" last[k] } }' \
    "$WORK/changelog.raw" | sort >"$WORK/changelog.latest"
awk -F'\t' -v w="$WINDOW_MS" '
    { k = $1 "\t" $2 "\t" sprintf("%.0f", $3 - ($3 % w)); sum[k] += $4; cnt[k]++ }
    END { for (k in sum) printf "%s\t%.0f\t%d\n", k, sum[k], cnt[k] }' "$WORK/orders.tsv" |
    sort >"$WORK/expected.micros"
assert_files_eq "latest changelog image per key vs awk" "$WORK/expected.micros" "$WORK/changelog.latest"
changes=$(sqlval "$DB" 'SELECT count(*) FROM changelog')
assert_eq "changelog records in Kafka vs rows in SQLite" "$changes" "$CL"

finish "$TOTAL records consumed in ${elapsed}s"
