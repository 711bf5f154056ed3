#!/usr/bin/env bash
# test_roundtrip.sh - generated orders and telemetry through ingest, checked
# against expectations computed independently with awk; then changelog export
# and replay into a new database must reproduce the state exactly, replaying
# twice must change nothing, and --since exports must continue a replica.
# shellcheck source=../lib/data.sh
source "$(dirname "$0")/../lib/data.sh"

ORDERS=$WORK/orders.jsonl
ORDERS_TSV=$WORK/orders.tsv # store, product, event time, price micros * qty
TELE=$WORK/telemetry.jsonl
TELE_TSV=$WORK/telemetry.tsv # vin, sensor, value JSON, received_at, produced_at|""
DB=$WORK/state.db

# --------------------------------------------------------------------------
# Generators (deterministic: Park-Miller LCG, exact in doubles). mawk prints
# integers above 2^31 wrongly with %d, so every large integer uses %.0f.
# --------------------------------------------------------------------------

# gen_order_json N SEED FIRST_ID TSV > JSONL (TSV is appended to)
gen_order_json() {
    awk -v n="$1" -v seed="$2" -v first="$3" -v tsv="$4" '
    function rnd(m) { seed = (seed * 16807) % 2147483647; return seed % m }
    BEGIN {
        base = 1700000000000 + 12345          # deliberately not window aligned
        for (i = 0; i < n; i++) {
            id = first + i
            s = rnd(50); p = rnd(20); qty = 1 + rnd(10)
            ts = base + rnd(420000)            # 7 minutes: 8 windows of 60s
            kind = rnd(12)
            cents = rnd(100000)                # 0.00 .. 999.99
            if (kind <= 4) {                   # JSON number, two decimals
                micros = cents * 10000; price = sprintf("%d.%02d", int(cents / 100), cents % 100)
            } else if (kind <= 6) {            # decimal string
                micros = cents * 10000; price = sprintf("\"%d.%02d\"", int(cents / 100), cents % 100)
            } else if (kind == 7) {            # integer number
                micros = int(cents / 100) * 1000000; price = sprintf("%d", int(cents / 100))
            } else if (kind == 8) {            # three decimals
                mills = rnd(1000000); micros = mills * 1000; price = sprintf("%d.%03d", int(mills / 1000), mills % 1000)
            } else if (kind == 9) {            # six decimals, as a string
                u = rnd(100000000); micros = u; price = sprintf("\"%d.%06d\"", int(u / 1000000), u % 1000000)
            } else if (kind == 10) {           # exponent form: 1234e-2 = 12.34
                micros = cents * 10000; price = sprintf("%de-2", cents)
            } else {                           # trailing zeros: "12.300"
                micros = cents * 10000; price = sprintf("\"%d.%02d0\"", int(cents / 100), cents % 100)
            }
            ev = ts
            norm = ""
            if (rnd(5) == 0) {                 # normTs wins over ts
                ev = base + rnd(420000); norm = sprintf(",\"normTs\":%.0f", ev)
            }
            oid = (rnd(4) == 0) ? sprintf("%d", id) : sprintf("\"o%d\"", id)
            val = (rnd(3) == 0) ? ",\"validated\":true" : ""
            printf "{\"orderId\":%s,\"productId\":\"p%d\",\"storeId\":\"s%d\",\"price\":%s,\"qty\":%d,\"ts\":%.0f%s%s}\n", oid, p, s, price, qty, ts, norm, val
            printf "s%d\tp%d\t%.0f\t%.0f\n", s, p, ev, micros * qty >> tsv
        }
    }'
}

# windows_csv TSV: the expected order_windows rows (data.sh's
# expected_windows) as tally query --format csv prints them, sorted.
windows_csv() { expected_windows "$1" | tr '\t' ',' | sort; }

