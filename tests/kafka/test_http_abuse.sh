#!/usr/bin/env bash
# test_http_abuse.sh - `tally run --http` keeps answering its probes while
# clients misbehave, on a real broker, with the daemon under `ulimit -n 256`.
#
#   1. More connections than the descriptor limit (400 held open): the
#      daemon's descriptors stay below the limit (a reserve is kept for SQLite,
#      snapshots and Kafka), /healthz and /metrics answer within PROBE_MAX_S
#      (curl's time_total), orders produced meanwhile are consumed and no
#      snapshot fails.
#   2. Slowloris: connections that send a header line a second are closed
#      by the server within the request deadline (10 s) plus a margin,
#      although every line arrives well within any per-read timeout.
#   3. Oversized request heads: 16 KiB of headers gets 431 with a JSON error;
#      1 MiB is cut off (400 or a closed connection).
#   4. Twelve runaway queries at once: two run, eight wait, the rest (2 to 4,
#      as the workers wake) get 503
#      with Retry-After and a JSON error; each runaway ends in 408; /healthz,
#      /readyz and /metrics answer within PROBE_MAX_S all the while.
#   5. Huge results (one 50 MB blob, 5,000 rows of 10 kB) get 413 with a JSON
#      error, and the daemon's peak RSS stays far below them.
#   6. /query's JSON is valid for text that is not UTF-8 and for reals that
#      are not finite.
#   7. The log has no accept() flood: no libevent "Error from accept()" line,
#      at most a few rate-limited http_* warnings a second.
#   8. A non-loopback --http without a token warns at start.
# shellcheck source=../lib/tally.sh
source "$(dirname "$0")/../lib/tally.sh"

command -v curl >/dev/null || fail "curl is required"

FD_LIMIT=256         # the daemon's ulimit -n
HOLD=400             # connections held open: more than FD_LIMIT
SLOW=10              # slowloris connections
QUERY_TIMEOUT_MS=3000
PROBE_MAX_S=1.0      # a probe's time_total at most (generous: 2 shared cores)
N_ORDERS=2000
N_LATE=500           # produced while the connections are held

# The holders open more connections than the daemon may have descriptors.
ulimit -n 4096 2>/dev/null || ulimit -n "$(ulimit -Hn)"
(($(ulimit -n) > HOLD + 64)) || fail "this shell cannot open $HOLD connections (ulimit -n $(ulimit -n))"

new_stream orders.db

# The daemon under the low descriptor limit: a wrapper that sets it and
# becomes tally (same pid).
REAL_TALLY=$TALLY
cat >"$WORK/tally-limited" <<EOF
#!/usr/bin/env bash
ulimit -n $FD_LIMIT || exit 1
# (under AddressSanitizer: a small quarantine, so freed buffers count once)
export ASAN_OPTIONS="\${ASAN_OPTIONS:+\$ASAN_OPTIONS:}quarantine_size_mb=16"
exec "$REAL_TALLY" "\$@"
EOF
chmod +x "$WORK/tally-limited"

