#!/usr/bin/env bash
# test_query_readonly.sh - tally query refuses anything that could write,
# interrupts runaway queries, caps rows, prints csv/json correctly, and reads
# consistent snapshots while an ingest writes the same database.
# shellcheck source=../lib/data.sh
source "$(dirname "$0")/../lib/data.sh"

DB=$WORK/state.db

# gen N SEED FIRST: N orders over 50 stores x 20 products, 10 windows.
gen() {
    awk -v n="$1" -v seed="$2" -v first="$3" '
    function rnd(m) { seed = (seed * 16807) % 2147483647; return seed % m }
    BEGIN {
        for (i = 0; i < n; i++)
            printf "{\"orderId\":\"o%d\",\"productId\":\"p%d\",\"storeId\":\"s%d\",\"price\":%d.%02d,\"qty\":%d,\"ts\":%.0f}\n",
                first + i, rnd(20), rnd(50), rnd(1000), rnd(100), 1 + rnd(5), 1700000000000 + rnd(600000)
    }'
}

gen 5000 11 1 >"$WORK/orders.jsonl"
run tally ingest --pipeline orders --db "$DB" "$WORK/orders.jsonl"
expect_rc "setup ingest" 0

checksum() {
    sq "$DB" "SELECT count(*), sum(sum_micros), sum(count), sum(key_seq) FROM order_window_state;
              SELECT count(*), max(seq) FROM changelog;
              SELECT group_concat(key || '=' || value, ',') FROM (SELECT * FROM meta ORDER BY key);
              SELECT group_concat(type || ':' || name, ',') FROM (SELECT * FROM sqlite_schema ORDER BY name);
              PRAGMA journal_mode;"
}
BEFORE=$(checksum)
assert_contains "setup: state holds the orders" "$BEFORE" "|5000|"

# --- hostile statements -----------------------------------------------------
hostile_sql
hostile=("${HOSTILE_SQL[@]}" "SELECT writefile('$WORK/evil.txt', 'x')" "SELECT 1; DELETE FROM changelog"
    "SELECT 1; ATTACH DATABASE '$WORK/evil.db' AS evil")
for sql in "${hostile[@]}"; do
    run tally query --db "$DB" "$sql"
    [[ $RC == 1 ]] || fail "[$sql]: expected exit status 1 (refused), got $RC; stdout=[${OUT:0:200}] stderr=[${ERR:0:200}]"
    ok
    [[ -n $ERR ]] || fail "[$sql]: refused without a message"
    ok
    assert_eq "[$sql]: state unchanged" "$BEFORE" "$(checksum)"
done
# Some refusals must say why.
run tally query --db "$DB" "ATTACH DATABASE '$WORK/evil.db' AS evil"
assert_contains "ATTACH refusal" "$ERR" "ATTACH"
run tally query --db "$DB" "PRAGMA writable_schema = 1"
assert_contains "PRAGMA refusal" "$ERR" "writable_schema"
run tally query --db "$DB" "SELECT load_extension('x')"
assert_contains "load_extension refusal" "$ERR" "load_extension"
run tally query --db "$DB" "SELECT 1; DELETE FROM changelog"
assert_contains "two statements refusal" "$ERR" "one statement"
assert_eq "no file was created by a refused statement" "" "$(ls "$WORK" | grep evil || true)"

# Read-only statements still work, including a trailing ; and read-only PRAGMAs.
run tally query --db "$DB" --format csv 'SELECT count(*) AS n FROM order_window_state;'
expect_rc "SELECT with trailing ;" 0
assert_eq "SELECT result" "n|$(sq "$DB" 'SELECT count(*) FROM order_window_state')" "$(printf '%s' "$OUT" | tr -d '\r' | paste -sd'|')"
run tally query --db "$DB" --format csv 'PRAGMA table_info(meta)'
expect_rc "PRAGMA table_info" 0
assert_contains "PRAGMA table_info lists columns" "$OUT" "value"
run tally query --db "$DB" --format csv - <<<'SELECT count(*) FROM changelog'
expect_rc "SQL from stdin" 0
assert_eq "SQL from stdin" "$(sq "$DB" 'SELECT count(*) FROM changelog')" "$(printf '%s' "$OUT" | tr -d '\r' | tail -1)"
run tally query --db "$DB" - <<<'DELETE FROM changelog'
expect_rc "a write from stdin is refused too" 1
assert_eq "state unchanged after stdin write" "$BEFORE" "$(checksum)"