# gen_telemetry N SEED TSV > JSONL: readings for 200 VINs; received_at values
# are a permutation (unique, so there are no ties) emitted out of order.
gen_telemetry() {
    awk -v n="$1" -v seed="$2" -v tsv="$3" '
    function rnd(m) { seed = (seed * 16807) % 2147483647; return seed % m }
    BEGIN {
        split("battery_temp gear label odometer soc speed wipers", sensors, " ")
        split("P R N D", gears, " ")
        labels[0] = "\"café\""; labels[1] = "\"naïve ✓\""; labels[2] = "\"say \\\"hi\\\"\""; labels[3] = "\"plain\""
        base = 1700000000000
        for (i = 0; i < n; i++) {
            vin = sprintf("VIN%05d", rnd(200))
            rec = base + ((i * 7919) % n) * 10 + rnd(10)   # unique per reading
            has_prod = rnd(10) != 0
            prod = rec - rnd(1000)
            body = ""; picked = 0
            for (k = 1; k <= 7; k++) {
                if (rnd(3) != 0 && !(k == 7 && picked == 0)) continue
                name = sensors[k]
                if (name == "battery_temp") v = sprintf("%s%d.%d", rnd(4) == 0 ? "-" : "", rnd(60), rnd(10))
                else if (name == "gear") v = "\"" gears[1 + rnd(4)] "\""
                else if (name == "label") v = labels[rnd(4)]
                else if (name == "odometer") v = sprintf("%d", 100000000 + rnd(900000000))
                else if (name == "soc") v = sprintf("%d.%d0", rnd(100), rnd(10))   # keeps a trailing zero
                else if (name == "speed") v = (rnd(2) == 0) ? sprintf("%d", rnd(200)) : sprintf("%d.%d", rnd(200), 1 + rnd(9))
                else v = (rnd(2) == 0) ? "true" : "false"
                body = body ",\"" name "\":" v
                picked++
                printf "%s\t%s\t%s\t%.0f\t%s\n", vin, name, v, rec, has_prod ? sprintf("%.0f", prod) : "" >> tsv
            }
            printf "{\"data\":{\"id\":\"%s\"%s},\"received_at\":%.0f%s}\n", vin, body, rec, has_prod ? sprintf(",\"produced_at\":%.0f", prod) : ""
        }
    }'
}

# Latest reading per (vin, sensor) as tally query --format csv prints it.
expected_sensors() {
    awk -F'\t' '
    function csv(s) { if (s ~ /[",]/) { gsub(/"/, "\"\"", s); return "\"" s "\"" } return s }
    {
        k = $1 SUBSEP $2
        if (!(k in rec) || $4 + 0 > rec[k] + 0) { rec[k] = $4; val[k] = $3; prod[k] = $5 }
    }
    END { for (k in rec) { split(k, a, SUBSEP); printf "%s,%s,%s,%s,%s\n", a[1], a[2], csv(val[k]), rec[k], prod[k] } }' "$1" | sort
}

# The vehicle_latest view: vin<TAB>received_at<TAB>record, sensors in name order.
expected_vehicle_latest() {
    awk -F'\t' '
    {
        k = $1 SUBSEP $2
        if (!(k in rec) || $4 + 0 > rec[k] + 0) { rec[k] = $4; val[k] = $3; prod[k] = $5 }
        vins[$1] = 1
    }
    END {
        split("battery_temp gear label odometer soc speed wipers", sensors, " ")
        for (v in vins) {
            data = "{\"id\":\"" v "\""; maxr = ""; maxp = ""
            for (i = 1; i <= 7; i++) {
                k = v SUBSEP sensors[i]
                if (!(k in rec)) continue
                data = data ",\"" sensors[i] "\":" val[k]
                if (maxr == "" || rec[k] + 0 > maxr + 0) maxr = rec[k]
                if (prod[k] != "" && (maxp == "" || prod[k] + 0 > maxp + 0)) maxp = prod[k]
            }
            printf "%s\t%s\t{\"data\":%s},\"received_at\":%s,\"produced_at\":%s}\n", v, maxr, data, maxr, maxp == "" ? "null" : maxp
        }
    }' "$1" | sort
}

# --------------------------------------------------------------------------
# Orders
# --------------------------------------------------------------------------
gen_order_json 20000 4242 1 "$ORDERS_TSV" >"$ORDERS"
assert_eq "generated orders" 20000 "$(wc -l <"$ORDERS")"
# The generator must really produce every price shape (else the test is weak).
for shape in '"price":[0-9]+\.[0-9]{2},' '"price":"[0-9]+\.[0-9]{2}"' '"price":[0-9]+,' \
    '"price":[0-9]+\.[0-9]{3},' '"price":"[0-9]+\.[0-9]{6}"' '"price":[0-9]+e-2,' '"normTs":' '"orderId":[0-9]'; do
    n=$(grep -Ec "$shape" "$ORDERS" || true)
    [[ $n -gt 100 ]] || fail "generator produced only $n orders matching $shape"
    ok
done
windows_csv "$ORDERS_TSV" >"$WORK/windows.expected"
nwin=$(cut -d, -f3 "$WORK/windows.expected" | sort -u | wc -l)
[[ $nwin -ge 8 ]] || fail "expected at least 8 distinct windows in the data, got $nwin"
ok

