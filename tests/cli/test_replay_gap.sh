#!/usr/bin/env bash
# test_replay_gap.sh - replay of an export with missing rows. With --on-gap
# fail (the default) replay stops with exit status 1 and a message about the
# gap, and - as 'tally replay --help' and the message itself promise -
# everything before the gap stays applied: a consistent state as of the last
# seq before the gap. With --on-gap warn it goes on and counts the gap. A bad
# line (truncated, a seq out of range) stops it the same way, after every row
# before it is committed.
source "$(dirname "$0")/../lib/assert.sh"

SRC=$WORK/source.db
# 600 orders over 5 stores x 4 products x 2 windows in batches of 10: keys
# change many times, so key_seq climbs and images overwrite each other.
awk 'function rnd(m) { seed = (seed * 16807) % 2147483647; return seed % m }
BEGIN {
    seed = 31
    for (i = 0; i < 600; i++)
        printf "{\"orderId\":\"o%d\",\"productId\":\"p%d\",\"storeId\":\"s%d\",\"price\":%d.%02d,\"qty\":%d,\"ts\":%.0f}\n",
            i, rnd(4), rnd(5), rnd(100), rnd(100), 1 + rnd(3), 1700000040000 + rnd(120000)
}' >"$WORK/orders.jsonl"
run tally ingest --pipeline orders --db "$SRC" --batch 10 "$WORK/orders.jsonl"
expect_rc "ingest" 0
run tally changelog export --db "$SRC" --out "$WORK/all.jsonl"
expect_rc "export" 0
N=$(sq "$SRC" 'SELECT count(*) FROM changelog')
assert_eq "changelog seqs are 1..N" "$N|1|$N" "$(sq "$SRC" 'SELECT count(*), min(seq), max(seq) FROM changelog')"
[[ $N -gt 200 ]] || fail "expected a few hundred changelog rows, got $N"
ok
assert_eq "export lines" "$N" "$(wc -l <"$WORK/all.jsonl")"
G=$((N / 2))
# Row G must be one of several changes of its key, or the gap would not matter.
[[ $(sq "$SRC" "SELECT key_seq FROM changelog WHERE seq = $G") -gt 1 ]] || G=$((G + 1))
sed "${G}d" "$WORK/all.jsonl" >"$WORK/gap.jsonl"
assert_eq "gap file" "$((N - 1))" "$(wc -l <"$WORK/gap.jsonl")"

# expected_state LIMIT [EXCLUDE]: the order_window_state the source had as of
# seq LIMIT (the latest image per key with seq <= LIMIT, without seq EXCLUDE).
expected_state() {
    sq "$SRC" '.separator ,' "SELECT json_extract(image, '\$.store_id'), json_extract(image, '\$.product_id'),
        json_extract(image, '\$.window_start_ms'), json_extract(image, '\$.sum_micros'),
        json_extract(image, '\$.count'), key_seq
        FROM changelog c WHERE seq = (SELECT max(seq) FROM changelog d WHERE d.key = c.key AND d.seq <= $1 AND d.seq != ${2:-0})" | sort
}
actual_state() {
    sq "$1" '.separator ,' 'SELECT store_id, product_id, window_start_ms, sum_micros, count, key_seq FROM order_window_state' | sort
}

# --- --on-gap warn ---------------------------------------------------------
W=$WORK/warn.db
run tally replay --db "$W" --on-gap warn "$WORK/gap.jsonl"
expect_rc "replay --on-gap warn" 0
assert_eq "warn: rows" "$((N - 1))" "$(summary_field rows "$OUT")"
assert_eq "warn: gaps" 1 "$(summary_field gaps "$OUT")"
assert_eq "warn: changed" "$((N - 1))" "$(summary_field changed "$OUT")"
assert_eq "warn: last_seq" "$N" "$(summary_field last_seq "$OUT")"
assert_contains "warn: gap logged" "$ERR" "event=replay_gap line=$G missing_from_seq=$G missing_to_seq=$G"
assert_contains "warn: logged as a warning" "$ERR" "level=warn event=replay_gap"
expected_state "$N" "$G" >"$WORK/exp.warn"
actual_state "$W" >"$WORK/act.warn"
assert_files_eq "warn: state = every row but the missing one" "$WORK/exp.warn" "$WORK/act.warn"
assert_eq "warn: changelog lacks exactly seq $G" "$((N - 1))|0" \
    "$(sq "$W" "SELECT count(*), count(*) FILTER (WHERE seq = $G) FROM changelog")"