# --- time limit ---------------------------------------------------------------
start=$(date +%s%N)
run tally query --db "$DB" --timeout 500ms 'WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c'
elapsed_ms=$((($(date +%s%N) - start) / 1000000))
expect_rc "endless CTE with --timeout 500ms" 1
assert_contains "timeout message" "$ERR" "interrupted"
[[ $elapsed_ms -ge 400 && $elapsed_ms -lt 5000 ]] || fail "--timeout 500ms took ${elapsed_ms}ms"
ok

# --- row cap --------------------------------------------------------------------
run tally query --db "$DB" --format csv --max-rows 3 'SELECT * FROM order_windows ORDER BY store_id, product_id, window_start'
expect_rc "--max-rows 3" 0
assert_eq "--max-rows 3: header + 3 rows" 4 "$(printf '%s\n' "$OUT" | wc -l)"
assert_eq "--max-rows 3: the first 3 rows" \
    "$(sq "$DB" '.separator ,' 'SELECT * FROM order_windows ORDER BY store_id, product_id, window_start LIMIT 3')" \
    "$(printf '%s\n' "$OUT" | tr -d '\r' | tail -n +2)"
run tally query --db "$DB" --format csv --max-rows 0 'SELECT * FROM order_windows'
assert_eq "--max-rows 0 means all" "$(($(sq "$DB" 'SELECT count(*) FROM order_window_state') + 1))" "$(printf '%s\n' "$OUT" | wc -l)"

# --- formats ---------------------------------------------------------------------
run tally query --db "$DB" --format csv 'SELECT store_id, product_id, window_start, sum, count FROM order_windows ORDER BY 1, 2, 3 LIMIT 5'
expect_rc "csv" 0
assert_eq "csv header" "store_id,product_id,window_start,sum,count" "$(head -1 "$WORK/run.out" | tr -d '\r')"
assert_eq "csv rows" "$(sq "$DB" '.separator ,' 'SELECT store_id, product_id, window_start, sum, count FROM order_windows ORDER BY 1, 2, 3 LIMIT 5')" \
    "$(tr -d '\r' <"$WORK/run.out" | tail -n +2)"
