#!/usr/bin/env bash
# test_flags.sh - command-line handling: usage errors exit 2 with a message
# naming the problem and pointing at --help; --help exits 0; durations are
# parsed into the window size recorded in the database.
source "$(dirname "$0")/../lib/assert.sh"

ORDER='{"orderId":"o1","productId":"p1","storeId":"s1","price":1.25,"qty":2,"ts":1700000040000}'
printf '%s\n' "$ORDER" >"$WORK/one.jsonl"
DB=$WORK/state.db
tally ingest --pipeline orders --db "$DB" "$WORK/one.jsonl" >/dev/null 2>&1 || fail "setup ingest failed"
tally changelog export --db "$DB" --out "$WORK/export.jsonl" 2>/dev/null || fail "setup export failed"

# usage_error CMD_NAME NEEDLE ARGS...: exit 2, nothing on stdout, stderr names
# the problem (NEEDLE) and says "Run 'tally CMD_NAME --help'".
usage_error() {
    local cmd=$1 needle=$2
    shift 2
    run tally "$@"
    [[ $RC == 2 ]] || fail "tally $*: expected exit status 2, got $RC; stderr=[${ERR:0:300}]"
    ok
    [[ -z $OUT ]] || fail "tally $*: a usage error printed on stdout: [${OUT:0:200}]"
    ok
    [[ $ERR == *"$needle"* ]] || fail "tally $*: stderr should mention [$needle]: [${ERR:0:300}]"
    ok
    [[ $ERR == *"Run 'tally $cmd --help'"* ]] || fail "tally $*: stderr should say \"Run 'tally $cmd --help'\": [${ERR:0:300}]"
    ok
}

# --- top level -------------------------------------------------------------
run tally
expect_rc "no arguments" 2
assert_contains "no arguments: usage on stderr" "$ERR" "usage:"
assert_contains "no arguments: points at command help" "$ERR" "Run 'tally COMMAND --help'"
run tally frobnicate
expect_rc "unknown command" 2
assert_contains "unknown command named" "$ERR" "frobnicate"
for h in --help -h help; do
    run tally $h
    expect_rc "tally $h" 0
    assert_contains "tally $h: usage on stdout" "$OUT" "usage:"
done

# --- --help on every command -----------------------------------------------
for args in "ingest --help" "query --help" "changelog --help" "changelog export --help" "replay --help" \
    "ingest -h" "query -h" "replay -h"; do
    # shellcheck disable=SC2086 # split on purpose
    run tally $args
    expect_rc "tally $args" 0
    assert_contains "tally $args: usage on stdout" "$OUT" "usage:"
    assert_eq "tally $args: nothing on stderr" "" "$ERR"
done
# --help wins even next to other (valid) options.
run tally query --db "$DB" --help
expect_rc "query --db X --help" 0
assert_contains "query --db X --help" "$OUT" "usage: tally query"

# --- unknown options ---------------------------------------------------------
usage_error ingest "unknown option --bogus" ingest --bogus --pipeline orders --db "$DB" "$WORK/one.jsonl"
usage_error query "unknown option --bogus" query --db "$DB" --bogus 'SELECT 1'
usage_error changelog "unknown option --bogus" changelog export --db "$DB" --bogus
usage_error replay "unknown option --bogus" replay --db "$WORK/r.db" --bogus "$WORK/export.jsonl"
usage_error ingest "unknown option -x" ingest -x --pipeline orders --db "$DB" "$WORK/one.jsonl"

# --- missing values ----------------------------------------------------------
usage_error ingest "--db needs a value" ingest --pipeline orders --db
usage_error ingest "--pipeline needs a value" ingest --db "$DB" --pipeline
usage_error ingest "--window-size needs a value" ingest --pipeline orders --db "$DB" --window-size
usage_error ingest "--batch needs a value" ingest --pipeline orders --db "$DB" --batch
usage_error query "--format needs a value" query --db "$DB" 'SELECT 1' --format
usage_error query "--timeout needs a value" query --db "$DB" 'SELECT 1' --timeout
usage_error changelog "--since needs a value" changelog export --db "$DB" --since
usage_error changelog "--out needs a value" changelog export --db "$DB" --out
usage_error replay "--on-gap needs a value" replay --db "$WORK/r.db" "$WORK/export.jsonl" --on-gap

# --- missing required options / arguments ------------------------------------
usage_error ingest "--db is required" ingest --pipeline orders "$WORK/one.jsonl"
usage_error ingest "--pipeline is required" ingest --db "$WORK/new.db" "$WORK/one.jsonl"
[[ ! -e "$WORK/new.db" ]] || fail "a usage error created the database"
ok
usage_error query "--db is required" query 'SELECT 1'
usage_error query "SQL" query --db "$DB"
usage_error changelog "--db is required" changelog export
usage_error changelog "export" changelog
usage_error changelog "export" changelog import --db "$DB"
usage_error replay "--db is required" replay "$WORK/export.jsonl"
usage_error replay "export file" replay --db "$WORK/r.db"
usage_error ingest "one input file at most" ingest --pipeline orders --db "$DB" a.jsonl b.jsonl
usage_error changelog "unexpected argument" changelog export --db "$DB" extra