run tally ingest --pipeline orders --db "$DB" --batch 1000 "$ORDERS"
expect_rc "ingest orders" 0
assert_eq "orders lines" 20000 "$(summary_field lines "$OUT")"
assert_eq "orders applied" 20000 "$(summary_field applied "$OUT")"
assert_eq "orders rejected" 0 "$(summary_field rejected "$OUT")"
assert_eq "orders skipped" 0 "$(summary_field skipped "$OUT")"
assert_eq "no reject lines on stderr" "" "$(grep 'event=reject' "$WORK/run.err" || true)"

run tally query --db "$DB" --format csv \
    'SELECT store_id, product_id, window_start, sum, count FROM order_windows'
expect_rc "query order_windows" 0
assert_eq "csv header" "store_id,product_id,window_start,sum,count" "$(head -1 "$WORK/run.out" | tr -d '\r')"
csv_body "$WORK/run.out" >"$WORK/windows.actual"
assert_files_eq "order_windows vs awk" "$WORK/windows.expected" "$WORK/windows.actual"
assert_eq "meta events_applied" 20000 \
    "$(sq "$DB" "SELECT value FROM meta WHERE key='pipeline.orders.events_applied'")"
assert_eq "sum(count) = events" 20000 "$(sq "$DB" 'SELECT sum(count) FROM order_window_state')"
# Every key's key_seq counts the batches that changed it, and the changelog
# holds exactly one row per (key, key_seq).
assert_eq "changelog rows = sum(key_seq)" \
    "$(sq "$DB" 'SELECT sum(key_seq) FROM order_window_state')" \
    "$(sq "$DB" "SELECT count(*) FROM changelog WHERE entity='order_window'")"
assert_eq "changelog (key, key_seq) unique" 0 \
    "$(sq "$DB" 'SELECT count(*) FROM (SELECT key, key_seq FROM changelog GROUP BY 1, 2 HAVING count(*) > 1)')"

# --------------------------------------------------------------------------
# Telemetry
# --------------------------------------------------------------------------
gen_telemetry 5000 777 "$TELE_TSV" >"$TELE"
assert_eq "generated telemetry" 5000 "$(wc -l <"$TELE")"
# received_at really arrives out of order, and there are no ties.
assert_eq "received_at unique" 5000 "$(grep -o '"received_at":[0-9]*' "$TELE" | sort -u | wc -l)"
descents=$(grep -o '"received_at":[0-9]*' "$TELE" | cut -d: -f2 | awk 'NR > 1 && $1 + 0 < prev + 0 { n++ } { prev = $1 } END { print n + 0 }')
[[ $descents -gt 1000 ]] || fail "telemetry received_at must arrive out of order; only $descents descents"
ok

run tally ingest --pipeline telemetry --db "$DB" --batch 1000 "$TELE"
expect_rc "ingest telemetry" 0
assert_eq "telemetry applied" 5000 "$(summary_field applied "$OUT")"
assert_eq "telemetry rejected" 0 "$(summary_field rejected "$OUT")"

expected_sensors "$TELE_TSV" >"$WORK/sensors.expected"
run tally query --db "$DB" --format csv \
    'SELECT vin, sensor, value, received_at_ms, produced_at_ms FROM vehicle_sensor_state'
expect_rc "query vehicle_sensor_state" 0
csv_body "$WORK/run.out" >"$WORK/sensors.actual"
assert_files_eq "vehicle_sensor_state vs awk (latest received_at wins)" "$WORK/sensors.expected" "$WORK/sensors.actual"
assert_eq "200 vehicles" 200 "$(sq "$DB" 'SELECT count(DISTINCT vin) FROM vehicle_sensor_state')"

# The view, read with the sqlite3 shell and through tally query (json).
expected_vehicle_latest "$TELE_TSV" >"$WORK/latest.expected"
sq "$DB" '.separator "\t"' 'SELECT vin, received_at, record FROM vehicle_latest' | sort >"$WORK/latest.actual"
assert_files_eq "vehicle_latest (sqlite3) vs awk" "$WORK/latest.expected" "$WORK/latest.actual"
run tally query --db "$DB" --format json 'SELECT vin, received_at, record FROM vehicle_latest'
expect_rc "tally query vehicle_latest" 0
cp "$WORK/run.out" "$WORK/latest.json"
sqlite3 -separator $'\t' :memory: "SELECT json_extract(value, '\$.vin'), json_extract(value, '\$.received_at'),
    json_extract(value, '\$.record') FROM json_each(readfile('$WORK/latest.json'))" | sort >"$WORK/latest.query"
assert_files_eq "vehicle_latest (tally query) vs awk" "$WORK/latest.expected" "$WORK/latest.query"

