#!/usr/bin/env bash
# test_ingest_resume.sh - tally ingest applies each line of a file once across
# failed runs: a run that fails on a full disk (a small tmpfs) and a run killed
# with SIGKILL half-way are each run again, resume after the last applied line
# (the summary says from where), and the state equals awk's expected_windows;
# a run of a finished file applies nothing; a file rewritten at the same path
# and another file start from their first line; standard input is never
# resumed (every run applies every line).
# shellcheck source=../lib/data.sh
source "$(dirname "$0")/../lib/data.sh"

# state_windows DB: order_windows as "store product window_start sum count".
state_windows() {
    "$TALLY" query --db "$1" --format csv \
        'SELECT store_id, product_id, window_start, sum, count FROM order_windows' >"$WORK/query.csv" ||
        fail "tally query on $1 failed"
    tr -d '\r"' <"$WORK/query.csv" | tail -n +2 | tr ',' '\t' | sort
}

# check_exact WHAT DB TSV: the state of DB is what awk expects of TSV.
check_exact() {
    expected_windows "$3" >"$WORK/expected.tsv"
    [[ -s "$WORK/expected.tsv" ]] || fail "no expected windows (test bug)"
    state_windows "$2" >"$WORK/actual.tsv"
    assert_files_eq "$1: order_windows vs awk" "$WORK/expected.tsv" "$WORK/actual.tsv"
}

# recorded_line DB FILE: the line the database records FILE applied up to.
recorded_line() {
    sqlite3 -cmd '.timeout 5000' "$1" \
        "SELECT json_extract(value, '$.line') FROM meta WHERE key = 'ingest.orders.$2'"
}

gen_orders 80000 11 1 "$WORK/a.tsv" | cut -d'|' -f2- >"$WORK/a.jsonl"
ok

# --- a full disk -----------------------------------------------------------
# A 2 MiB tmpfs fills with the WAL a few thousand lines in; where mounting is
# not permitted, a file size limit does the same (SQLite then says "disk I/O
# error" rather than "disk is full").
FULL=$WORK/full
mkdir "$FULL"
limit=(true)
if mount -t tmpfs -o size=2m tmpfs "$FULL" 2>/dev/null; then
    unmount_full() { umount "$FULL" 2>/dev/null || true; }
    CLEANUP_HOOKS+=(unmount_full)
    reason='database or disk is full'
else
    limit=(ulimit -f 2048)
    reason='disk I/O error'
    note "mount not permitted: a 2 MiB file size limit stands in for the full disk"
fi
DB=$FULL/state.db
set +e
(trap '' XFSZ; "${limit[@]}"; exec "$TALLY" ingest --pipeline orders --db "$DB" \
    --rejects "$WORK/rejects.jsonl" --batch 500 "$WORK/a.jsonl") >"$WORK/out" 2>"$WORK/err"
RC=$?
set -e
ERR=$(cat "$WORK/err")
expect_rc "ingest onto a full disk" 1
assert_contains "the full disk's reason" "$ERR" "$reason"
applied=$(recorded_line "$DB" "$WORK/a.jsonl")
[[ "$applied" =~ ^[0-9]+$ ]] && ((applied > 0 && applied < 80000)) ||
    fail "the failed run should have applied part of the file, recorded: '$applied'"
ok
assert_contains "how to go on" "$ERR" "applied up to line $applied; run the same command again"
assert_eq "events applied = the recorded line" "$applied" \
    "$(sqlite3 "$DB" "SELECT value FROM meta WHERE key = 'pipeline.orders.events_applied'")"
if [[ ${limit[0]} == true ]]; then
    mount -o remount,size=64m "$FULL"
fi
run tally ingest --pipeline orders --db "$DB" --rejects "$WORK/rejects.jsonl" --batch 500 "$WORK/a.jsonl"
expect_rc "rerun after the full disk" 0
assert_eq "resumed after the applied line" $((applied + 1)) "$(summary_field resumed_from_line "$OUT")"
assert_eq "the rest applied" $((80000 - applied)) "$(summary_field applied "$OUT")"
assert_eq "lines counted from the file's start" 80000 "$(summary_field lines "$OUT")"
check_exact "full disk, then a rerun" "$DB" "$WORK/a.tsv"

# A finished file run again: nothing applied, the state unchanged.
run tally ingest --pipeline orders --db "$DB" --rejects "$WORK/rejects.jsonl" "$WORK/a.jsonl"
expect_rc "rerun of a finished file" 0
assert_eq "a finished file resumes after its last line" 80001 "$(summary_field resumed_from_line "$OUT")"
assert_eq "a finished file applies nothing" 0 "$(summary_field applied "$OUT")"
check_exact "a finished file run again" "$DB" "$WORK/a.tsv"

