#!/usr/bin/env bash
# test_bad_input.sh - one input mixing valid orders with every class of
# malformed line: the run succeeds, counts are exact, each reject is reported
# on stderr and in the reject file with its line number and original bytes,
# and exactly the valid events reach the state. Telemetry with an empty
# data.id is skipped, not rejected.
source "$(dirname "$0")/../lib/assert.sh"

F=$WORK/mixed.jsonl
DB=$WORK/state.db
: >"$F"
LINE=0
GOOD=()
BAD=()
BADKW=() # a word the reject reason must contain (case-insensitive)
BLANK=0

good() { printf '%s\n' "$1" >>"$F"; LINE=$((LINE + 1)); GOOD+=("$LINE"); }
# bad KEYWORD LINE: LINE is written as is.
bad() { printf '%s\n' "$2" >>"$F"; LINE=$((LINE + 1)); BAD+=("$LINE"); BADKW+=("$1"); }
# bad_raw KEYWORD FORMAT: FORMAT goes through printf, for raw bytes (\xff, \0).
bad_raw() { printf "$2" >>"$F"; printf '\n' >>"$F"; LINE=$((LINE + 1)); BAD+=("$LINE"); BADKW+=("$1"); }
blank() { printf '%s\n' "$1" >>"$F"; LINE=$((LINE + 1)); BLANK=$((BLANK + 1)); }

O='"orderId":"o","productId":"p1","storeId":"s1"'
TS='"ts":1700000040000'

good '{"orderId":"g1","productId":"p1","storeId":"s1","price":83.71,"qty":3,"ts":1700000040000,"validated":true}'
bad json '{"orderId": oops, "productId":"p1"}'
bad json '{"orderId":"o","productId":"p1","storeId":"s1","price":1.5,"qty":2,"ts":'
bad object '[{"orderId":"o","productId":"p1","storeId":"s1","price":1,"qty":1,"ts":1}]'
blank ''
bad qty "{$O,\"price\":1.5,\"qty\":\"x\",$TS}"
bad price "{$O,\"price\":true,\"qty\":2,$TS}"
bad storeId "{\"orderId\":\"o\",\"productId\":\"p1\",\"storeId\":{\"id\":1},\"price\":1.5,\"qty\":2,$TS}"
good '{"orderId":"g2","productId":"p1","storeId":"s1","price":"0.10","qty":1,"ts":1700000099999}'
bad productId "{\"orderId\":\"o\",\"storeId\":\"s1\",\"price\":1.5,\"qty\":2,$TS}"
bad price "{\"orderId\":\"o\",\"productId\":\"p1\",\"storeId\":\"s1\",\"qty\":2,$TS}"
bad_raw utf-8 '{"orderId":"o\xff","productId":"p1","storeId":"s1","price":1.5,"qty":2,"ts":1700000040000}'
bad_raw utf-8 '{"orderId":"o","productId":"p1","storeId":"s\x80","price":1.5,"qty":2,"ts":1700000040000}'
bad_raw utf-8 '{"orderId":"o","productId":"p1","storeId":"s\xe2\x82","price":1.5,"qty":2,"ts":1700000040000}'
blank '   '
bad ts "{$O,\"price\":1.5,\"qty\":2,\"ts\":99999999999999999999}"
bad price "{$O,\"price\":1e400,\"qty\":2,$TS}"
good '{"orderId":"g3","productId":"p2","storeId":"s1","price":1000000000,"qty":1,"ts":0}'
bad qty "{$O,\"price\":1.5,\"qty\":5000,$TS}"
bad qty "{$O,\"price\":1.5,\"qty\":0,$TS}"
bad qty "{$O,\"price\":1.5,\"qty\":2.5,$TS}"
bad decimal "{$O,\"price\":1.1234567,\"qty\":2,$TS}"
bad decimal "{$O,\"price\":\"1e-7\",\"qty\":2,$TS}"
bad ts "{$O,\"price\":1.5,\"qty\":2,\"ts\":-5}"
bad ts "{$O,\"price\":1.5,\"qty\":2,\"ts\":\"1700000040000\"}"
bad ts "{$O,\"price\":1.5,\"qty\":2,\"ts\":253402300800000}"
good '{"orderId":"g4","productId":"p2","storeId":"s1","price":0,"qty":1000,"ts":59999}'
bad validated "{$O,\"price\":1.5,\"qty\":2,$TS,\"validated\":false}"
bad validated "{$O,\"price\":1.5,\"qty\":2,$TS,\"validated\":\"yes\"}"
bad json "{$O,\"price\":1.5,\"qty\":2,$TS} trailing"
bad json "{$O,\"price\":1.5,\"qty\":2,$TS}{}"
bad json "{$O,\"price\":1.5,\"qty\":2,$TS,}"
bad_raw nul '{"orderId":"o","productId":"p1","storeId":"s1","price":1.5,"qty":2,\0"ts":1700000040000}'
bad_raw nul '{"orderId":"o","productId":"p1","storeId":"s1","price":1.5,"qty":2,"ts":1700000040000}\0'
good '{"orderId":"g5","productId":"p3","storeId":"s2","price":"1.123456","qty":7,"ts":253402300799999}'
bad price "{$O,\"price\":-1,\"qty\":2,$TS}"
bad price "{$O,\"price\":1000000000.000001,\"qty\":2,$TS}"
bad price "{$O,\"price\":\"12,50\",\"qty\":2,$TS}"
bad object '"just a string"'
bad json 'null' # valid JSON but not an object (reason: see report)
bad json '42' # likewise
good '{"orderId":"g6","productId":"p3","storeId":"s2","price":2.5,"qty":2,"ts":1700000000000,"normTs":253402300740001}  '$'\r'
bad orderId '{"orderId":"","productId":"p1","storeId":"s1","price":1.5,"qty":2,"ts":1700000040000}'
bad bytes "{$O,\"price\":1.5,\"qty\":2,$TS,\"pad\":\"$(head -c 1100000 /dev/zero | tr '\0' x)\"}"
blank $'\t\r'
good '{"orderId":7,"productId":"p1","storeId":42,"price":1e1,"qty":1,"ts":1700000040000}'
good '{"orderId":"g8","productId":"p9","storeId":"s9","price":"0.000001","qty":1,"ts":1700000040001,"validated":true}'
good '{"ts":1700000040000,"qty":1,"price":1.5,"storeId":"магазин","productId":"p1","orderId":"g9"}'
bad json '{"orderId":"o"'
# The last line has no newline at the end and is still read.
printf '%s' '{"orderId":"g10","productId":"p1","storeId":"s1","price":0.01,"qty":1,"ts":1700000059999}' >>"$F"
LINE=$((LINE + 1))
GOOD+=("$LINE")