# --------------------------------------------------------------------------
# Export and replay into a new database
# --------------------------------------------------------------------------
TOTAL=$(sq "$DB" 'SELECT count(*) FROM changelog')
MAXSEQ=$(sq "$DB" 'SELECT max(seq) FROM changelog')
[[ $TOTAL -gt 10000 ]] || fail "expected a large changelog, got $TOTAL rows"
ok
run tally changelog export --db "$DB" --out "$WORK/all.jsonl"
expect_rc "export" 0
assert_eq "export stdout empty with --out" "" "$OUT"
assert_contains "export summary" "$ERR" "exported rows=$TOTAL"
assert_eq "export line count" "$TOTAL" "$(wc -l <"$WORK/all.jsonl")"
assert_eq "no temp file left" "" "$(ls "$WORK" | grep 'all.jsonl.tmp' || true)"
jsonl_load "$WORK/check.db" exp_all "$WORK/all.jsonl"
assert_eq "export: valid JSON, seq strictly increasing, all fields" "$TOTAL|$TOTAL|0" \
    "$(sq "$WORK/check.db" "SELECT count(*), sum(json_valid(j)),
        (SELECT count(*) FROM (SELECT json_extract(j,'\$.seq') s, lag(json_extract(j,'\$.seq')) OVER (ORDER BY rowid) p FROM exp_all) WHERE p IS NOT NULL AND s <= p)
        + (SELECT count(*) FROM exp_all WHERE json_type(j,'\$.image') IS NOT 'object' OR json_type(j,'\$.key_seq') IS NOT 'integer' OR json_type(j,'\$.changed_ms') IS NOT 'integer')
        FROM exp_all")"

REPLICA=$WORK/replica.db
run tally replay --db "$REPLICA" "$WORK/all.jsonl"
expect_rc "replay" 0
assert_eq "replay rows" "$TOTAL" "$(summary_field rows "$OUT")"
assert_eq "replay changed" "$TOTAL" "$(summary_field changed "$OUT")"
assert_eq "replay unchanged" 0 "$(summary_field unchanged "$OUT")"
assert_eq "replay gaps" 0 "$(summary_field gaps "$OUT")"
assert_eq "replay last_seq" "$MAXSEQ" "$(summary_field last_seq "$OUT")"

# same_state LABEL A B: state tables (every column) and changelog identical.
same_state() {
    local q
    q="ATTACH '$3' AS b;
    SELECT 'order_window_state a-b', count(*) FROM (SELECT * FROM main.order_window_state EXCEPT SELECT * FROM b.order_window_state)
    UNION ALL SELECT 'order_window_state b-a', count(*) FROM (SELECT * FROM b.order_window_state EXCEPT SELECT * FROM main.order_window_state)
    UNION ALL SELECT 'vehicle_sensor_state a-b', count(*) FROM (SELECT * FROM main.vehicle_sensor_state EXCEPT SELECT * FROM b.vehicle_sensor_state)
    UNION ALL SELECT 'vehicle_sensor_state b-a', count(*) FROM (SELECT * FROM b.vehicle_sensor_state EXCEPT SELECT * FROM main.vehicle_sensor_state)
    UNION ALL SELECT 'changelog keys a-b', count(*) FROM (SELECT seq, entity, key, key_seq FROM main.changelog EXCEPT SELECT seq, entity, key, key_seq FROM b.changelog)
    UNION ALL SELECT 'changelog keys b-a', count(*) FROM (SELECT seq, entity, key, key_seq FROM b.changelog EXCEPT SELECT seq, entity, key, key_seq FROM main.changelog)
    UNION ALL SELECT 'changelog rows a-b', count(*) FROM (SELECT * FROM main.changelog EXCEPT SELECT * FROM b.changelog)
    UNION ALL SELECT 'changelog rows b-a', count(*) FROM (SELECT * FROM b.changelog EXCEPT SELECT * FROM main.changelog)
    UNION ALL SELECT 'row counts differ', (SELECT count(*) FROM main.order_window_state) != (SELECT count(*) FROM b.order_window_state)
        OR (SELECT count(*) FROM main.vehicle_sensor_state) != (SELECT count(*) FROM b.vehicle_sensor_state)
        OR (SELECT count(*) FROM main.changelog) != (SELECT count(*) FROM b.changelog);"
    local diffs
    diffs=$(sq "$2" "$q" | awk -F'|' '$2 != 0')
    [[ -z "$diffs" ]] || fail "$1: $2 and $3 differ: $(echo "$diffs" | tr '\n' ';')"
    ok
}
same_state "after replay" "$DB" "$REPLICA"
# The replica's own views agree too.
assert_eq "replica order_windows" "$(cat "$WORK/windows.expected")" \
    "$(sq "$REPLICA" '.mode csv' 'SELECT store_id, product_id, window_start, sum, count FROM order_windows' | tr -d '\r' | sort)"