# --- SIGKILL half-way --------------------------------------------------------
gen_orders 400000 23 1000000 "$WORK/big.tsv" | cut -d'|' -f2- >"$WORK/big.jsonl"
DB=$WORK/killed.db
"$TALLY" ingest --pipeline orders --db "$DB" --batch 1000 "$WORK/big.jsonl" >"$WORK/killed.out" 2>&1 &
pid=$!
bg_track "$pid" "$WORK/killed.out"
limit_s=$((SECONDS + 60))
until [[ "$(recorded_line "$DB" "$WORK/big.jsonl" 2>/dev/null)" =~ ^[1-9][0-9]*$ ]]; do
    alive "$pid" || fail "ingest exited before its first batch was recorded: $(cat "$WORK/killed.out")"
    ((SECONDS < limit_s)) || fail "no batch of big.jsonl recorded within 60 s"
    sleep 0.05
done
kill -KILL "$pid"
wait "$pid" && RC=0 || RC=$?
expect_rc "ingest killed half-way" 137
applied=$(recorded_line "$DB" "$WORK/big.jsonl")
((applied > 0 && applied < 400000)) || fail "the killed run should have applied part of the file: $applied"
ok
run tally ingest --pipeline orders --db "$DB" --batch 1000 "$WORK/big.jsonl"
expect_rc "rerun after SIGKILL" 0
assert_eq "resumed after the line the killed run recorded" $((applied + 1)) \
    "$(summary_field resumed_from_line "$OUT")"
assert_eq "the rest applied" $((400000 - applied)) "$(summary_field applied "$OUT")"
check_exact "SIGKILL, then a rerun" "$DB" "$WORK/big.tsv"

# --- other inputs ------------------------------------------------------------
# Another file starts from its first line.
DB=$WORK/two.db
gen_orders 3000 31 5000000 "$WORK/b.tsv" | cut -d'|' -f2- >"$WORK/b.jsonl"
gen_orders 2000 37 6000000 "$WORK/c.tsv" | cut -d'|' -f2- >"$WORK/c.jsonl"
run tally ingest --pipeline orders --db "$DB" "$WORK/b.jsonl"
expect_rc "first file" 0
run tally ingest --pipeline orders --db "$DB" "$WORK/c.jsonl"
expect_rc "another file" 0
assert_eq "another file: all applied" 2000 "$(summary_field applied "$OUT")"
assert_not_contains "another file is not resumed" "$OUT" "resumed_from_line"
cat "$WORK/b.tsv" "$WORK/c.tsv" >"$WORK/bc.tsv"
check_exact "two files" "$DB" "$WORK/bc.tsv"

# The same path rewritten (other orders): from its first line, with a warning.
cp "$WORK/b.jsonl" "$WORK/b-first.jsonl"
gen_orders 3000 41 7000000 "$WORK/b2.tsv" | cut -d'|' -f2- >"$WORK/b.jsonl"
run tally ingest --pipeline orders --db "$DB" "$WORK/b.jsonl"
expect_rc "a rewritten file" 0
assert_eq "a rewritten file: all applied" 3000 "$(summary_field applied "$OUT")"
assert_contains "a rewritten file is named" "$ERR" "input_changed"
cat "$WORK/b.tsv" "$WORK/c.tsv" "$WORK/b2.tsv" >"$WORK/bcb2.tsv"
check_exact "a rewritten file" "$DB" "$WORK/bcb2.tsv"

# A file that has grown resumes after what was applied.
cat "$WORK/b-first.jsonl" >>"$WORK/c.jsonl"
run tally ingest --pipeline orders --db "$DB" "$WORK/c.jsonl"
expect_rc "a grown file" 0
assert_eq "a grown file resumes" 2001 "$(summary_field resumed_from_line "$OUT")"
assert_eq "a grown file: the new lines applied" 3000 "$(summary_field applied "$OUT")"
cat "$WORK/bcb2.tsv" "$WORK/b.tsv" >"$WORK/all.tsv"
check_exact "a grown file" "$DB" "$WORK/all.tsv"

# Standard input has no identity: every run applies every line.
DB=$WORK/stdin.db
for i in 1 2; do
    run tally ingest --pipeline orders --db "$DB" - <"$WORK/c.jsonl"
    expect_rc "standard input, run $i" 0
    assert_eq "standard input, run $i: all applied" 5000 "$(summary_field applied "$OUT")"
    assert_not_contains "standard input is not resumed" "$OUT" "resumed_from_line"
done
assert_eq "standard input: applied twice" 10000 \
    "$(sqlite3 "$DB" "SELECT value FROM meta WHERE key = 'pipeline.orders.events_applied'")"

finish