# probe PATH WHAT: GET PATH answers 200 within PROBE_MAX_S (time_total).
probe() {
    local out code t
    out=$(curl -s -o "$WORK/probe.body" -w '%{http_code} %{time_total}' --max-time 10 \
        "http://127.0.0.1:$PORT$1") || true
    code=${out%% *}
    t=${out##* }
    [[ "$code" == 200 ]] || fail "$2: GET $1 answered ${code:-nothing} (time ${t:-?} s)"
    awk -v t="$t" -v max="$PROBE_MAX_S" 'BEGIN { exit !(t + 0 <= max + 0) }' ||
        fail "$2: GET $1 took $t s (> $PROBE_MAX_S s)"
    PROBES=$((PROBES + 1))
    ok
}
PROBES=0

# probes WHAT: /healthz, /readyz and /metrics, each within the bound.
probes() {
    probe /healthz "$1"
    probe /readyz "$1"
    probe /metrics "$1"
}

# query SQL: POST /query; CODE, the body in $WORK/q.body, headers in
# $WORK/q.headers.
query() {
    CODE=$(curl -s -o "$WORK/q.body" -D "$WORK/q.headers" -w '%{http_code}' --max-time 30 \
        -H 'Content-Type: text/plain' --data-binary "$1" "http://127.0.0.1:$PORT/query") || true
}

# json_of FILE PATH: a value of the JSON in FILE; fails unless FILE is JSON.
json_of() {
    [[ "$(sqlite3 :memory: "SELECT json_valid(readfile('$1'))")" == 1 ]] ||
        fail "not valid JSON: $(head -c 300 "$1" | od -c | head -n 5)"
    sqlite3 :memory: "SELECT json_extract(readfile('$1'), '$2')"
}

fd_count() { find "/proc/$PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
peak_rss_kb() { awk '/^VmHWM:/ { print $2 }' "/proc/$PID/status"; }

# ---- the daemon, caught up on a backlog -------------------------------------------
create_topic "$IN" 3
: >"$WORK/orders.tsv"
gen_orders "$N_ORDERS" 4242 1 "$WORK/orders.tsv" >"$WORK/orders.kv"
produce "$IN" "$WORK/orders.kv"
PORT=$(free_port)
TALLY=$WORK/tally-limited tally_start "$LOG" "${STREAM_ARGS[@]}" --snapshot-interval 1s \
    --query-timeout-ms "$QUERY_TIMEOUT_MS" --http "0.0.0.0:$PORT"
PID=$TALLY_PID
tally_wait_started "$PID" "$LOG"
wait_orders "$DB" "$N_ORDERS" 60 "$PID" "the backlog"
assert_eq "the daemon's descriptor limit" "$FD_LIMIT" "$(awk '/^Max open files/ { print $4 }' "/proc/$PID/limits")"

# 8. bound to 0.0.0.0 without a token: a warning that says how to fix it
grep -q 'event=http_unauthenticated address=0.0.0.0:' "$LOG" ||
    fail "no http_unauthenticated warning for --http 0.0.0.0 without a token: $(grep 'event=http' "$LOG")"
grep 'event=http_unauthenticated' "$LOG" | grep -q -- '--http-token' ||
    fail "the http_unauthenticated warning does not name --http-token"
ok
probes "before the abuse"

# ---- 6. valid JSON whatever the state holds ---------------------------------------
query "SELECT CAST(x'ff41c328e282' AS TEXT) AS t, 1e999 AS inf, -1e999 AS ninf, x'0022ff5c' AS b, 'é\"' AS ok"
assert_eq "/query of bad UTF-8 and Infinity: status" 200 "$CODE"
R=$'\xef\xbf\xbd' # U+FFFD in UTF-8
assert_eq "text that is not UTF-8" "${R}A$R($R$R" "$(json_of "$WORK/q.body" '$.rows[0].t')"
assert_eq "1e999 is null" null "$(sqlite3 :memory: "SELECT json_type(readfile('$WORK/q.body'), '\$.rows[0].inf')")"
assert_eq "-1e999 is null" null "$(sqlite3 :memory: "SELECT json_type(readfile('$WORK/q.body'), '\$.rows[0].ninf')")"
# (SQLite's JSON functions stop at \u0000: the text itself is compared)
grep -qF '"b":"\u0000\"\ufffd\\"' "$WORK/q.body" ||
    fail "a blob with a NUL, a quote, a bad byte, a backslash: $(head -c 300 "$WORK/q.body")"
ok
assert_eq "valid UTF-8 kept" 'é"' "$(json_of "$WORK/q.body" '$.rows[0].ok')"

# ---- 1. more connections than descriptors --------------------------------------
# A holder opens HOLD connections one after another, says how many it got,
# and keeps them until killed. The server may close old ones to make room.
cat >"$WORK/hold.sh" <<'EOF'
port=$1 n=$2 out=$3
opened=0
for ((i = 0; i < n; i++)); do
    exec {fd}<>"/dev/tcp/127.0.0.1/$port" || break
    opened=$((opened + 1))
done
echo "$opened" >"$out.tmp" && mv "$out.tmp" "$out"
exec sleep 600
EOF
t_hold=$SECONDS
# (not under timeout: the holder itself must be the tracked pid, so that
# killing it closes the connections)
bash "$WORK/hold.sh" "$PORT" "$HOLD" "$WORK/held" 2>"$WORK/hold.err" &
HOLD_PID=$!
bg_track "$HOLD_PID"
POLL_EVERY=0.1 poll_until 60 "$PID" "$HOLD connections opened" test -s "$WORK/held"
assert_eq "connections the holder opened" "$HOLD" "$(cat "$WORK/held")"
note "$HOLD connections opened in $((SECONDS - t_hold)) s"
fds=$(fd_count)
((fds < FD_LIMIT - 64)) || fail "the daemon holds $fds descriptors with $HOLD connections open (limit $FD_LIMIT): no reserve left"
ok
probes "with $HOLD connections held"
# The daemon still consumes while they are held.
: >"$WORK/late.tsv"
gen_orders "$N_LATE" 5151 1000000 "$WORK/late.tsv" >"$WORK/late.kv"
produce "$IN" "$WORK/late.kv"
wait_orders "$DB" $((N_ORDERS + N_LATE)) 60 "$PID" "the orders produced during the flood"
probes "after consuming during the flood"
fds=$(fd_count)
((fds < FD_LIMIT - 64)) || fail "the daemon holds $fds descriptors (limit $FD_LIMIT)"
ok

# ---- 2. slowloris -----------------------------------------------------------------
# Each connection sends a request line, then a header line a second; it
# notes how long the server let it go on (EOF or a failed write).
cat >"$WORK/slow.sh" <<'EOF'
port=$1 out=$2
trap '' PIPE # a write after the server closed fails instead of killing the shell
exec {fd}<>"/dev/tcp/127.0.0.1/$port" || exit 1
start=$SECONDS
printf 'GET /healthz HTTP/1.1\r\nHost: x\r\n' >&"$fd"
for ((i = 0; i < 40; i++)); do
    printf 'X-Slow-%d: y\r\n' "$i" >&"$fd" 2>/dev/null || break
    if read -r -t 1 -u "$fd" line; then :; else rc=$?; ((rc > 128)) || break; fi
done
echo $((SECONDS - start)) >"$out"
EOF
for ((i = 0; i < SLOW; i++)); do
    timeout 60 bash "$WORK/slow.sh" "$PORT" "$WORK/slow.$i" 2>/dev/null &
    bg_track $!
done
# The probes answer while the slow requests trickle in.
for _ in 1 2 3; do
    probes "during slowloris"
    sleep 1
done

# ---- 3. oversized request heads -----------------------------------------------------
head -c 16384 /dev/zero | tr '\0' a | sed 's/^/X-Big: /' >"$WORK/h16k"
head -c 1048576 /dev/zero | tr '\0' a | sed 's/^/X-Big: /' >"$WORK/h1m"
# 16 KiB: a clear 431; 1 MiB: refused (400) or cut off long before its end.
for f in h16k h1m; do
    out=$(curl -s -o "$WORK/big.body" -w '%{http_code}' --max-time 20 -H @"$WORK/$f" \
        "http://127.0.0.1:$PORT/healthz") || true
    note "$f of headers: HTTP $out"
    if [[ $f == h16k ]]; then
        assert_eq "a request with 16 KiB of headers" 431 "$out"
        [[ "$(json_of "$WORK/big.body" '$.error')" == *"larger than 8192 bytes"* ]] ||
            fail "the 431 does not say the limit: $(head -c 300 "$WORK/big.body")"
        ok
    else
        [[ "$out" == 400 || "$out" == 431 || "$out" == 000 ]] ||
            fail "a request with 1 MiB of headers answered $out, expected 400/431 or a closed connection"
        ok
    fi
done
probes "after the oversized heads"

# Every slowloris connection is closed by the deadline (10 s) plus a margin.
slow_done() { [[ "$(find "$WORK" -maxdepth 1 -name 'slow.[0-9]*' | wc -l)" == "$SLOW" ]]; }
POLL_EVERY=0.5 poll_until 40 "$PID" "end of the slowloris connections" slow_done
for ((i = 0; i < SLOW; i++)); do
    s=$(cat "$WORK/slow.$i")
    ((s >= 8 && s <= 16)) || fail "slowloris connection $i lasted $s s, expected about 10 s (the request deadline)"
    ok
done

# ---- 4. runaway queries ---------------------------------------------------------------
RUNAWAY='WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT max(x) FROM c'
t0=$SECONDS
for ((i = 0; i < 12; i++)); do
    curl -s -o "$WORK/run.$i.body" -D "$WORK/run.$i.headers" -w '%{http_code}\n' --max-time 60 \
        -H 'Content-Type: text/plain' --data-binary "$RUNAWAY" \
        "http://127.0.0.1:$PORT/query" >"$WORK/run.$i.code" 2>/dev/null &
    bg_track $!
done
sleep 0.5 # let them all arrive: the first two run for QUERY_TIMEOUT_MS
probes "with 12 runaway queries"
sleep 1
probes "with 12 runaway queries (later)"
wait_codes() { [[ "$(cat "$WORK"/run.*.code 2>/dev/null | wc -w)" == 12 ]]; }
POLL_EVERY=0.5 poll_until 60 "$PID" "the runaway queries to be answered" wait_codes
n408=0 n503=0
for ((i = 0; i < 12; i++)); do
    code=$(cat "$WORK/run.$i.code")
    case $code in
    408) n408=$((n408 + 1)) ;;
    503)
        n503=$((n503 + 1))
        grep -qi '^retry-after: 1' "$WORK/run.$i.headers" || fail "a 503 from /query without Retry-After"
        [[ "$(json_of "$WORK/run.$i.body" '$.error')" == *"too many queries"* ]] ||
            fail "the 503 does not say why: $(cat "$WORK/run.$i.body")"
        ;;
    *) fail "a runaway query answered $code: $(head -c 300 "$WORK/run.$i.body")" ;;
    esac