run tally query --db "$DB" --format csv "SELECT 'a,b' AS \"x,y\", 'say \"hi\"' AS q, NULL AS n"
assert_eq "csv quoting" "$(printf '"x,y",q,n\n"a,b","say ""hi""",')" "$(tr -d '\r' <"$WORK/run.out")"

run tally query --db "$DB" --format json 'SELECT store_id, product_id, window_start, sum, count FROM order_windows ORDER BY 1, 2, 3 LIMIT 7'
expect_rc "json" 0
cp "$WORK/run.out" "$WORK/out.json"
assert_eq "json is a valid array of 7 objects" "1|7|7" \
    "$(sqlite3 :memory: "SELECT json_valid(readfile('$WORK/out.json')), json_array_length(readfile('$WORK/out.json')),
        (SELECT count(*) FROM json_each(readfile('$WORK/out.json')) WHERE type = 'object')")"
assert_eq "json values and types" \
    "$(sq "$DB" '.separator ,' "SELECT store_id, product_id, window_start, sum, count, 'text', 'integer' FROM order_windows ORDER BY 1, 2, 3 LIMIT 7")" \
    "$(sqlite3 -separator , :memory: "SELECT json_extract(value, '\$.store_id'), json_extract(value, '\$.product_id'),
        json_extract(value, '\$.window_start'), json_extract(value, '\$.sum'), json_extract(value, '\$.count'),
        json_type(value, '\$.sum'), json_type(value, '\$.window_start')
        FROM json_each(readfile('$WORK/out.json'))")"
run tally query --db "$DB" --format json "SELECT 1 AS i, 2.5 AS r, 'x\"y' AS t, NULL AS n WHERE 0"
cp "$WORK/run.out" "$WORK/empty.json"
assert_eq "json with no rows is []" "1|0" \
    "$(sqlite3 :memory: "SELECT json_valid(readfile('$WORK/empty.json')), json_array_length(readfile('$WORK/empty.json'))")"
run tally query --db "$DB" --format json "SELECT 1 AS i, 2.5 AS r, 'x\"y' AS t, NULL AS n"
cp "$WORK/run.out" "$WORK/types.json"
assert_eq "json scalar types" "integer|real|text|null|x\"y" \
    "$(sqlite3 :memory: "SELECT json_type(value, '\$.i'), json_type(value, '\$.r'), json_type(value, '\$.t'), json_type(value, '\$.n'), json_extract(value, '\$.t') FROM json_each(readfile('$WORK/types.json'))")"
run tally query --db "$DB" 'SELECT 1 AS one'
expect_rc "table format" 0
assert_eq "table format" "$(printf 'one\n---\n1')" "$OUT"

# --- concurrent reads during a large ingest ---------------------------------------
# The ingest reads from a pipe fed in slices with pauses, so it is certainly
# still running while the queries run. Every query must succeed and see a
# consistent snapshot: sum(count) and the events_applied counter are written in
# the same transaction.
CDB=$WORK/concurrent.db
gen 300000 5 1000000 >"$WORK/big.jsonl"
run tally ingest --pipeline orders --db "$CDB" "$WORK/orders.jsonl"
expect_rc "concurrent: initial ingest" 0
(
    for part in 0 1 2 3 4 5 6 7 8 9; do
        sed -n "$((part * 30000 + 1)),$(((part + 1) * 30000))p" "$WORK/big.jsonl"
        sleep 0.3
    done
) | timeout 120 "$TALLY" ingest --pipeline orders --db "$CDB" --batch 2000 - >"$WORK/ingest.out" 2>"$WORK/ingest.err" &
INGEST_PID=$!
bg_track "$INGEST_PID"
INVARIANT="SELECT (SELECT sum(count) FROM order_window_state) = (SELECT value FROM meta WHERE key = 'pipeline.orders.events_applied'), (SELECT value FROM meta WHERE key = 'pipeline.orders.events_applied')"
during=0
seen=()
# Still running: the process exists and has not printed its summary yet.
ingest_running() { kill -0 "$INGEST_PID" 2>/dev/null && [[ ! -s $WORK/ingest.out ]]; }
for i in $(seq 1 20); do
    running_before=0
    if ingest_running; then running_before=1; fi
    run tally query --db "$CDB" --format csv "$INVARIANT"
    running_after=0
    if ingest_running; then running_after=1; fi
    expect_rc "concurrent query $i" 0
    row=$(tr -d '\r' <"$WORK/run.out" | tail -1)
    assert_eq "concurrent query $i: sum(count) = events_applied (applied=${row#*,})" 1 "${row%%,*}"
    seen+=("${row#*,}")
    if [[ $running_before == 1 && $running_after == 1 ]]; then during=$((during + 1)); fi
    sleep 0.1
done
wait "$INGEST_PID" || fail "the concurrent ingest failed: $(cat "$WORK/ingest.err")"
ok
assert_eq "concurrent ingest applied" 300000 "$(summary_field applied "$(cat "$WORK/ingest.out")")"
[[ $during -ge 3 ]] || fail "only $during queries ran while the ingest was running"
ok
# The snapshots advance (the ingest really was visible in progress).
distinct=$(printf '%s\n' "${seen[@]}" | sort -u | wc -l)
[[ $distinct -ge 3 ]] || fail "queries saw only $distinct distinct states during the ingest"
ok
# Applied counts only grow, by whole batches of 2000.
prev=0
for v in "${seen[@]}"; do
    [[ $v -ge $prev ]] || fail "events_applied went backwards: $prev then $v"
    [[ $(((v - 5000) % 2000)) == 0 ]] || fail "a query saw a partial batch: events_applied=$v"
    prev=$v
done
ok
echo "concurrent: $during of 20 queries ran during the ingest; they saw $distinct states: ${seen[*]}"
assert_eq "final: sum(count) = all events" 305000 "$(sq "$CDB" 'SELECT sum(count) FROM order_window_state')"

finish
