#!/usr/bin/env bash
# test_http.sh - `tally run --http` on a real broker.
#
#   1. /metrics is valid Prometheus text (an awk checker: names, labels,
#      values, # HELP and # TYPE before each family's samples, families not
#      split, counters named *_total, histogram buckets cumulative in le order
#      with +Inf == _count) and its figures follow the events: a backlog of
#      N orders + M malformed lines shows consumer lag while it is worked off;
#      afterwards consumed == N+M, applied == N, dead-lettered == M, the
#      end-to-end histogram counts N+M, transactions == batches, lag 0 on
#      every partition, ready 1, database bytes > 0, snapshots > 0.
#   2. /healthz answers 200; /readyz 503 "recovering" while the state is
#      brought back, then 200 for good.
#   3. /query answers SELECTs as JSON (GET ?sql=, POST form, POST body) with
#      the numbers SQLite holds; refuses every writing statement with 403,
#      two statements with 400, interrupts an endless CTE with 408 after about
#      --query-timeout-ms, caps rows at --query-max-rows with "truncated";
#      none of that changes the state, and the totals still check out.
#   4. With --http-token (or TALLY_HTTP_TOKEN) /query and /metrics need the
#      bearer token (401 without it or with a wrong one); the probes do not.
#   5. An --http address in use stops the start (exit 1, a message naming the
#      way out); a malformed --http is a usage error (exit 2).
#   6. The live page, in headless Chromium while orders flow, draws its three
#      charts (data-points >= 2), fills the recent-rows table through /query
#      and shows no error; without the token it shows the 401.
# shellcheck source=../lib/tally.sh
source "$(dirname "$0")/../lib/tally.sh"

command -v curl >/dev/null || fail "curl is required"
CHROMIUM=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
[[ -n "$CHROMIUM" ]] || fail "chromium is required (Debian package chromium; scripts/test installs it)"

N_ORDERS=10000
N_BAD=40
N_LIVE=4000          # orders produced while the page is open
TOKEN="t0k-$RUN_ID"
TOKEN_ENV="env-$RUN_ID"
QUERY_TIMEOUT_MS=500
MAX_ROWS=5

new_stream orders.db

# ----------------------------------------------------------- functions ---

# req METHOD URL_PATH [CURL_ARGS...]: one request to the running tally on
# $PORT; sets CODE (000: no answer), the body is in $WORK/body, the headers
# in $WORK/headers.
req() {
    local method=(-X "$1") path=$2
    [[ "$1" == HEAD ]] && method=(--head)
    shift 2
    CODE=$(curl -s "${method[@]}" -o "$WORK/body" -D "$WORK/headers" -w '%{http_code}' --max-time 15 \
        "$@" "http://127.0.0.1:$PORT$path") || true
    CODE=${CODE:-000}
}

# expect_code WHAT CODE: the last req answered CODE.
expect_code() {
    [[ "$CODE" == "$2" ]] || fail "$1: expected HTTP $2, got $CODE; body: $(head -c 300 "$WORK/body" 2>/dev/null)"
    ok
}

# json PATH: a value of the JSON body of the last req (sqlite3's JSON
# functions; false/true come out as 0/1). Fails if the body is not JSON.
json() {
    [[ "$(sqlite3 :memory: "SELECT json_valid(readfile('$WORK/body'))")" == 1 ]] ||
        fail "not JSON: $(head -c 300 "$WORK/body")"
    sqlite3 :memory: "SELECT json_extract(readfile('$WORK/body'), '$1')"
}

# query_get SQL / query_form SQL / query_body SQL [CURL_ARGS...]: /query by
# GET ?sql=, by POST of a form, by POST of the SQL itself.
query_get() {
    local sql=$1
    shift
    req GET /query -G --data-urlencode "sql=$sql" "$@"
}
query_form() {
    local sql=$1
    shift
    req POST /query --data-urlencode "sql=$sql" "$@"
}
query_body() {
    local sql=$1
    shift
    req POST /query -H 'Content-Type: text/plain' --data-binary "$sql" "$@"
}

# scrape FILE [CURL_ARGS...]: GET /metrics into FILE; fails unless 200.
scrape() {
    local file=$1
    shift
    req GET /metrics "$@"
    [[ "$CODE" == 200 ]] || fail "GET /metrics: HTTP $CODE: $(head -c 300 "$WORK/body")"
    grep -qi '^content-type: text/plain; version=0.0.4' "$WORK/headers" ||
        fail "/metrics content type is not Prometheus text 0.0.4: $(grep -i '^content-type' "$WORK/headers")"
    cp "$WORK/body" "$file"
}

# lag_lines FILE: "partition lag" per tally_consumer_lag_records series.
lag_lines() {
    awk '/^tally_consumer_lag_records\{/ {
        if (match($0, /partition="[0-9]+"/)) print substr($0, RSTART + 11, RLENGTH - 12), $NF
    }' "$1" | sort -n
}