# Replaying the same export again changes nothing.
run tally replay --db "$REPLICA" "$WORK/all.jsonl"
expect_rc "second replay" 0
assert_eq "second replay rows" "$TOTAL" "$(summary_field rows "$OUT")"
assert_eq "second replay changed" 0 "$(summary_field changed "$OUT")"
assert_eq "second replay unchanged" "$TOTAL" "$(summary_field unchanged "$OUT")"
assert_eq "second replay gaps" 0 "$(summary_field gaps "$OUT")"
same_state "after second replay" "$DB" "$REPLICA"

# --------------------------------------------------------------------------
# --since
# --------------------------------------------------------------------------
K=$((MAXSEQ / 2))
run tally changelog export --db "$DB" --since "$K" --out "$WORK/since.jsonl"
expect_rc "export --since" 0
EXPECT_SINCE=$(sq "$DB" "SELECT count(*) FROM changelog WHERE seq > $K")
assert_eq "export --since rows" "$EXPECT_SINCE" "$(wc -l <"$WORK/since.jsonl")"
assert_contains "export --since summary" "$ERR" "exported rows=$EXPECT_SINCE since=$K"
jsonl_load "$WORK/check.db" since "$WORK/since.jsonl"
sq "$WORK/check.db" "ATTACH '$DB' AS s" \
    "SELECT seq FROM s.changelog WHERE seq > $K EXCEPT SELECT json_extract(j, '\$.seq') FROM since" >"$WORK/missing"
assert_eq "export --since: no row missing" "" "$(cat "$WORK/missing")"
assert_eq "export --since: min seq" "$((K + 1))" "$(sq "$WORK/check.db" "SELECT min(json_extract(j,'\$.seq')) FROM since")"
# stdout export is the same as --out.
tally changelog export --db "$DB" --since "$K" >"$WORK/since.stdout" 2>/dev/null
assert_files_eq "export to stdout vs --out" "$WORK/since.jsonl" "$WORK/since.stdout"
# --since beyond the end: nothing.
run tally changelog export --db "$DB" --since "$MAXSEQ"
expect_rc "export --since max" 0
assert_eq "export --since max is empty" "" "$OUT"

# A replica built from the first K rows continues from the --since K export
# without a gap and ends identical.
PART=$WORK/part.db
head -n "$(sq "$DB" "SELECT count(*) FROM changelog WHERE seq <= $K")" "$WORK/all.jsonl" >"$WORK/head.jsonl"
run tally replay --db "$PART" "$WORK/head.jsonl"
expect_rc "replay first part" 0
assert_eq "first part last_seq" "$K" "$(summary_field last_seq "$OUT")"
run tally replay --db "$PART" "$WORK/since.jsonl"
expect_rc "replay --since part" 0
assert_eq "--since part gaps" 0 "$(summary_field gaps "$OUT")"
assert_eq "--since part changed" "$EXPECT_SINCE" "$(summary_field changed "$OUT")"
same_state "head + since" "$DB" "$PART"

# New events after the export: an incremental export brings the replica up
# to date (existing keys get newer key_seq).
gen_order_json 3000 99 100000 "$ORDERS_TSV" >"$WORK/more.jsonl"
run tally ingest --pipeline orders --db "$DB" --batch 700 "$WORK/more.jsonl"
expect_rc "second ingest" 0
assert_eq "second ingest applied" 3000 "$(summary_field applied "$OUT")"
run tally changelog export --db "$DB" --since "$MAXSEQ" --out "$WORK/inc.jsonl"
expect_rc "incremental export" 0
assert_eq "incremental export rows" "$(sq "$DB" "SELECT count(*) FROM changelog WHERE seq > $MAXSEQ")" "$(wc -l <"$WORK/inc.jsonl")"
run tally replay --db "$REPLICA" "$WORK/inc.jsonl"
expect_rc "incremental replay" 0
assert_eq "incremental replay gaps" 0 "$(summary_field gaps "$OUT")"
same_state "after incremental replay" "$DB" "$REPLICA"
windows_csv "$ORDERS_TSV" >"$WORK/windows2.expected"
tally query --db "$REPLICA" --format csv 'SELECT store_id, product_id, window_start, sum, count FROM order_windows' >"$WORK/w2.csv"
csv_body "$WORK/w2.csv" >"$WORK/windows2.actual"
assert_files_eq "replica order_windows after 23000 orders vs awk" "$WORK/windows2.expected" "$WORK/windows2.actual"

finish