# --- bad values ----------------------------------------------------------------
usage_error ingest "abc" ingest --pipeline orders --db "$WORK/w.db" --window-size abc "$WORK/one.jsonl"
usage_error ingest "-5s" ingest --pipeline orders --db "$WORK/w.db" --window-size -5s "$WORK/one.jsonl"
usage_error ingest "--window-size" ingest --pipeline orders --db "$WORK/w.db" --window-size 0 "$WORK/one.jsonl"
usage_error ingest "10x" ingest --pipeline orders --db "$WORK/w.db" --window-size 10x "$WORK/one.jsonl"
usage_error ingest "1h30" ingest --pipeline orders --db "$WORK/w.db" --window-size 1h30 "$WORK/one.jsonl"
usage_error ingest "--window-size" ingest --pipeline orders --db "$WORK/w.db" --window-size '' "$WORK/one.jsonl"
usage_error ingest "--batch" ingest --pipeline orders --db "$WORK/w.db" --batch 0 "$WORK/one.jsonl"
usage_error ingest "--batch" ingest --pipeline orders --db "$WORK/w.db" --batch -3 "$WORK/one.jsonl"
usage_error ingest "--batch" ingest --pipeline orders --db "$WORK/w.db" --batch 10k "$WORK/one.jsonl"
usage_error ingest "--synchronous" ingest --pipeline orders --db "$WORK/w.db" --synchronous sometimes "$WORK/one.jsonl"
[[ ! -e "$WORK/w.db" ]] || fail "a rejected option value still created the database"
ok
usage_error query "xml" query --db "$DB" --format xml 'SELECT 1'
usage_error query "10x" query --db "$DB" --timeout 10x 'SELECT 1'
usage_error query "--max-rows" query --db "$DB" --max-rows -1 'SELECT 1'
usage_error query "--max-rows" query --db "$DB" --max-rows many 'SELECT 1'
usage_error changelog "--since" changelog export --db "$DB" --since -1
usage_error changelog "--since" changelog export --db "$DB" --since abc
usage_error replay "maybe" replay --db "$WORK/r.db" --on-gap maybe "$WORK/export.jsonl"
usage_error replay "--batch" replay --db "$WORK/r.db" --batch 0 "$WORK/export.jsonl"
[[ ! -e "$WORK/r.db" ]] || fail "a usage error in replay created the target database"
ok

# --- durations -------------------------------------------------------------------
# Each --window-size is recorded (in ms) in a new database.
for spec in "500ms:500" "10s:10000" "2m:120000" "24h:86400000" "1h30m:5400000" "90:90000" "1m30s:90000"; do
    dur=${spec%%:*}
    ms=${spec#*:}
    wdb=$WORK/window-$dur.db
    run tally ingest --pipeline orders --db "$wdb" --window-size "$dur" "$WORK/one.jsonl"
    expect_rc "--window-size $dur" 0
    assert_eq "--window-size $dur recorded" "$ms" \
        "$(sq "$wdb" "SELECT value FROM meta WHERE key='pipeline.orders.window_ms'")"
    # The window actually applies: 1700000040000 floored to the window.
    assert_eq "--window-size $dur window_start" "$(awk -v t=1700000040000 -v w="$ms" 'BEGIN { printf "%.0f", t - t % w }')" \
        "$(sq "$wdb" 'SELECT window_start FROM order_windows')"
done
assert_eq "default window recorded" 60000 "$(sq "$DB" "SELECT value FROM meta WHERE key='pipeline.orders.window_ms'")"

# Durations for --timeout are accepted too.
for dur in 500ms 10s 2m 1h30m 30 0; do
    run tally query --db "$DB" --timeout "$dur" 'SELECT 1'
    expect_rc "query --timeout $dur" 0
done

# The window is fixed per database: 60s then 5m fails and names window_ms,
# and the state is untouched; the same size spelled differently is fine.
W=$WORK/fixed.db
run tally ingest --pipeline orders --db "$W" --window-size 60s "$WORK/one.jsonl"
expect_rc "ingest 60s" 0
run tally ingest --pipeline orders --db "$W" --window-size 5m "$WORK/one.jsonl"
[[ $RC != 0 ]] || fail "ingesting with --window-size 5m into a 60s database succeeded"
ok
assert_contains "window mismatch message" "$ERR" "window_ms"
assert_eq "window mismatch: state untouched" "1|1" "$(sq "$W" 'SELECT count(*), sum(count) FROM order_window_state')"
assert_eq "window mismatch: recorded window kept" 60000 "$(sq "$W" "SELECT value FROM meta WHERE key='pipeline.orders.window_ms'")"
run tally ingest --pipeline orders --db "$W" --window-size 1m "$WORK/one.jsonl"
expect_rc "ingest 1m into a 60s database" 0
run tally ingest --pipeline orders --db "$W" "$WORK/one.jsonl"
expect_rc "ingest with the default (60s) into a 60s database" 0
# The same file again: its one line is applied once, the reruns resume after it.
assert_eq "rerun resumes after the applied line" 2 "$(summary_field resumed_from_line "$OUT")"
assert_eq "rerun applies nothing" 0 "$(summary_field applied "$OUT")"
assert_eq "three ingests of one file counted once" 1 "$(sq "$W" 'SELECT sum(count) FROM order_window_state')"

# --set for a setting the pipeline does not have.
usage_error ingest "foo" ingest --pipeline orders --db "$WORK/set.db" --set foo=1 "$WORK/one.jsonl"
usage_error ingest "--set" ingest --pipeline orders --db "$WORK/set.db" --set novalue "$WORK/one.jsonl"

# Unknown pipeline: a bad --pipeline value.
usage_error ingest "nope" ingest --pipeline nope --db "$WORK/p.db" "$WORK/one.jsonl"

finish