# The exposition-format checker; prints the problems, exits 1 on any.
cat >"$WORK/promcheck.awk" <<'EOF'
function bad(msg) { printf "line %d: %s: %s\n", NR, msg, $0; errors++ }
function validname(s) { return s ~ /^[a-zA-Z_:][a-zA-Z0-9_:]*$/ }
function validvalue(s) { return s ~ /^[-+]?(([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?|Inf|NaN)$/ }
function num(s) { return s ~ /^\+?Inf$/ ? INF : s + 0 }
# The family of a sample name: a histogram's _bucket, _sum, _count belong
# to the histogram; anything else is its own family.
function family(name,   base) {
    base = name
    if (sub(/_(bucket|sum|count)$/, "", base) && (base in type) &&
        (type[base] == "histogram" || type[base] == "summary"))
        return base
    return name
}
function enter(fam) {
    if (fam == cur) return
    if (fam in left) bad("the samples of " fam " are not together")
    if (cur != "") left[cur] = 1
    cur = fam
}
# Parses the label set at the start of s ("{...}"); fills lab[], sets
# LABELS_END (the index after "}"); returns 0 on a syntax error.
function labels(s,   i, c, n, v, st) {
    split("", lab)
    i = 2; st = "name"
    while (i <= length(s)) {
        c = substr(s, i, 1)
        if (st == "name") {
            if (c == "}") { LABELS_END = i + 1; return 1 }
            if (!match(substr(s, i), /^[a-zA-Z_][a-zA-Z0-9_]*=\"/)) return 0
            n = substr(s, i, RLENGTH - 2); i += RLENGTH; v = ""
            if (n in lab) return 0
            st = "value"; continue
        }
        if (st == "value") {
            if (c == "\\") {
                c = substr(s, i + 1, 1)
                if (c != "\\" && c != "\"" && c != "n") return 0
                v = v "\\" c; i += 2; continue
            }
            if (c == "\"") { lab[n] = v; st = "sep"; i++; continue }
            if (c == "\n") return 0
            v = v c; i++; continue
        }
        if (st == "sep") {
            if (c == ",") { st = "name"; i++; continue }
            if (c == "}") { LABELS_END = i + 1; return 1 }
            return 0
        }
    }
    return 0
}
BEGIN { INF = 1e308 * 10 }
/^$/ { next }
/^#/ {
    if ($2 == "HELP" || $2 == "TYPE") {
        if (!validname($3)) { bad("bad metric name in " $2); next }
        if ($3 in sampled) bad("# " $2 " after samples of " $3)
        enter($3)
        if ($2 == "HELP") {
            if ($3 in help) bad("second # HELP for " $3)
            help[$3] = 1
        } else {
            if ($3 in type) bad("second # TYPE for " $3)
            if (NF != 4 || $4 !~ /^(counter|gauge|histogram|summary|untyped)$/) bad("bad # TYPE")
            type[$3] = $4
            if ($4 == "counter" && $3 !~ /_total$/) bad("counter " $3 " does not end in _total")
            if (!($3 in help)) bad("# TYPE before # HELP for " $3)
        }
    }
    next
}
{
    if (!match($0, /^[a-zA-Z_:][a-zA-Z0-9_:]*/)) { bad("no metric name"); next }
    name = substr($0, 1, RLENGTH); rest = substr($0, RLENGTH + 1)
    split("", lab); lset = ""
    if (substr(rest, 1, 1) == "{") {
        if (!labels(rest)) { bad("bad label set"); next }
        lset = substr(rest, 1, LABELS_END - 1); rest = substr(rest, LABELS_END)
    }
    if (!match(rest, /^ [^ ]+( -?[0-9]+)?$/)) { bad("not \"name{labels} value\""); next }
    split(substr(rest, 2), parts, " "); value = parts[1]
    if (!validvalue(value)) { bad("bad value " value); next }
    if ((name SUBSEP lset) in series) bad("duplicate series")
    series[name SUBSEP lset] = 1
    fam = family(name)
    enter(fam)
    sampled[fam] = 1; samples++
    if (!(fam in help)) bad("sample of " fam " without # HELP before it")
    if (!(fam in type)) { bad("sample of " fam " without # TYPE before it"); next }
    t = type[fam]
    if (t == "counter" && (value ~ /^-|NaN/)) bad("negative or NaN counter")
    if (t != "histogram") next
    if (name == fam) { bad("histogram sample without _bucket/_sum/_count"); next }
    # the series of one histogram: its labels less le, in order
    other = ""
    for (k in lab) if (k != "le") other = other k "=" lab[k] ","
    n = split(other, tmp, ","); other = ""
    # (sort the label pairs: for-in order is unspecified)
    for (a = 1; a < n; a++) for (b = a + 1; b < n; b++) if (tmp[b] < tmp[a]) { x = tmp[a]; tmp[a] = tmp[b]; tmp[b] = x }
    for (a = 1; a < n; a++) other = other tmp[a] ","
    h = fam SUBSEP other
    hists[h] = 1
    if (name == fam "_bucket") {
        if (!("le" in lab) || !validvalue(lab["le"])) { bad("bucket without a numeric le"); next }
        le = num(lab["le"]); v = value + 0
        if ((h in lastle) && le <= lastle[h]) bad("le not increasing")
        if ((h in lastb) && v < lastb[h]) bad("bucket counts not cumulative (" v " < " lastb[h] ")")
        if (h in infb) bad("bucket after +Inf")
        lastle[h] = le; lastb[h] = v
        if (le == INF) infb[h] = v
    } else if (name == fam "_count") {
        cnt[h] = value + 0
    } else if (name == fam "_sum") {
        sum[h] = 1
    } else bad("unexpected histogram series " name)
}
END {
    for (h in hists) {
        split(h, p, SUBSEP)
        if (!(h in infb)) { printf "%s{%s}: no +Inf bucket\n", p[1], p[2]; errors++ }
        else if (!(h in cnt)) { printf "%s{%s}: no _count\n", p[1], p[2]; errors++ }
        else if (infb[h] != cnt[h]) { printf "%s{%s}: +Inf bucket %s != _count %s\n", p[1], p[2], infb[h], cnt[h]; errors++ }
        if (!(h in sum)) { printf "%s{%s}: no _sum\n", p[1], p[2]; errors++ }
    }
    for (f in type) if (type[f] != "histogram" && !(f in sampled)) {
        printf "%s: # TYPE without samples\n", f; errors++
    }
    if (samples == 0) { print "no samples"; errors++ }
    exit errors > 0
}
EOF

# promcheck FILE WHAT: FILE is valid exposition format.
promcheck() {
    awk -f "$WORK/promcheck.awk" "$1" >"$WORK/promcheck.out" 2>&1 ||
        fail "$2: /metrics is not valid Prometheus text: $(head -n 5 "$WORK/promcheck.out")"
    ok
}

# The checker itself must catch what it is there to catch.
selftest_promcheck() {
    local good=$WORK/prom.good bad_file=$WORK/prom.bad
    cat >"$good" <<'EOF'
# HELP a_total A counter.
# TYPE a_total counter
a_total{x="1"} 3
# HELP h A histogram.
# TYPE h histogram
h_bucket{le="0.1"} 1
h_bucket{le="1"} 2
h_bucket{le="+Inf"} 2
h_sum 0.3
h_count 2
EOF
    awk -f "$WORK/promcheck.awk" "$good" >/dev/null || fail "the format checker rejects valid text: $(awk -f "$WORK/promcheck.awk" "$good")"
    # shellcheck disable=SC2016 # sed scripts, nothing to expand
    local -a breakages=(
        's/^a_total{x="1"} 3$/a_total{x="1"} -3/'           # negative counter
        's/^h_bucket{le="1"} 2$/h_bucket{le="1"} 0/'        # not cumulative
        's/^h_count 2$/h_count 5/'                          # +Inf != count
        '/^# TYPE a_total/d'                                # no TYPE
        '/^# HELP h /d'                                     # no HELP
        's/a_total/a_count/g'                               # counter without _total
        's/^a_total{x="1"} 3$/a_total{x=1} 3/'              # unquoted label value
        's/^h_sum 0.3$/h_sum zero/'                         # bad value
        's/^h_bucket{le="+Inf"} 2$/h_bucket{le="0.05"} 2/'  # le not increasing, no +Inf
        '$a a_total{x="2"} 1'                               # family split
    )
    local s
    for s in "${breakages[@]}"; do
        sed -e "$s" "$good" >"$bad_file"
        ! awk -f "$WORK/promcheck.awk" "$bad_file" >/dev/null 2>&1 || fail "the format checker accepts broken text ($s)"
    done
    ok
}
selftest_promcheck

# state_dump: everything /query could have changed (state rows, meta,
# schema, journal mode), read with sqlite3.
state_dump() {
    sqlite3 -batch -readonly -cmd '.timeout 5000' "$DB" \
        "SELECT * FROM order_window_state ORDER BY store_id, product_id, window_start_ms;
         SELECT key, value FROM meta ORDER BY key;
         SELECT type, name, sql FROM sqlite_schema ORDER BY type, name;
         PRAGMA journal_mode;" || fail "cannot read $DB with sqlite3"
}

# readyz_until_ready PID SECONDS: polls /readyz from before the listener is
# up until it answers 200; the codes seen, one per change, go to READY_SEEN
# (e.g. "000 503 200").
readyz_until_ready() {
    READY_SEEN=""
    READY_LAST=""
    POLL_EVERY=0.02 poll_until "$2" "$1" "/readyz answering 200" readyz_ready
}

# readyz_ready: one /readyz; true on 200 (readyz_until_ready's check).
readyz_ready() {
    req GET /readyz
    if [[ "$CODE" != "$READY_LAST" ]]; then
        READY_SEEN="${READY_SEEN:+$READY_SEEN }$CODE"
        READY_LAST=$CODE
        if [[ "$CODE" == 503 ]]; then cp "$WORK/body" "$WORK/readyz.503"; fi
    fi
    POLL_STATE="seen: $READY_SEEN"
    [[ "$CODE" == 200 ]]
}

run_args=("${STREAM_ARGS[@]}" --snapshot-interval 500ms --query-timeout-ms "$QUERY_TIMEOUT_MS"
    --query-max-rows "$MAX_ROWS")

# ---- 5b. flags: usage errors need no broker ------------------------------------
expect_usage_error "--http foo" --pipeline orders --brokers "$KAFKA_BROKERS" --http foo --state-dir "$WORK/none"
grep -q -- '--http' "$WORK/usage.err" || fail "the --http foo message does not name --http: $(cat "$WORK/usage.err")"
expect_usage_error "--http 127.0.0.1:99999" --pipeline orders --brokers "$KAFKA_BROKERS" --http 127.0.0.1:99999 \
    --state-dir "$WORK/none"
expect_usage_error "--query-timeout-ms 0" --pipeline orders --brokers "$KAFKA_BROKERS" --query-timeout-ms 0 \
    --state-dir "$WORK/none"
[[ ! -e "$WORK/none" ]] || fail "a usage error created the state directory"
ok

# ---- input: a backlog before the start -------------------------------------------
create_topic "$IN" 3
: >"$WORK/orders.tsv"
gen_orders "$N_ORDERS" 777 1 "$WORK/orders.tsv" >"$WORK/orders.kv"
gen_malformed "$N_BAD" "http" >"$WORK/bad.kv"
mix "$WORK/orders.kv" "$WORK/bad.kv" >"$WORK/input.kv"
produce "$IN" "$WORK/input.kv"
TOTAL=$((N_ORDERS + N_BAD))
assert_eq "records in the input topic" "$TOTAL" "$(topic_records "$IN")"
end_offsets "$IN" >"$WORK/input.ends"
awk '$2 == 0 { exit 1 }' "$WORK/input.ends" || fail "an input partition is empty: $(cat "$WORK/input.ends")"

# ---- 1, 2. run 1: readiness, metrics while the backlog is worked off ----------------
PORT=$(free_port)
LOG=$WORK/run1.log
t0=$SECONDS
# Small batches: the backlog takes seconds, and the lag gauge (updated every
# second) is seen above 0.
tally_start "$LOG" "${run_args[@]}" --max-batch 20 --http "127.0.0.1:$PORT"
PID=$TALLY_PID
readyz_until_ready "$PID" 60
note "run 1: /readyz went $READY_SEEN"
grep -q "event=http_listening address=127.0.0.1:$PORT port=$PORT token=none" "$LOG" ||
    fail "no http_listening line for port $PORT: $(grep http_ "$LOG" | head -3)"
ok
# Nothing listens yet (000), then 503 "recovering": the listener comes up
# before the recovery, which waits for the broker (the producer's
# transactions) - then 200.
[[ "$READY_SEEN" =~ ^(000\ )?503\ 200$ ]] || fail "/readyz went $READY_SEEN, expected [000] 503 200"
ok
grep -q recovering "$WORK/readyz.503" || fail "/readyz 503 does not say recovering: $(cat "$WORK/readyz.503")"
ok
req GET /healthz
expect_code "/healthz" 200
tally_wait_started "$PID" "$LOG"

# Scrape while the backlog is consumed: every scrape is valid, the counters
# never go back, and the lag is seen above 0 while records wait.
max_lag=0
scrapes=0
declare -A prev=()
declare -A consumed_seen=()
counters=(tally_events_consumed_total tally_events_applied_total tally_events_dead_lettered_total
    tally_batches_total tally_transactions_committed_total tally_end_to_end_latency_seconds_count)
# backlog_scraped: one scrape, checked; true once it counts every record.
backlog_scraped() {
    local c v lag
    scrape "$WORK/m.txt"
    promcheck "$WORK/m.txt" "scrape $scrapes during the backlog"
    scrapes=$((scrapes + 1))
    for c in "${counters[@]}"; do
        v=$(metric "$WORK/m.txt" "$c")
        [[ "$v" =~ ^[0-9]+$ ]] || fail "scrape $scrapes: $c is [$v], not a count"
        if [[ -n "${prev[$c]:-}" ]] && ((v < prev[$c])); then
            fail "scrape $scrapes: $c went back from ${prev[$c]} to $v"
        fi
        prev[$c]=$v
    done
    consumed=${prev[tally_events_consumed_total]}
    ((consumed <= TOTAL)) || fail "tally_events_consumed_total $consumed exceeds the $TOTAL records produced"
    consumed_seen[$consumed]=1
    lag=$(lag_lines "$WORK/m.txt" | awk '{ n += $2 } END { print n + 0 }')
    if ((lag > max_lag)); then max_lag=$lag; fi
    POLL_STATE="$consumed of $TOTAL records counted by /metrics"
    ((consumed == TOTAL))
}
poll_until 90 "$PID" "every record counted by /metrics" backlog_scraped
backlog_s=$((SECONDS - t0))
note "run 1: backlog of $TOTAL consumed in ~${backlog_s}s; $scrapes scrapes saw ${#consumed_seen[@]} values of consumed, lag up to $max_lag"
((${#consumed_seen[@]} >= 2)) || fail "tally_events_consumed_total did not move while the backlog was consumed (${!consumed_seen[*]})"
ok
((max_lag > 0)) || fail "tally_consumer_lag_records never above 0 while a backlog of $TOTAL records was consumed ($scrapes scrapes)"
ok

# After the catch-up: every partition's lag 0, snapshots taken.
# caught_up: one scrape; true once every partition's lag is 0 and a snapshot
# was taken.
caught_up() {
    scrape "$WORK/m.txt"
    lag_lines "$WORK/m.txt" >"$WORK/lag.txt"
    POLL_STATE="lag per partition [$(tr '\n' ' ' <"$WORK/lag.txt")], snapshots $(metric "$WORK/m.txt" tally_snapshots_total)"
    [[ "$(wc -l <"$WORK/lag.txt")" == 3 ]] && awk '$2 != 0 { exit 1 }' "$WORK/lag.txt" &&
        (($(metric "$WORK/m.txt" tally_snapshots_total) > 0))
}
POLL_EVERY=0.3 poll_until 15 "" "catch-up (lag 0 everywhere, a snapshot)" caught_up
promcheck "$WORK/m.txt" "after the catch-up"
assert_eq "lag per partition after the catch-up" "0 0
1 0
2 0" "$(cat "$WORK/lag.txt")"
wait_done "$DB" "$N_ORDERS" "$PREFIX" "$N_BAD" 30 "$PID"
scrape "$WORK/m.txt"
cp "$WORK/m.txt" "$WORK/metrics.run1"
assert_eq "tally_events_consumed_total" "$TOTAL" "$(metric "$WORK/m.txt" tally_events_consumed_total)"
assert_eq "tally_events_applied_total" "$N_ORDERS" "$(metric "$WORK/m.txt" tally_events_applied_total)"
assert_eq "tally_events_dead_lettered_total" "$N_BAD" "$(metric "$WORK/m.txt" tally_events_dead_lettered_total)"
assert_eq "tally_events_rejected_total" "$N_BAD" "$(metric "$WORK/m.txt" tally_events_rejected_total)"
assert_eq "tally_events_late_total (orders has no event-time windows)" 0 \
    "$(metric "$WORK/m.txt" tally_events_late_total)"
assert_eq "tally_events_skipped_total" 0 "$(metric "$WORK/m.txt" tally_events_skipped_total)"
assert_eq "tally_end_to_end_latency_seconds_count" "$TOTAL" "$(metric "$WORK/m.txt" tally_end_to_end_latency_seconds_count)"
batches=$(metric "$WORK/m.txt" tally_batches_total)
((batches > 0)) || fail "tally_batches_total is $batches"
ok
assert_eq "tally_transactions_committed_total == tally_batches_total" "$batches" \
    "$(metric "$WORK/m.txt" tally_transactions_committed_total)"
assert_eq "tally_transactions_aborted_total" 0 "$(metric "$WORK/m.txt" tally_transactions_aborted_total)"
for h in apply_duration commit_duration batch_duration; do
    assert_eq "tally_${h}_seconds_count == batches" "$batches" "$(metric "$WORK/m.txt" "tally_${h}_seconds_count")"
done
assert_eq "tally_changelog_records_total == changelog rows written" "$(db_seq "$DB")" \
    "$(metric "$WORK/m.txt" tally_changelog_records_total)"
assert_eq "tally_changelog_last_seq" "$(db_seq "$DB")" "$(metric "$WORK/m.txt" tally_changelog_last_seq)"
assert_eq "tally_ready" 1 "$(metric "$WORK/m.txt" tally_ready)"
dbb=$(metric "$WORK/m.txt" tally_database_bytes)
if ! [[ "$dbb" =~ ^[0-9]+$ ]] || ((dbb == 0)); then fail "tally_database_bytes is [$dbb]"; fi
ok
snaps=$(metric "$WORK/m.txt" tally_snapshots_total)
((snaps > 0)) || fail "tally_snapshots_total is $snaps with --snapshot-interval 500ms"
ok
# (checked at the end, so that a failing snapshot does not hide the rest)
snapshot_errors_run1=$(metric "$WORK/m.txt" tally_snapshot_errors_total)
# (the counter goes up just before the line is logged)
sleep 0.2
logged=$(grep -c 'event=snapshot ' "$LOG" || true)
scrape "$WORK/m2.txt"
snaps=$(metric "$WORK/m2.txt" tally_snapshots_total)
sleep 0.2
logged_after=$(grep -c 'event=snapshot ' "$LOG" || true)
((logged <= snaps && snaps <= logged_after)) ||
    fail "tally_snapshots_total $snaps, but $logged..$logged_after event=snapshot lines in the log"
ok
grep -q '^tally_events_applied_total{pipeline="orders"} ' "$WORK/m.txt" || fail "no pipeline=\"orders\" label"
ok
req HEAD /metrics
expect_code "HEAD /metrics" 200

# ---- 3. /query -----------------------------------------------------------------------
SUM_SQL='SELECT coalesce(sum(count), 0) AS n FROM order_windows'
want=$(sqlval "$DB" "$SUM_SQL")
assert_eq "sum(count) in SQLite" "$N_ORDERS" "$want"
query_get "$SUM_SQL"
expect_code "GET /query?sql=" 200
grep -qi '^content-type: application/json' "$WORK/headers" || fail "/query is not application/json"
assert_eq "GET /query: columns, rows, row_count, truncated" "[\"n\"]|$want|1|0" \
    "$(json '$.columns')|$(json '$.rows[0].n')|$(json '$.row_count')|$(json '$.truncated')"
query_form "$SUM_SQL"
expect_code "POST /query (form)" 200
assert_eq "POST /query (form): sum(count)" "$want" "$(json '$.rows[0].n')"
query_body "$SUM_SQL"
expect_code "POST /query (text/plain body)" 200
assert_eq "POST /query (body): sum(count)" "$want" "$(json '$.rows[0].n')"
# curl --data 'SELECT ...' says form; SQL with "=" in it is still the SQL.
req POST /query --data-binary "SELECT sum(count) AS n FROM order_window_state WHERE 1 = 1 AND count >= 1"
expect_code "POST /query (SQL as a form-typed body)" 200
assert_eq "POST /query (form-typed body): sum(count)" "$want" "$(json '$.rows[0].n')"
# Types and values of a few rows, against SQLite.
ROWS_SQL='SELECT store_id, product_id, window_start, sum, count FROM order_windows ORDER BY store_id, product_id, window_start LIMIT 5'
query_get "$ROWS_SQL"
expect_code "GET /query (5 rows)" 200
assert_eq "5 rows: row_count, truncated" "5|0" "$(json '$.row_count')|$(json '$.truncated')"
sqlite3 -separator '|' :memory: "SELECT json_extract(value, '\$.store_id'), json_extract(value, '\$.product_id'),
    json_extract(value, '\$.window_start'), json_extract(value, '\$.sum'), json_extract(value, '\$.count'),
    json_type(value, '\$.sum'), json_type(value, '\$.count')
    FROM json_each(json_extract(readfile('$WORK/body'), '\$.rows'))" >"$WORK/q.rows"
sqlite3 -readonly -separator '|' "$DB" "SELECT store_id, product_id, window_start, sum, count, 'text', 'integer'
    FROM ($ROWS_SQL)" >"$WORK/db.rows"
assert_files_eq "/query rows vs sqlite3" "$WORK/db.rows" "$WORK/q.rows"
# --query-max-rows 5: the rest is cut, and said so.
query_get "${ROWS_SQL% LIMIT 5}"
expect_code "GET /query (all rows, capped)" 200
assert_eq "capped: row_count, rows, truncated" "5|5|1" \
    "$(json '$.row_count')|$(sqlite3 :memory: "SELECT json_array_length(readfile('$WORK/body'), '\$.rows')")|$(json '$.truncated')"
grep -q '"truncated":true' "$WORK/body" || fail "the capped answer does not say \"truncated\":true: $(head -c 200 "$WORK/body")"
ok
assert_eq "capped rows are the first 5" "$(cat "$WORK/db.rows")" "$(sqlite3 -separator '|' :memory: "SELECT json_extract(value, '\$.store_id'),
    json_extract(value, '\$.product_id'), json_extract(value, '\$.window_start'), json_extract(value, '\$.sum'),
    json_extract(value, '\$.count'), json_type(value, '\$.sum'), json_type(value, '\$.count')
    FROM json_each(json_extract(readfile('$WORK/body'), '\$.rows'))")"
# Read-only PRAGMAs work.
query_get 'PRAGMA table_info(meta)'
expect_code "PRAGMA table_info" 200
grep -q '"name":"value"' "$WORK/body" || fail "PRAGMA table_info(meta) does not list value: $(head -c 300 "$WORK/body")"
ok

# Hostile statements: the state must not change.
BEFORE=$(state_dump)
[[ -n "$BEFORE" ]] || fail "empty state dump"
hostile_sql
hostile=("${HOSTILE_SQL[@]}" "ROLLBACK")
for sql in "${hostile[@]}"; do
    query_get "$sql"
    expect_code "GET [$sql]" 403
    [[ -n "$(json '$.error')" ]] || fail "[$sql]: 403 without an error message"
    ok
done
# The same by POST, both ways, for a few.
for sql in "DELETE FROM changelog" "PRAGMA writable_schema = 1" "ATTACH DATABASE '$WORK/evil.db' AS evil" "SELECT load_extension('x')"; do
    query_form "$sql"
    expect_code "POST form [$sql]" 403
    query_body "$sql"
    expect_code "POST body [$sql]" 403
done
query_get "ATTACH DATABASE '$WORK/evil.db' AS evil"
[[ "$(json '$.error')" == *ATTACH* ]] || fail "the ATTACH refusal does not say ATTACH: $(cat "$WORK/body")"
query_get "PRAGMA writable_schema = 1"
[[ "$(json '$.error')" == *writable_schema* ]] || fail "the PRAGMA refusal does not name it: $(cat "$WORK/body")"
query_get "SELECT load_extension('x')"
[[ "$(json '$.error')" == *load_extension* ]] || fail "the load_extension refusal does not name it: $(cat "$WORK/body")"
ok
# Two statements: 400, and the second one never runs.
for sql in "SELECT 1; DELETE FROM changelog" "SELECT 1; ATTACH DATABASE '$WORK/evil.db' AS evil" \
    "SELECT 1; DROP TABLE meta;"; do
    query_get "$sql"
    expect_code "GET [$sql]" 400
    [[ "$(json '$.error')" == *"one statement"* ]] || fail "[$sql]: the refusal does not say one statement: $(cat "$WORK/body")"
    ok
    query_body "$sql"
    expect_code "POST body [$sql]" 400
done
# Not SQL, or nothing: 400.
query_get "SELEC 1"
expect_code "a syntax error" 400
query_get ""
expect_code "empty sql=" 400
req GET /query
expect_code "GET /query without sql=" 400
req HEAD /query
expect_code "HEAD /query" 405
# (libevent itself answers methods tally does not serve at all with 501)
req DELETE /query
[[ "$CODE" == 405 || "$CODE" == 501 ]] || fail "DELETE /query: expected HTTP 405 or 501, got $CODE"
ok
req GET /nosuch
expect_code "GET /nosuch" 404
# An endless recursive CTE: 408 after about --query-timeout-ms.
start_ns=$(date +%s%N)
query_get 'WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c'
elapsed_ms=$((($(date +%s%N) - start_ns) / 1000000))
expect_code "endless CTE" 408
[[ "$(json '$.error')" == *interrupted* ]] || fail "the 408 does not say interrupted: $(cat "$WORK/body")"
((elapsed_ms >= QUERY_TIMEOUT_MS - 50 && elapsed_ms < QUERY_TIMEOUT_MS + 2500)) ||
    fail "the endless CTE answered after ${elapsed_ms} ms with --query-timeout-ms $QUERY_TIMEOUT_MS"
ok
query_body 'WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT max(x) FROM c'
expect_code "endless CTE by POST" 408
# The server goes on serving after all that.
req GET /healthz
expect_code "/healthz after the refusals" 200
query_get "$SUM_SQL"
expect_code "a SELECT after the refusals" 200
assert_eq "sum(count) after the refusals" "$want" "$(json '$.rows[0].n')"
AFTER=$(state_dump)
if [[ "$BEFORE" != "$AFTER" ]]; then
    diff <(echo "$BEFORE") <(echo "$AFTER") | head -20 >&2
    fail "the state changed during the refused statements"
fi
ok
assert_eq "no file was created by a refused statement" "" "$(find "$WORK" -maxdepth 1 -name 'evil*')"
alive "$PID" || fail "tally died during the /query checks"
ok
scrape "$WORK/m.txt"
assert_eq "consumed after the /query checks" "$TOTAL" "$(metric "$WORK/m.txt" tally_events_consumed_total)"

# ---- 5a. the address in use: another tally on the same port stops at once ------------
rc=0
timeout 60 "$TALLY" run --pipeline orders --brokers "$KAFKA_BROKERS" --input-topic "$IN" \
    --output-topic "$(name out2)" --topic-prefix "$(name p2)" --group-id "$(name g2)" \
    --instance-id "$(name i2)" --state-dir "$WORK/state2" --http "127.0.0.1:$PORT" \
    >"$WORK/inuse.out" 2>"$WORK/inuse.err" || rc=$?
[[ "$rc" == 1 || "$rc" == 2 ]] || fail "--http on a port in use: exit status $rc, expected 1 (or 2); stderr: $(head -c 300 "$WORK/inuse.err")"
ok
grep -q "127.0.0.1:$PORT" "$WORK/inuse.err" || fail "the in-use message does not name the address: $(cat "$WORK/inuse.err")"
grep -q 'in use' "$WORK/inuse.err" || fail "the in-use message does not say in use: $(cat "$WORK/inuse.err")"
{ grep -q -- '--http off' "$WORK/inuse.err" && grep -q 'another' "$WORK/inuse.err"; } ||
    fail "the in-use message does not suggest another address or --http off: $(cat "$WORK/inuse.err")"
ok
[[ ! -e "$WORK/state2/orders.db" ]] || fail "the refused start created a database"
ok
alive "$PID" || fail "the first tally died when a second one tried its port"
req GET /healthz
expect_code "/healthz of the first tally after the refused second one" 200

tally_stop "$PID"
grep -q "event=shutdown applied=$N_ORDERS rejected=$N_BAD .*batches=$batches " "$LOG" ||
    fail "the shutdown line does not match /metrics (applied=$N_ORDERS rejected=$N_BAD batches=$batches): $(grep 'event=shutdown' "$LOG")"
ok
check_totals "run 1, after /query" "$WORK/orders.tsv" "$DB" "$OUT"

# ---- 4, 6. run 2: --http-token, the page in Chromium while orders flow --------------
PORT=$(free_port)
LOG=$WORK/run2.log
tally_start "$LOG" "${run_args[@]}" --max-batch 100 --http "127.0.0.1:$PORT" --http-token "$TOKEN"
PID=$TALLY_PID
tally_wait_started "$PID" "$LOG"
grep -q "event=http_listening .*port=$PORT token=required" "$LOG" || fail "run 2 does not log token=required"
ok
! grep -q -- "$TOKEN" "$LOG" || fail "the token appears in the log"
ok
auth=(-H "Authorization: Bearer $TOKEN")
# token_checks WHAT GOOD_TOKEN WRONG_TOKEN: 401 without the token or with a
# wrong one, 200 with it; the probes and the page need none.
token_checks() {
    local what=$1 good=$2 wrong=$3
    for path in /metrics "/query?sql=SELECT%201"; do
        req GET "$path"
        expect_code "$what: GET $path without a token" 401
        grep -qi '^www-authenticate: bearer' "$WORK/headers" || fail "$what: 401 without WWW-Authenticate: Bearer"
        ok
        req GET "$path" -H "Authorization: Bearer $wrong"
        expect_code "$what: GET $path with a wrong token" 401
        req GET "$path" -H "Authorization: Bearer ${good%?}x"
        expect_code "$what: GET $path with a token of the right length, last byte wrong" 401
        req GET "$path" -H "Authorization: Bearer ${good}x"
        expect_code "$what: GET $path with the token and one byte more" 401
        req GET "$path" -H "Authorization: Bearer ${good%?}"
        expect_code "$what: GET $path with the token less its last byte" 401
        req GET "$path" -H "Authorization: $good"
        expect_code "$what: GET $path with the token but no Bearer" 401
        req GET "$path" -H "Authorization: Bearer $good"
        expect_code "$what: GET $path with the token" 200
    done
    query_form "SELECT 1 AS one"
    expect_code "$what: POST /query without a token" 401
    query_form "SELECT 1 AS one" -H "Authorization: Bearer $good"
    expect_code "$what: POST /query with the token" 200
    query_get "DELETE FROM changelog"
    expect_code "$what: a write without a token is refused before anything" 401
    for path in /healthz /readyz /; do
        req GET "$path"
        expect_code "$what: GET $path without a token" 200
    done
}
token_checks "--http-token" "$TOKEN" "wrong-$TOKEN"
scrape "$WORK/m.txt" "${auth[@]}"
promcheck "$WORK/m.txt" "run 2 (token)"
assert_eq "run 2: /readyz" 1 "$(metric "$WORK/m.txt" tally_ready)"

# Orders flow while the page is open: N_LIVE more, in small slices.
: >"$WORK/live.tsv"
gen_orders "$N_LIVE" 991 1000000 "$WORK/live.tsv" >"$WORK/live.kv"
(awk '{ print } NR % 40 == 0 { fflush(); system("sleep 0.08") }' "$WORK/live.kv" |
    timeout 120 kcat -b "$KAFKA_BROKERS" -P -t "$IN" -K '|' -X linger.ms=5 -X acks=all) \
    2>"$WORK/live.err" &
LIVE_PID=$!
bg_track "$LIVE_PID"
# Wait until events flow, so the first samples already have some.
POLL_EVERY=0.1 poll_until 30 "" "live orders arriving" orders_above "$DB" "$N_ORDERS"

# page URL FILE [BUDGET_MS]: the DOM headless Chromium dumps after the page
# ran for BUDGET_MS of virtual time. Virtual time runs as fast as the page's
# requests are answered: its once-a-second polls come milliseconds apart.
page() {
    local url=$1 out=$2 budget=${3:-8000} mode
    for mode in --headless --headless=new; do
        rm -rf "$WORK/chromium"
        timeout 60 "$CHROMIUM" "$mode" --no-sandbox --disable-gpu --disable-dev-shm-usage \
            --no-first-run --disable-extensions --user-data-dir="$WORK/chromium" \
            --virtual-time-budget="$budget" --dump-dom "$url" >"$out" 2>"$WORK/chromium.err" || true
        grep -q 'id="c_rate"' "$out" && return 0
    done
    fail "Chromium dumped no page for $url: $(tail -n 3 "$WORK/chromium.err")"
}

# page_live URL FILE SECONDS: the DOM after the page ran for SECONDS of real
# time in headless Chromium, read through the DevTools protocol on a pipe
# (--remote-debugging-pipe: NUL-terminated JSON on fds 3 and 4).
page_live() {
    local url=$1 out=$2 secs=$3 dir=$WORK/cdp tid sid cpid
    rm -rf "$dir"
    mkdir -p "$dir"
    mkfifo "$dir/to" "$dir/from"
    "$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run \
        --disable-extensions --user-data-dir="$dir/profile" --remote-debugging-pipe \
        3<"$dir/to" 4>"$dir/from" 2>"$dir/err" about:blank &
    cpid=$!
    bg_track "$cpid"
    exec 5>"$dir/to" 6<"$dir/from"
    cdp_send() { printf '%s\0' "$1" >&5; }
    # cdp_recv ID: the answer to request ID (events are skipped), in $dir/msg.
    cdp_recv() {
        local msg
        while IFS= read -r -d '' -t 30 msg <&6; do
            if [[ "$msg" == *"\"id\":$1,"* ]]; then
                printf '%s' "$msg" >"$dir/msg"
                [[ "$msg" != *'"error":'* ]] || fail "Chromium DevTools request $1 failed: ${msg:0:300}"
                return 0
            fi
        done
        fail "no answer from Chromium to DevTools request $1: $(tail -n 3 "$dir/err")"
    }
    cdp_send '{"id":1,"method":"Target.createTarget","params":{"url":"'"$url"'"}}'
    cdp_recv 1
    tid=$(sed -n 's/.*"targetId":"\([^"]*\)".*/\1/p' "$dir/msg")
    cdp_send '{"id":2,"method":"Target.attachToTarget","params":{"targetId":"'"$tid"'","flatten":true}}'
    cdp_recv 2
    sid=$(sed -n 's/.*"sessionId":"\([^"]*\)".*/\1/p' "$dir/msg")
    [[ -n "$tid" && -n "$sid" ]] || fail "Chromium DevTools: no target or session: $(head -c 300 "$dir/msg")"
    sleep "$secs"
    cdp_send '{"id":3,"sessionId":"'"$sid"'","method":"Runtime.evaluate","params":{"expression":"document.documentElement.outerHTML","returnByValue":true}}'
    cdp_recv 3
    sqlite3 :memory: "SELECT json_extract(readfile('$dir/msg'), '\$.result.result.value')" >"$out"
    cdp_send '{"id":4,"method":"Browser.close"}'
    exec 5>&- 6<&-
    tally_wait_exit "$cpid" 20
    grep -q 'id="c_rate"' "$out" || fail "Chromium gave no page for $url: $(head -c 300 "$out")"
}

# canvas_points FILE ID: the data-points of canvas ID.
canvas_points() {
    grep -o "<canvas id=\"$2\"[^>]*>" "$1" | sed -n 's/.*data-points="\([0-9]*\)".*/\1/p'
}
# page_checks WHAT FILE CANVAS...: the CANVASes show >= 2 points, #status is
# empty, the recent table has rows of order_windows.
page_checks() {
    local what=$1 file=$2 c pts status rows
    shift 2
    for c in "$@"; do
        pts=$(canvas_points "$file" "$c")
        [[ "$pts" =~ ^[0-9]+$ ]] || fail "$what: canvas $c has no data-points: $(grep -o "<canvas id=\"$c\"[^>]*>" "$file")"
        ((pts >= 2)) || fail "$what: canvas $c shows $pts points (< 2) with orders flowing; status: $(grep -o '<div id="status">[^<]*' "$file")"
        ok
    done
    status=$(grep -o '<div id="status">[^<]*</div>' "$file" || true)
    assert_eq "$what: the page's #status" '<div id="status"></div>' "$status"
    rows=$(sed -n 's:.*<table id="recent">\(.*\)</table>.*:\1:p' "$file" | grep -o '<tr>' | wc -l)
    ((rows >= 2)) || fail "$what: the recent table has $((rows > 0 ? rows - 1 : 0)) rows: $(grep -o '<table id="recent">.*</table>' "$file" | head -c 300)"
    ok
    grep -q '<th>store_id</th>.*<th>count</th>' "$file" || fail "$what: the recent table has not the order_windows columns"
    ok
    grep -q '<span id="pipeline">orders</span>' "$file" || fail "$what: the page does not name the pipeline"
    ok
    grep -q '<b id="ready">yes</b>' "$file" || fail "$what: the page does not show ready: yes"
    ok
    assert_eq "$what: dead letters on the page" "<b id=\"dlq\">0</b>" "$(grep -o '<b id="dlq">[^<]*</b>' "$file")"
}

page_t0=$SECONDS
# The command a person would try first: --dump-dom after 8 s of virtual time.
# Its polls come too close together in real time for a latency figure (no
# batch commits between two of them), so the latency chart is checked in
# real time below.
page "http://127.0.0.1:$PORT/#token=$TOKEN" "$WORK/page.html"
page_checks "--dump-dom" "$WORK/page.html" c_rate c_lag
note "--dump-dom: the latency chart shows $(canvas_points "$WORK/page.html" c_lat) points"
# Four seconds of real time while orders flow: all three charts.
page_live "http://127.0.0.1:$PORT/#token=$TOKEN" "$WORK/page-live.html" 4
page_checks "real time" "$WORK/page-live.html" c_rate c_lag c_lat
grep -q '<b id="p95">[0-9.]* ms</b>' "$WORK/page-live.html" ||
    fail "the page shows no p95 latency: $(grep -o '<b id="p95">[^<]*' "$WORK/page-live.html")"
ok
page_s=$((SECONDS - page_t0))
alive "$LIVE_PID" || note "the live orders were all produced before Chromium was done (the pages took ${page_s}s)"
# Without the token the page says why it shows nothing.
page "http://127.0.0.1:$PORT/" "$WORK/page-notoken.html" 3000
grep -q '<div id="status">[^<]*401' "$WORK/page-notoken.html" ||
    fail "without the token the page's #status does not show the 401: $(grep -o '<div id="status">[^<]*' "$WORK/page-notoken.html")"
ok
for c in c_rate c_lag c_lat; do
    assert_eq "canvas $c without the token" 0 "$(canvas_points "$WORK/page-notoken.html" "$c")"
done

wait "$LIVE_PID" || fail "kcat could not produce the live orders: $(cat "$WORK/live.err")"
[[ ! -s "$WORK/live.err" ]] || fail "kcat reported errors producing the live orders: $(cat "$WORK/live.err")"
ok
cat "$WORK/orders.tsv" "$WORK/live.tsv" >"$WORK/all.tsv"
wait_done "$DB" $((N_ORDERS + N_LIVE)) "$PREFIX" "$N_BAD" 60 "$PID"
scrape "$WORK/m.txt" "${auth[@]}"
assert_eq "run 2: tally_events_applied_total" "$N_LIVE" "$(metric "$WORK/m.txt" tally_events_applied_total)"
tally_stop "$PID"

# ---- 4. run 3: the token from TALLY_HTTP_TOKEN ---------------------------------------
PORT=$(free_port)
LOG=$WORK/run3.log
TALLY_HTTP_TOKEN=$TOKEN_ENV tally_start "$LOG" "${run_args[@]}" --max-batch 100 --http "127.0.0.1:$PORT"
PID=$TALLY_PID
tally_wait_started "$PID" "$LOG"
grep -q "event=http_listening .*port=$PORT token=required" "$LOG" || fail "TALLY_HTTP_TOKEN: run 3 does not log token=required"
ok
token_checks "TALLY_HTTP_TOKEN" "$TOKEN_ENV" "$TOKEN"
query_get "$SUM_SQL" -H "Authorization: Bearer $TOKEN_ENV"
expect_code "run 3: /query" 200
assert_eq "run 3: sum(count) through /query" "$((N_ORDERS + N_LIVE))" "$(json '$.rows[0].n')"
tally_stop "$PID"

check_totals "after all runs" "$WORK/all.tsv" "$DB" "$OUT"
check_dlq "$PREFIX" "$IN" "$WORK/bad.kv"

# No snapshot failed, in any run (run 1's backlog keeps SQLite busy).
assert_eq "run 1: tally_snapshot_errors_total (snapshot_error lines: $(grep -h 'event=snapshot_error' "$WORK"/run1.log | cut -c1-200 | head -n 3))" \
    0 "$snapshot_errors_run1"
assert_eq "event=snapshot_error lines in the logs" "" "$(grep -h 'event=snapshot_error' "$WORK"/run*.log | cut -c1-300 | head -n 5)"

finish "backlog of $TOTAL in ~${backlog_s}s, lag seen up to $max_lag, page rendered in ${page_s}s"