# Replaying a complete export afterwards fills the hole: identical to the source.
run tally replay --db "$W" "$WORK/all.jsonl"
expect_rc "warn: replay the complete export" 0
assert_eq "warn: complete export has no gap" 0 "$(summary_field gaps "$OUT")"
expected_state "$N" >"$WORK/exp.full"
actual_state "$W" >"$WORK/act.full"
assert_files_eq "warn + complete export = source state" "$WORK/exp.full" "$WORK/act.full"
assert_eq "warn + complete export: changelog complete" "$N" "$(sq "$W" 'SELECT count(*) FROM changelog')"

# Several missing rows are one gap with the whole range.
sed "$((G + 10)),$((G + 14))d" "$WORK/all.jsonl" >"$WORK/gap5.jsonl"
run tally replay --db "$WORK/warn5.db" --on-gap warn "$WORK/gap5.jsonl"
expect_rc "warn: 5 missing rows" 0
assert_eq "warn: 5 missing rows = 1 gap" 1 "$(summary_field gaps "$OUT")"
assert_contains "warn: gap range" "$ERR" "missing_from_seq=$((G + 10)) missing_to_seq=$((G + 14))"

# A --since export replayed into an empty database starts with a gap.
K=$((N / 3))
tally changelog export --db "$SRC" --since "$K" --out "$WORK/since.jsonl" 2>/dev/null
run tally replay --db "$WORK/since-warn.db" --on-gap warn "$WORK/since.jsonl"
expect_rc "since export, warn" 0
assert_eq "since export, warn: gaps" 1 "$(summary_field gaps "$OUT")"
assert_contains "since export, warn: range" "$ERR" "missing_from_seq=1 missing_to_seq=$K"
run tally replay --db "$WORK/since-fail.db" "$WORK/since.jsonl"
expect_rc "since export into an empty database fails" 1
assert_contains "since export: message mentions the gap" "$ERR" "gap"
assert_eq "since export: nothing applied" "0|0" \
    "$(sq "$WORK/since-fail.db" 'SELECT (SELECT count(*) FROM changelog), (SELECT count(*) FROM order_window_state)')"

# --- --on-gap fail (default) ---------------------------------------------------
# fail_case LABEL DB [replay options]: stops at the gap with exit status 1 and
# leaves the state as of seq G-1 (everything before the gap applied).
fail_case() {
    local label=$1 db=$2
    shift 2
    run tally replay --db "$db" "$@" "$WORK/gap.jsonl"
    expect_rc "$label: exit status" 1
    assert_contains "$label: message mentions the gap" "$ERR" "gap"
    assert_contains "$label: names the missing seq" "$ERR" "missing_from_seq=$G"
    assert_not_contains "$label: no success summary" "$OUT" "replayed"
    assert_eq "$label: changelog holds seq 1..$((G - 1))" "$((G - 1))|$((G - 1))" \
        "$(sq "$db" 'SELECT count(*), coalesce(max(seq), 0) FROM changelog')"
    expected_state "$((G - 1))" >"$WORK/exp.fail"
    actual_state "$db" >"$WORK/act.fail"
    assert_files_eq "$label: state as of seq $((G - 1))" "$WORK/exp.fail" "$WORK/act.fail"
    # Recovery: replaying an export that covers the gap completes the state.
    run tally replay --db "$db" "$WORK/all.jsonl"
    expect_rc "$label: recovery replay" 0
    assert_eq "$label: recovery has no gap" 0 "$(summary_field gaps "$OUT")"
    actual_state "$db" >"$WORK/act.rec"
    assert_files_eq "$label: recovered state = source" "$WORK/exp.full" "$WORK/act.rec"
}
fail_case "fail --on-gap fail --batch 1" "$WORK/fail1.db" --on-gap fail --batch 1
fail_case "fail --batch 7" "$WORK/fail7.db" --batch 7
# The default batch (10000 rows) holds the whole export in one transaction.
fail_case "fail, default batch" "$WORK/fail-default.db"