done
# 8 wait at most, and 2 run once the workers have taken theirs: 2 to 4 of
# the 12 are refused (the workers may not have woken when the last arrive).
((n503 >= 2 && n503 <= 4)) || fail "$n503 of 12 runaway queries got 503, expected 2 to 4 (2 running, 8 waiting)"
ok
assert_eq "runaway queries interrupted with 408" $((12 - n503)) "$n408"
note "12 runaway queries answered in $((SECONDS - t0)) s"

# ---- 5. huge results --------------------------------------------------------------
rss_before=$(peak_rss_kb)
query 'SELECT zeroblob(50000000) AS b'
assert_eq "a 50 MB blob: status" 413 "$CODE"
[[ "$(json_of "$WORK/q.body" '$.error')" == *"--query-max-bytes"* ]] ||
    fail "the 413 does not name --query-max-bytes: $(cat "$WORK/q.body")"
ok
query 'WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 5000) SELECT x, hex(zeroblob(5000)) AS b FROM c'
assert_eq "5,000 rows of 10 kB: status" 413 "$CODE"
probes "after the huge results"
# The peak may grow by the 16 MiB budget and the buffers around it, not by
# the 50 MB results (the unbounded endpoint grew by more than 600 MB).
rss=$(peak_rss_kb)
((rss - rss_before < 100000)) ||
    fail "the daemon's peak RSS grew from $rss_before kB to $rss kB with the huge results (limit +100 MB)"