NGOOD=${#GOOD[@]}
NBAD=${#BAD[@]}
assert_eq "file has every line" "$LINE" "$(($(wc -l <"$F") + 1))"

# Small batches so rejects fall in many batches.
run tally ingest --pipeline orders --db "$DB" --batch 4 "$F"
expect_rc "ingest with rejects exits 0" 0
assert_eq "summary lines" "$LINE" "$(summary_field lines "$OUT")"
assert_eq "summary applied" "$NGOOD" "$(summary_field applied "$OUT")"
assert_eq "summary rejected" "$NBAD" "$(summary_field rejected "$OUT")"
assert_eq "summary skipped" 0 "$(summary_field skipped "$OUT")"
assert_eq "summary blank" "$BLANK" "$(summary_field blank "$OUT")"
assert_eq "summary rejects path" "$DB.rejects.jsonl" "$(summary_field rejects "$OUT")"
assert_eq "meta events_applied" "$NGOOD" "$(sq "$DB" "SELECT value FROM meta WHERE key='pipeline.orders.events_applied'")"
assert_eq "meta events_rejected" "$NBAD" "$(sq "$DB" "SELECT value FROM meta WHERE key='pipeline.orders.events_rejected'")"

# stderr: one logfmt reject record per bad line, with its line number.
expected_lines=$(printf '%s\n' "${BAD[@]}")
actual_lines=$(grep 'event=reject' "$WORK/run.err" | grep -o ' line=[0-9]*' | cut -d= -f2 | sort -n)
assert_eq "stderr reject line numbers" "$expected_lines" "$actual_lines"
assert_eq "every stderr reject is level=warn with an error" "$NBAD" \
    "$(grep 'event=reject' "$WORK/run.err" | grep -c 'level=warn event=reject line=[0-9]* error="')"

# The reject file: one JSON object per reject.
REJ=$DB.rejects.jsonl
[[ -f "$REJ" ]] || fail "reject file $REJ was not written"
ok
assert_eq "reject file lines" "$NBAD" "$(wc -l <"$REJ")"
jsonl_load "$WORK/r.db" rj "$REJ"
assert_eq "reject file is valid JSONL" "$NBAD" "$(sq "$WORK/r.db" 'SELECT sum(json_valid(j)) FROM rj')"
assert_eq "reject file line numbers" "$expected_lines" \
    "$(sq "$WORK/r.db" "SELECT json_extract(j, '\$.line') FROM rj ORDER BY 1")"
assert_eq "reject records: integer line, text error, exactly one of input/input_base64" 0 \
    "$(sq "$WORK/r.db" "SELECT count(*) FROM rj WHERE json_type(j, '\$.line') IS NOT 'integer'
        OR json_type(j, '\$.error') IS NOT 'text' OR json_extract(j, '\$.error') = ''
        OR (json_type(j, '\$.input') IS 'text') + (json_type(j, '\$.input_base64') IS 'text') != 1")"

for i in "${!BAD[@]}"; do
    n=${BAD[$i]}
    kw=${BADKW[$i]}
    q="SELECT json_extract(j, '\$.error') FROM rj WHERE json_extract(j, '\$.line') = $n"
    reason=$(sq "$WORK/r.db" "$q")
    shopt -s nocasematch
    [[ "$reason" == *"$kw"* ]] || fail "line $n: reject reason should mention \"$kw\", got [$reason]"
    shopt -u nocasematch
    ok
    # The original bytes survive: base64 for invalid UTF-8, else the string
    # (a NUL byte as \u0000). Compared by checksum.
    expected_sum=$(sed -n "${n}p" "$F" | sed 's/\x00/\\u0000/g' | cksum)
    if [[ $kw == utf-8 ]]; then
        b64=$(sq "$WORK/r.db" "SELECT json_extract(j, '\$.input_base64') FROM rj WHERE json_extract(j, '\$.line') = $n")
        [[ -n $b64 ]] || fail "line $n is not valid UTF-8 and must be stored as input_base64"
        actual_sum=$( (printf '%s' "$b64" | base64 -d; echo) | cksum)
    else
        actual_sum=$(sq "$WORK/r.db" "SELECT json_extract(replace(j, '\\u0000', '\\\\u0000'), '\$.input') FROM rj WHERE json_extract(j, '\$.line') = $n" | cksum)
    fi
    assert_eq "line $n: original input kept in the reject file" "$expected_sum" "$actual_sum"
done

# The state holds exactly the valid events (expected sums worked out by hand):
#   s1/p1 @1700000040000: 83.71*3 + 0.10 + 0.01 (ts 1700000059999, same window)
#   s1/p2 @0:            1000000000*1 + 0*1000
#   s2/p3 @253402300740000 (floor of 253402300799999): 1.123456*7 (7.864192) + 2.5*2 (normTs)
#   42/p1 (integer storeId) 1e1; s9/p9 0.000001; магазин/p1 1.5
cat >"$WORK/expected.csv" <<'EOF'
42,p1,1700000040000,10.00,1
s1,p1,1700000040000,251.24,3
s1,p2,0,1000000000.00,2
s2,p3,253402300740000,12.864192,2
s9,p9,1700000040000,0.000001,1
магазин,p1,1700000040000,1.50,1
EOF
tally query --db "$DB" --format csv 'SELECT store_id, product_id, window_start, sum, count FROM order_windows' >"$WORK/actual.raw"
csv_body "$WORK/actual.raw" >"$WORK/actual.csv"
assert_files_eq "order_windows holds exactly the valid events" "$WORK/expected.csv" "$WORK/actual.csv"
assert_eq "sum(count) = applied" "$NGOOD" "$(sq "$DB" 'SELECT sum(count) FROM order_window_state')"

# --rejects PATH puts the reject file elsewhere; the default is not written.
run tally ingest --pipeline orders --db "$WORK/other.db" --rejects "$WORK/custom.jsonl" "$F"
expect_rc "ingest --rejects" 0
assert_eq "custom reject file lines" "$NBAD" "$(wc -l <"$WORK/custom.jsonl")"
[[ ! -e "$WORK/other.db.rejects.jsonl" ]] || fail "default reject file written although --rejects was given"
ok
assert_eq "--batch does not change the result" "$(cat "$WORK/expected.csv")" \
    "$(sq "$WORK/other.db" '.separator ,' 'SELECT store_id, product_id, window_start, sum, count FROM order_windows' | tr -d '\r' | sort)"

# --------------------------------------------------------------------------
# Telemetry: empty data.id is skipped (logged as event=skip), not rejected.
# --------------------------------------------------------------------------
cat >"$WORK/tele.jsonl" <<'EOF'
{"data":{"id":"V1","speed":10},"received_at":1000,"produced_at":900}
{"data":{"id":"","speed":99},"received_at":5000}
{"data":{"id":"V1","speed":20},"received_at":2000}
{"data":{"speed":30},"received_at":3000}
{"data":{"id":"","gear":"D"},"received_at":6000,"produced_at":1}
{"data":{"id":"V2","gear":"R"}}
{"data":{"id":"V2","gear":"N"},"received_at":1500,"produced_at":1400}
{"data":{"id":"V1","speed":5},"received_at":1500}
{"data":"x","received_at":1}
EOF
TDB=$WORK/tele.db
run tally ingest --pipeline telemetry --db "$TDB" - <"$WORK/tele.jsonl"
expect_rc "telemetry ingest from stdin" 0
assert_eq "telemetry input" "-" "$(summary_field input "$OUT")"
assert_eq "telemetry applied" 4 "$(summary_field applied "$OUT")"
assert_eq "telemetry skipped" 2 "$(summary_field skipped "$OUT")"
assert_eq "telemetry rejected" 3 "$(summary_field rejected "$OUT")"
assert_eq "stderr skip lines" "$(printf '2\n5')" \
    "$(grep 'event=skip' "$WORK/run.err" | grep -o ' line=[0-9]*' | cut -d= -f2 | sort -n)"
assert_eq "stderr reject lines" "$(printf '4\n6\n9')" \
    "$(grep 'event=reject' "$WORK/run.err" | grep -o ' line=[0-9]*' | cut -d= -f2 | sort -n)"
jsonl_load "$WORK/r.db" tr "$TDB.rejects.jsonl"
assert_eq "telemetry reject file: rejects only, not skips" "4 6 9" \
    "$(sq "$WORK/r.db" "SELECT group_concat(l, ' ') FROM (SELECT json_extract(j, '\$.line') l FROM tr ORDER BY 1)")"
assert_eq "meta events_skipped" 2 "$(sq "$TDB" "SELECT value FROM meta WHERE key='pipeline.telemetry.events_skipped'")"
assert_eq "telemetry state (newest received_at wins, skipped events leave no trace)" \
    "$(printf 'V1|speed|20|2000|\nV2|gear|"N"|1500|1400')" \
    "$(sq "$TDB" 'SELECT vin, sensor, value, received_at_ms, produced_at_ms FROM vehicle_sensor_state ORDER BY 1, 2')"

# --------------------------------------------------------------------------
# Strict UTF-8 (RFC 3629): overlong forms, UTF-16 surrogates and code points
# above U+10FFFF are not UTF-8 either and must be rejected like \xff, with the
# bytes kept as input_base64. (Last, so the checks above run regardless.)
# --------------------------------------------------------------------------
printf '%s\n' '{"orderId":"u0","productId":"p1","storeId":"s1","price":1,"qty":1,"ts":1}' >"$WORK/utf8.jsonl"
for bytes in '\xc0\xaf' '\xe0\x80\xaf' '\xed\xa0\x80' '\xf4\x90\x80\x80'; do
    printf '{"orderId":"u","productId":"p'"$bytes"'","storeId":"s1","price":1,"qty":1,"ts":1}\n' >>"$WORK/utf8.jsonl"
done
UDB=$WORK/utf8.db
run tally ingest --pipeline orders --db "$UDB" "$WORK/utf8.jsonl"
expect_rc "utf-8 ingest" 0
assert_eq "no invalid UTF-8 reaches the state (hex of stored product_id)" "" \
    "$(sq "$UDB" "SELECT group_concat(hex(product_id), ' ') FROM order_window_state WHERE product_id != 'p1'")"
assert_eq "strict utf-8: applied" 1 "$(summary_field applied "$OUT")"
assert_eq "strict utf-8: rejected" 4 "$(summary_field rejected "$OUT")"
jsonl_load "$WORK/r.db" ur "$UDB.rejects.jsonl"
assert_eq "strict utf-8: rejects kept as input_base64" 4 \
    "$(sq "$WORK/r.db" "SELECT count(*) FROM ur WHERE json_type(j, '\$.input_base64') = 'text'")"

finish