# --- a bad line ------------------------------------------------------------------
# An export whose last line is cut short (a copy that stopped, say) and one with
# a seq that would overflow: every line before the bad one is applied and
# committed, whatever --batch, then the replay stops with exit status 1, the
# line number and what is wrong. Replaying the repaired file completes it.
head -c -40 "$WORK/all.jsonl" >"$WORK/truncated.jsonl"
assert_eq "truncated file: last line cut" "$((N - 1))" "$(wc -l <"$WORK/truncated.jsonl")"
expected_state "$((N - 1))" >"$WORK/exp.trunc"
for batch in 1 7 1000000; do
    db=$WORK/trunc$batch.db
    run tally replay --db "$db" --batch $batch "$WORK/truncated.jsonl"
    expect_rc "truncated, --batch $batch: exit status" 1
    assert_contains "truncated, --batch $batch: names the line" "$ERR" "truncated.jsonl line $N:"
    assert_contains "truncated, --batch $batch: says why" "$ERR" "the line ends inside its JSON"
    assert_contains "truncated, --batch $batch: says what is kept" "$ERR" "the $((N - 1)) rows before it are applied"
    assert_not_contains "truncated, --batch $batch: no success summary" "$OUT" "replayed"
    assert_eq "truncated, --batch $batch: changelog holds seq 1..$((N - 1))" "$((N - 1))|$((N - 1))" \
        "$(sq "$db" 'SELECT count(*), coalesce(max(seq), 0) FROM changelog')"
    actual_state "$db" >"$WORK/act.trunc"
    assert_files_eq "truncated, --batch $batch: state as of seq $((N - 1))" "$WORK/exp.trunc" "$WORK/act.trunc"
    # a new database is filled without its secondary indexes, built at the end
    assert_eq "truncated, --batch $batch: indexes built" "4|0" \
        "$(sq "$db" "SELECT (SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name LIKE '%_by_%'), (SELECT count(*) FROM meta WHERE key LIKE 'replay.%')")"
    assert_eq "truncated, --batch $batch: the part index is whole" "1" \
        "$(sq "$db" "SELECT count(*) FROM pragma_index_info('order_window_state_by_part')")"
done
run tally replay --db "$WORK/trunc7.db" "$WORK/all.jsonl"
expect_rc "truncated, then the whole export" 0
assert_eq "truncated, then the whole export: one row changed" 1 "$(summary_field changed "$OUT")"
actual_state "$WORK/trunc7.db" >"$WORK/act.trunc"
assert_files_eq "truncated, then the whole export: source state" "$WORK/exp.full" "$WORK/act.trunc"

B=$((N / 4))
awk -v b="$B" 'NR == b { sub(/"seq":[0-9]+/, "\"seq\":9223372036854775807") } { print }' \
    "$WORK/all.jsonl" >"$WORK/bigseq.jsonl"
assert_contains "bigseq file" "$(sed -n "${B}p" "$WORK/bigseq.jsonl")" '"seq":9223372036854775807,'
run tally replay --db "$WORK/bigseq.db" --on-gap warn "$WORK/bigseq.jsonl"
expect_rc "seq 2^63-1: exit status" 1
assert_contains "seq 2^63-1: names the line and the field" "$ERR" \
    "bigseq.jsonl line $B: not a changelog row: seq must be an integer from 1 to 4611686018427387903, not 9223372036854775807"
assert_eq "seq 2^63-1: rows before it applied" "$((B - 1))|$((B - 1))" \
    "$(sq "$WORK/bigseq.db" 'SELECT count(*), coalesce(max(seq), 0) FROM changelog')"
expected_state "$((B - 1))" >"$WORK/exp.big"
actual_state "$WORK/bigseq.db" >"$WORK/act.big"
assert_files_eq "seq 2^63-1: state as of seq $((B - 1))" "$WORK/exp.big" "$WORK/act.big"
# the database still takes the rest
run tally replay --db "$WORK/bigseq.db" "$WORK/all.jsonl"
expect_rc "seq 2^63-1, then the whole export" 0
actual_state "$WORK/bigseq.db" >"$WORK/act.big"
assert_files_eq "seq 2^63-1, then the whole export: source state" "$WORK/exp.full" "$WORK/act.big"

finish