ok
note "peak RSS $rss_before kB before the huge results, $rss kB after"
# A result under the limit still comes whole.
query 'WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 1000) SELECT x, hex(zeroblob(500)) AS b FROM c'
assert_eq "1,000 rows of 1 kB: status" 200 "$CODE"
assert_eq "1,000 rows of 1 kB: row_count" 1000 "$(json_of "$WORK/q.body" '$.row_count')"

# ---- the state is right, the log is quiet ---------------------------------------------
kill "$HOLD_PID" 2>/dev/null || true
probes "after the holder let go"
assert_eq "orders in the state" $((N_ORDERS + N_LATE)) "$(orders_in "$DB")"
tally_stop "$PID"
cat "$WORK/orders.tsv" "$WORK/late.tsv" >"$WORK/all.tsv"
check_totals "after the abuse" "$WORK/all.tsv" "$DB" "$OUT"
assert_eq "event=snapshot_error lines" "" "$(grep 'event=snapshot_error' "$LOG" | head -n 3)"
assert_eq "libevent accept() errors in the log" 0 "$(grep -c 'Error from accept' "$LOG" || true)"
lines=$(wc -l <"$LOG")
http_lines=$(grep -c 'event=http_\|event=libevent' "$LOG" || true)
secs=$((SECONDS + 1))
((http_lines <= 3 * secs)) || fail "$http_lines http/libevent lines in $secs s: not rate-limited"
ok
grep -q 'event=http_crowded' "$LOG" || fail "no http_crowded line although $HOLD connections were held"
grep -q 'event=http_request_deadline' "$LOG" || fail "no http_request_deadline line after slowloris"
ok
finish "$PROBES probes within $PROBE_MAX_S s; $HOLD connections held, $SLOW slowloris, 12 runaway queries; log $lines lines"
