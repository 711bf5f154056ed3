# tests/lib/tally.sh - helpers for the `tally run` tests against a real
# Kafka broker (source it, do not run it).
# shellcheck shell=bash
#
# Environment (set by tests/CMakeLists.txt; the broker is started by the
# kafka.start fixture with scripts/kafka):
#   TALLY             path to the tally binary (required)
#   KAFKA_BROKERS     bootstrap servers of the test broker (required)
#   KAFKA_PORT        its port, for scripts/kafka (default: from KAFKA_BROKERS)
#   TALLY_SOURCE_DIR  repository root (default: two levels above this file)
#   TALLY_KEEP_WORK   if set, keep the temp dir for inspection
#
# Everything a test creates on the broker is named after RUN_ID (a random
# suffix), so tests and repeated runs never share topics, groups or
# transactional ids. Every tally this library starts is killed on exit.
#
# Provides:
#   $WORK, $RUN_ID, fail, ok, note, assert_eq, assert_files_eq, finish
#   CLEANUP_HOOKS                     functions the exit trap also runs
#   alive PID                         the process exists and is no zombie
#   name SUFFIX                       a unique topic/group/instance name
#   create_topic NAME PARTITIONS      via scripts/kafka topics
#   gen_orders N SEED FIRST TSV       "key|json" order lines on stdout, their
#                                     store/product/event_ms/micros to TSV
#   gen_malformed N TAG               "key|value" lines tally must reject
#   mix FILE... > OUT                 the lines of all FILEs, shuffled
#   produce TOPIC FILE                "key|value" lines to TOPIC (kcat)
#   end_offsets TOPIC                 "partition offset" lines
#   topic_records TOPIC               records in a non-transactional topic
#   expected_windows TSV              expected order_windows rows (awk)
#   tally_start LOG ARGS...           `tally run --pipeline orders` in the
#                                     background; sets TALLY_PID
#   tally_wait_started PID LOG        until the "event=started" log line
#   tally_wait_exit PID SECONDS       sets RC to the exit status
#   tally_stop PID                    SIGTERM, expects exit status 0
#   wait_done DB N_VALID PREFIX N_BAD SECONDS [PID]
#                                     until the state counts N_VALID orders
#                                     and the DLQ holds N_BAD records
#   wait_positions DB TOPIC PREFIX N_BAD SECONDS [PID]
#                                     until the recorded input positions are
#                                     the partition ends, DLQ holds N_BAD
#   sqlval DB SQL, meta DB KEY        a value from the state database
#   dlq_records PREFIX                committed records in PREFIX-dlq
#   state_windows DB                  order_windows rows (tally query)
#   read_topic TOPIC FORMAT           every read_committed record (kcat -f)
#   output_windows TOPIC              latest output value per key, as rows
#   check_totals WHAT TSV DB OUTPUT   state and output == awk, exactly (DB
#                                     "" skips the state)
#   check_dlq PREFIX INPUT BAD_FILE   the DLQ holds each bad line once
#   expect_usage_error WHAT ARGS...   tally run ARGS exits 2 with a message
#   show_logs                         tails of the tally logs (on failure)
#   log_field LINE KEY                the value of KEY=... in a logfmt line
#   db_seq DB                         the last changelog seq the state assigned
#   tally_kill9 PID                   SIGKILL, expects exit status 137
#   wait_snapshot_of DB LOG SECONDS [PID]
#                                     until LOG has an event=snapshot line of
#                                     the database's current seq; sets SNAP_ID
#                                     and SNAP_PATH

set -euo pipefail
export LC_ALL=C

: "${TALLY:?set TALLY to the path of the tally binary}"
: "${KAFKA_BROKERS:?set KAFKA_BROKERS to the test broker (e.g. 127.0.0.1:9092)}"
[[ -x "$TALLY" ]] || { echo "FAIL: TALLY=$TALLY is not executable" >&2; exit 1; }
for _tool in kcat sqlite3 awk shuf timeout; do
    command -v "$_tool" >/dev/null || { echo "FAIL: $_tool is required" >&2; exit 1; }
done
if [[ -z "${KAFKA_PORT:-}" ]]; then
    KAFKA_PORT=${KAFKA_BROKERS##*:}
    KAFKA_PORT=${KAFKA_PORT%%,*}
fi
export KAFKA_PORT KAFKA_BROKERS
TALLY_SOURCE_DIR=${TALLY_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
KAFKA_SCRIPT=$TALLY_SOURCE_DIR/scripts/kafka
[[ -x "$KAFKA_SCRIPT" ]] || { echo "FAIL: $KAFKA_SCRIPT missing" >&2; exit 1; }

# abort() must not leave core files behind.
ulimit -c 0

TEST_NAME=$(basename "$0" .sh)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tally-${TEST_NAME}.XXXXXX")
RUN_ID="$(date +%s)$((RANDOM % 1000))$((RANDOM % 1000))"
WINDOW_MS=60000
CHECKS=0
TALLY_PIDS=()
BG_PIDS=()
TALLY_LOGS=()

# True while the process exists and is not a zombie.
alive() {
    local state
    state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1) || return 1
    [[ -n "$state" && "$state" != Z ]]
}

CLEANUP_HOOKS=()

cleanup() {
    local rc=$? pid hook
    for pid in "${TALLY_PIDS[@]+"${TALLY_PIDS[@]}"}" "${BG_PIDS[@]+"${BG_PIDS[@]}"}"; do
        if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
        wait "$pid" 2>/dev/null || true
    done
    if ((rc != 0)); then show_logs; fi
    for hook in "${CLEANUP_HOOKS[@]+"${CLEANUP_HOOKS[@]}"}"; do
        "$hook" || true
    done
    if [[ -n "${TALLY_KEEP_WORK:-}" ]]; then
        echo "kept $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

fail() {
    printf 'FAIL [%s]: %s\n' "$TEST_NAME" "$*" >&2
    exit 1
}

ok() { CHECKS=$((CHECKS + 1)); }

note() { printf '[%s] %s\n' "$TEST_NAME" "$*" >&2; }

assert_eq() {
    [[ "$2" == "$3" ]] || fail "$1: expected [$2], got [$3]"
    ok
}

# assert_files_eq WHAT EXPECTED_FILE ACTUAL_FILE: shows the first differences.
assert_files_eq() {
    if ! cmp -s "$2" "$3"; then
        printf 'FAIL [%s]: %s differs (expected %s lines, got %s lines); first differences (< expected, > actual):\n' \
            "$TEST_NAME" "$1" "$(wc -l <"$2")" "$(wc -l <"$3")" >&2
        diff "$2" "$3" | head -20 >&2 || true
        exit 1
    fi
    ok
}

show_logs() {
    local log
    for log in "${TALLY_LOGS[@]+"${TALLY_LOGS[@]}"}"; do
        [[ -f "$log" ]] || continue
        printf -- '--- last lines of %s:\n' "$log" >&2
        tail -n 15 "$log" | cut -c1-400 >&2 || true
    done
}

finish() { echo "ok: $TEST_NAME: $CHECKS checks${1:+; $1}"; }

# name SUFFIX: a name no other test or run uses.
name() { echo "tr-${TEST_NAME#test_run_}-$RUN_ID-$1"; }

# ------------------------------------------------------------- topics ---

create_topic() {
    if ! "$KAFKA_SCRIPT" topics --create --topic "$1" --partitions "$2" --replication-factor 1 \
        >"$WORK/topics.out" 2>&1; then
        cat "$WORK/topics.out" >&2
        fail "cannot create topic $1 with scripts/kafka topics"
    fi
}

# produce TOPIC FILE: every "key|value" line of FILE as one record.
produce() {
    local lines
    lines=$(wc -l <"$2")
    if ! timeout 120 kcat -b "$KAFKA_BROKERS" -P -t "$1" -K '|' -l -X acks=all "$2" \
        2>"$WORK/produce.err"; then
        cat "$WORK/produce.err" >&2
        fail "kcat could not produce $lines records to $1"
    fi
    if [[ -s "$WORK/produce.err" ]]; then
        cat "$WORK/produce.err" >&2
        fail "kcat reported errors producing to $1"
    fi
}

# end_offsets TOPIC: "partition offset" per partition (the high watermarks).
end_offsets() {
    local parts p args=()
    parts=$(timeout 30 kcat -b "$KAFKA_BROKERS" -L -t "$1" 2>/dev/null | grep -c '^ *partition ') ||
        fail "no metadata for topic $1"
    for ((p = 0; p < parts; p++)); do args+=(-t "$1:$p:-1"); done
    timeout 30 kcat -b "$KAFKA_BROKERS" -Q "${args[@]}" |
        awk '{ p = $2; gsub(/[][]/, "", p); print p, $4 }' | sort -n
}

# topic_records TOPIC: the number of records in TOPIC (sum of end offsets;
# only for topics written without transactions).
topic_records() { end_offsets "$1" | awk '{ n += $2 } END { printf "%.0f\n", n }'; }

# read_topic TOPIC FORMAT: every committed record of TOPIC, formatted by kcat.
read_topic() {
    timeout 120 kcat -b "$KAFKA_BROKERS" -C -t "$1" -o beginning -e -q \
        -X isolation.level=read_committed -f "$2" ||
        fail "kcat could not read $1"
}

# ---------------------------------------------------------- the data ---

# gen_orders N SEED FIRST_ID TSV > "key|json" lines; appends to TSV, per
# order: store, product, event ms, price micros * qty. 4 stores x 5 products,
# event times over 4 minutes (5 windows of 60 s, not aligned), out of order.
# Prices come as JSON numbers with 2 decimals, decimal strings, integers and
# numbers with 3 decimals. Deterministic (Park-Miller LCG, exact in doubles);
# mawk prints integers above 2^31 wrongly with %d, so those use %.0f.
gen_orders() { orders_awk "$1" "$2" "$3" 4 "$4" order; }

# orders_awk N SEED FIRST STORES TSV KEY: gen_orders' generator over STORES
# stores, each line keyed by the order id (KEY=order) or its storeId
# (KEY=store).
orders_awk() {
    awk -v n="$1" -v seed="$2" -v first="$3" -v stores="$4" -v tsv="$5" -v key_by="$6" '
    function rnd(m) { seed = (seed * 16807) % 2147483647; return seed % m }
    BEGIN {
        base = 1700000000000 + 12345
        for (i = 0; i < n; i++) {
            id = first + i
            s = rnd(stores); p = rnd(5)
            qty = (rnd(50) == 0) ? 1000 : 1 + rnd(20)
            ts = base + rnd(240000)
            kind = rnd(8); cents = rnd(100000)
            if (kind <= 3) {
                micros = cents * 10000; price = sprintf("%d.%02d", int(cents / 100), cents % 100)
            } else if (kind <= 5) {
                micros = cents * 10000; price = sprintf("\"%d.%02d\"", int(cents / 100), cents % 100)
            } else if (kind == 6) {
                micros = int(cents / 100) * 1000000; price = sprintf("%d", int(cents / 100))
            } else {
                mills = rnd(1000000); micros = mills * 1000; price = sprintf("%d.%03d", int(mills / 1000), mills % 1000)
            }
            key = key_by == "store" ? "s" s : "o" id
            printf "%s|{\"orderId\":\"o%d\",\"productId\":\"p%d\",\"storeId\":\"s%d\",\"price\":%s,\"qty\":%d,\"ts\":%.0f}\n", key, id, p, s, price, qty, ts
            printf "s%d\tp%d\t%.0f\t%.0f\n", s, p, ts, micros * qty >> tsv
        }
    }'
}

# gen_malformed N TAG > "key|value" lines that tally must send to the DLQ,
# each one different (TAG and a counter make it unique). Values hold no '|'.
gen_malformed() {
    awk -v n="$1" -v tag="$2" '
    BEGIN {
        for (i = 0; i < n; i++) {
            id = tag "-" i; k = i % 10
            if (k == 0) v = "not json " id
            else if (k == 1) v = "{\"orderId\":\"" id "\",\"productId\":\"p1\",\"storeId\":\"s1\",\"price\":\"abc\",\"qty\":1,\"ts\":1700000000000}"
            else if (k == 2) v = "{\"orderId\":\"" id "\",\"productId\":\"p1\",\"storeId\":\"s1\",\"price\":1.5,\"qty\":0,\"ts\":1700000000000}"
            else if (k == 3) v = "{\"orderId\":\"" id "\",\"productId\":\"p1\",\"storeId\":\"s1\",\"price\":1.5,\"qty\":1001,\"ts\":1700000000000}"
            else if (k == 4) v = "{\"orderId\":\"" id "\",\"productId\":\"p1\",\"storeId\":\"s1\",\"price\":-1.5,\"qty\":1,\"ts\":1700000000000}"
            else if (k == 5) v = "{\"orderId\":\"" id "\",\"productId\":\"p1\",\"price\":1.5,\"qty\":1,\"ts\":1700000000000}"
            else if (k == 6) v = "{\"orderId\":\"" id "\",\"productId\":\"p1\",\"storeId\":\"s1\",\"price\":1.5,\"qty\":1,\"ts\":1700000000000,\"validated\":false}"
            else if (k == 7) v = "{\"orderId\":\"" id "\",\"productId\":\"p1\",\"storeId\":\"s1\",\"price\":1.5,"
            else if (k == 8) v = "[\"" id "\",1,2]"
            else v = "{\"orderId\":\"" id "\",\"productId\":\"p1\",\"storeId\":\"s1\",\"price\":1.5,\"qty\":1}"
            print "bad-" id "|" v
        }
    }'
}

# mix FILE... : all their lines in a random order.
mix() { cat "$@" | shuf; }

# expected_windows TSV: "store product window_start sum count" (tab separated,
# sorted), the sum formatted like the order_windows view: at least two
# decimals, no trailing zeros beyond them.
expected_windows() {
    awk -F'\t' -v w="$WINDOW_MS" '
    function fmt(m,   whole, frac) {
        whole = sprintf("%.0f", (m - m % 1000000) / 1000000)
        frac = sprintf("%06d", m % 1000000)
        while (length(frac) > 2 && substr(frac, length(frac)) == "0") frac = substr(frac, 1, length(frac) - 1)
        return whole "." frac
    }
    {
        k = $1 "\t" $2 "\t" sprintf("%.0f", $3 - ($3 % w))
        sum[k] += $4; cnt[k]++
    }
    END { for (k in sum) printf "%s\t%s\t%d\n", k, fmt(sum[k]), cnt[k] }' "$1" | sort
}

# ------------------------------------------------------------- tally ---

# tally_start LOG ARGS...: starts `tally run --pipeline orders` with ARGS in
# the background, stdout and stderr appended to LOG; sets TALLY_PID.
tally_start() {
    local log=$1
    shift
    "$TALLY" run --pipeline orders --brokers "$KAFKA_BROKERS" "$@" >>"$log" 2>&1 &
    TALLY_PID=$!
    TALLY_PIDS+=("$TALLY_PID")
    TALLY_LOGS+=("$log")
}

# tally_wait_started PID LOG [SECONDS]: until LOG has a new "event=started"
# line (counted from the number of such lines before the start: STARTS_BEFORE,
# default 0). Fails if the process exits first.
tally_wait_started() {
    local pid=$1 log=$2 limit=$((SECONDS + ${3:-60})) before=${STARTS_BEFORE:-0} n
    while :; do
        n=$(grep -c 'event=started' "$log" 2>/dev/null || true)
        ((n > before)) && return 0
        if ! alive "$pid"; then
            tally_wait_exit "$pid" 5
            fail "tally (pid $pid) exited with status $RC before it started; log $log: $(tail -n 3 "$log" | cut -c1-300)"
        fi
        ((SECONDS < limit)) || fail "tally (pid $pid) did not log event=started within ${3:-60} s"
        sleep 0.1
    done
}

# tally_wait_exit PID SECONDS: waits for the process to end, sets RC to its
# exit status (SIGKILL after SECONDS; then RC is 137 and TIMED_OUT=1).
tally_wait_exit() {
    local pid=$1 limit=$((SECONDS + $2))
    TIMED_OUT=0
    while alive "$pid"; do
        if ((SECONDS >= limit)); then
            TIMED_OUT=1
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.1
    done
    if wait "$pid" 2>/dev/null; then RC=0; else RC=$?; fi
}

# tally_stop PID: SIGTERM, then the process must exit 0 within 60 s.
tally_stop() {
    kill -TERM "$1" 2>/dev/null || fail "tally (pid $1) is not running any more"
    tally_wait_exit "$1" 60
    ((TIMED_OUT == 0)) || fail "tally (pid $1) did not exit within 60 s of SIGTERM"
    ((RC == 0)) || fail "tally (pid $1) exited with status $RC after SIGTERM, expected 0"
    ok
}

# sqlval DB SQL: one value from the state database (read only; retries while
# the database is locked or not created yet). Empty if there is none.
sqlval() {
    sqlite3 -batch -readonly -cmd '.timeout 5000' "$1" "$2" 2>/dev/null || true
}

meta() { sqlval "$1" "SELECT value FROM meta WHERE key = '$2'"; }

# dlq_records PREFIX: committed records in the DLQ.
dlq_records() { read_topic "$1-dlq" '%o\n' | wc -l; }

# wait_done DB N_VALID PREFIX N_BAD SECONDS [PID]: waits until the state
# database counts N_VALID orders (SQLite commits after Kafka did, so those are
# committed in Kafka too) and the DLQ holds N_BAD committed records. Fails on
# timeout, on more orders than N_VALID (duplicates), or if PID exits.
wait_done() {
    local db=$1 want=$2 prefix=$3 bad=$4 limit=$((SECONDS + $5)) pid=${6:-} have dlq
    while :; do
        have=$(sqlval "$db" 'SELECT coalesce(sum(count), 0) FROM order_window_state')
        have=${have:-0}
        if ((have > want)); then
            fail "the state counts $have orders, more than the $want produced (duplicates)"
        fi
        if ((have == want)); then
            dlq=$(dlq_records "$prefix")
            ((dlq > bad)) && fail "the DLQ holds $dlq records, more than the $bad malformed lines (duplicates)"
            ((dlq == bad)) && return 0
        fi
        if [[ -n "$pid" ]] && ! alive "$pid"; then
            tally_wait_exit "$pid" 5
            fail "tally (pid $pid) exited with status $RC while consuming ($have of $want orders applied)"
        fi
        ((SECONDS < limit)) || fail "not done within $5 s: the state counts $have of $want orders"
        sleep 0.5
    done
}

# wait_positions DB TOPIC PREFIX N_BAD SECONDS [PID]: waits until the input
# positions SQLite recorded (meta kafka.input.TOPIC.P) are the ends of every
# partition of TOPIC and the DLQ holds N_BAD committed records. For runs whose
# state database did not see every batch (another instance did some).
wait_positions() {
    local db=$1 topic=$2 prefix=$3 bad=$4 limit=$((SECONDS + $5)) pid=${6:-} p end behind dlq
    end_offsets "$topic" >"$WORK/ends"
    while :; do
        behind=0
        while read -r p end; do
            [[ "$(meta "$db" "kafka.input.$topic.$p")" == "$end" ]] || behind=$((behind + 1))
        done <"$WORK/ends"
        if ((behind == 0)); then
            dlq=$(dlq_records "$prefix")
            ((dlq > bad)) && fail "the DLQ holds $dlq records, more than the $bad malformed lines (duplicates)"
            ((dlq == bad)) && return 0
        fi
        if [[ -n "$pid" ]] && ! alive "$pid"; then
            tally_wait_exit "$pid" 5
            fail "tally (pid $pid) exited with status $RC while consuming ($behind partitions behind)"
        fi
        ((SECONDS < limit)) || fail "not done within $5 s: $behind partitions of $topic behind their ends"
        sleep 0.5
    done
}

# check_positions WHAT DB TOPIC: the input positions the database recorded
# (meta kafka.input.TOPIC.P) are the end offsets of every partition of
# TOPIC. For a database whose state is complete and whose group has
# consumed everything: a state rebuilt from a snapshot and the changelog
# must know where its last replayed batches left the input, not where the
# snapshot did.
check_positions() {
    local what=$1 db=$2 topic=$3 p end have
    end_offsets "$topic" >"$WORK/ends.positions"
    while read -r p end; do
        have=$(meta "$db" "kafka.input.$topic.$p")
        [[ "$have" == "$end" ]] ||
            fail "$what: meta kafka.input.$topic.$p is ${have:-missing}, the partition ends at $end"
    done <"$WORK/ends.positions"
    ok
}

# state_windows DB: order_windows as "store product window_start sum count"
# lines (tab separated, sorted), through tally query.
state_windows() {
    timeout 60 "$TALLY" query --db "$1" --format csv \
        'SELECT store_id, product_id, window_start, sum, count FROM order_windows' >"$WORK/query.csv" ||
        fail "tally query on $1 failed"
    tr -d '\r"' <"$WORK/query.csv" | tail -n +2 | tr ',' '\t' | sort
}

# output_windows TOPIC: the latest committed value per key of the output
# topic, as "store product window_start sum count" lines (tab separated,
# sorted). The sum is kept as the exact text of the JSON number. Fails on a
# value that does not parse or does not match its key.
output_windows() {
    read_topic "$1" '%k\t%s\n' >"$WORK/output.raw"
    awk -F'\t' -v out="$WORK/output.latest" '
    function field(v, name,   re, s) {
        re = "\"" name "\":(\"[^\"]*\"|-?[0-9][0-9.eE+-]*)"
        if (!match(v, re)) return "\001"
        s = substr(v, RSTART + length(name) + 3, RLENGTH - length(name) - 3)
        gsub(/"/, "", s)
        return s
    }
    {
        st = field($2, "storeId"); pr = field($2, "productId"); ws = field($2, "windowStart")
        sm = field($2, "sum"); ct = field($2, "count")
        if (st == "\001" || pr == "\001" || ws == "\001" || sm == "\001" || ct == "\001") {
            print "bad output record: " $0 > "/dev/stderr"; bad = 1; exit 1
        }
        if ($1 != st "#" pr "#" ws) {
            print "output key " $1 " does not match its value " $2 > "/dev/stderr"; bad = 1; exit 1
        }
        last[$1] = st "\t" pr "\t" ws "\t" sm "\t" ct
    }
    END { if (!bad) for (k in last) print last[k] > out }' "$WORK/output.raw" ||
        fail "the output topic $1 holds a malformed record"
    [[ -f "$WORK/output.latest" ]] || : >"$WORK/output.latest"
    sort "$WORK/output.latest"
    rm -f "$WORK/output.latest"
}

# total_count FILE: the sum of the count column of window rows.
total_count() { awk -F'\t' '{ n += $5 } END { printf "%.0f\n", n }' "$1"; }

# check_totals WHAT TSV DB OUTPUT_TOPIC: the state database and the latest
# output per key must equal the awk totals of TSV exactly (sum and count).
check_totals() {
    local what=$1 tsv=$2 db=$3 out=$4
    expected_windows "$tsv" >"$WORK/expected.tsv"
    [[ -s "$WORK/expected.tsv" ]] || fail "no expected windows (test bug)"
    output_windows "$out" >"$WORK/actual-output.tsv"
    if ! cmp -s "$WORK/expected.tsv" "$WORK/actual-output.tsv"; then
        note "$what: orders counted by the latest outputs: $(total_count "$WORK/actual-output.tsv"), expected $(total_count "$WORK/expected.tsv")"
    fi
    assert_files_eq "$what: latest output per key vs awk" "$WORK/expected.tsv" "$WORK/actual-output.tsv"
    if [[ -n "$db" ]]; then
        state_windows "$db" >"$WORK/actual-state.tsv"
        if ! cmp -s "$WORK/expected.tsv" "$WORK/actual-state.tsv"; then
            note "$what: orders counted by SQLite: $(total_count "$WORK/actual-state.tsv"), expected $(total_count "$WORK/expected.tsv")"
        fi
        assert_files_eq "$what: SQLite order_windows vs awk" "$WORK/expected.tsv" "$WORK/actual-state.tsv"
    fi
}

# check_dlq PREFIX INPUT_TOPIC BAD_FILE: the DLQ (read_committed) holds the
# value of each line of BAD_FILE exactly once, each with a tally.error header
# and tally.topic = INPUT_TOPIC.
check_dlq() {
    local prefix=$1 input=$2 bad=$3 n
    cut -d'|' -f2- "$bad" | sort >"$WORK/dlq.expected"
    read_topic "$prefix-dlq" '%s\n' | sort >"$WORK/dlq.actual"
    assert_files_eq "DLQ values (multiset) vs the malformed lines" "$WORK/dlq.expected" "$WORK/dlq.actual"
    read_topic "$prefix-dlq" '%h\n' >"$WORK/dlq.headers"
    n=$(wc -l <"$bad")
    assert_eq "DLQ records with a tally.error header" "$n" "$(grep -c 'tally\.error=.' "$WORK/dlq.headers" || true)"
    assert_eq "DLQ records with tally.topic=$input" "$n" "$(grep -cF "tally.topic=$input" "$WORK/dlq.headers" || true)"
    assert_eq "DLQ records with tally.partition and tally.offset" "$n" \
        "$(grep -cE 'tally\.partition=[0-9]+.*tally\.offset=[0-9]+' "$WORK/dlq.headers" || true)"
}

# expect_usage_error WHAT ARGS...: `tally run ARGS` (KAFKA_BROKERS unset)
# must exit 2 with a message on stderr, quickly and without a broker.
expect_usage_error() {
    local what=$1 rc=0
    shift
    env -u KAFKA_BROKERS timeout 20 "$TALLY" run "$@" >"$WORK/usage.out" 2>"$WORK/usage.err" || rc=$?
    [[ "$rc" == 2 ]] || fail "$what: expected exit status 2, got $rc; stderr: $(head -c 300 "$WORK/usage.err")"
    [[ -s "$WORK/usage.err" ]] || fail "$what: no message on stderr"
    ok
}

# ---------------------------------------------------------- recovery ---

# log_field LINE KEY: the value of KEY=VALUE in a logfmt LINE (unquoted
# values only); empty when the line has no such key.
log_field() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<"$1"; }

# db_seq DB: the last changelog seq the state database assigned (0: none).
db_seq() {
    local seq
    seq=$(sqlval "$1" "SELECT seq FROM sqlite_sequence WHERE name = 'changelog'")
    echo "${seq:-0}"
}

# tally_kill9 PID: SIGKILL; the process must die with status 137.
tally_kill9() {
    alive "$1" || fail "tally (pid $1) is not running any more, cannot kill it"
    kill -KILL "$1"
    tally_wait_exit "$1" 10
    assert_eq "exit status after kill -9 (pid $1)" 137 "$RC"
}

# wait_snapshot_of DB LOG SECONDS [PID]: waits until LOG has an
# "event=snapshot" line whose last_seq is the database's current seq (call it
# once the state stopped changing). Sets SNAP_ID and SNAP_PATH.
wait_snapshot_of() {
    local db=$1 log=$2 limit=$((SECONDS + $3)) pid=${4:-} seq line
    while :; do
        seq=$(db_seq "$db")
        line=$(grep "event=snapshot .*last_seq=$seq " "$log" | tail -n 1 || true)
        if [[ -n "$line" && "$seq" != 0 ]]; then
            SNAP_ID=$(log_field "$line" snapshot)
            SNAP_PATH=$(log_field "$line" path)
            [[ -n "$SNAP_ID" && -f "$SNAP_PATH" ]] || fail "snapshot line names no existing file: $line"
            return 0
        fi
        if [[ -n "$pid" ]] && ! alive "$pid"; then
            tally_wait_exit "$pid" 5
            fail "tally (pid $pid) exited with status $RC before it took a snapshot of seq $seq"
        fi
        ((SECONDS < limit)) || fail "no snapshot of seq $seq in $log within $3 s"
        sleep 0.2
    done
}

# ---------------------------------------------------------- telemetry ---

# gen_readings N SEED > "VIN|json" lines: N telemetry readings for 25 vehicles
# x 6 sensors; received_at is a permutation of 1..N (no ties) plus a base, so
# arrival order says nothing about recency; one or two sensors per reading.
gen_readings() {
    awk -v n="$1" -v seed="$2" 'BEGIN {
        srand(seed)
        for (i = 1; i <= n; i++) t[i] = i
        for (i = n; i > 1; i--) { j = int(rand() * i) + 1; x = t[i]; t[i] = t[j]; t[j] = x }
        split("battery,door,fuel,gear,speed,temp", names, ",")
        for (i = 1; i <= n; i++) {
            vin = sprintf("VIN%03d", int(rand() * 25))
            at = 1700000000000 + t[i]
            s1 = names[int(rand() * 6) + 1]
            v1 = (s1 == "door") ? (rand() < 0.5 ? "\"open\"" : "\"closed\"") : sprintf("%d.%d", int(rand() * 200), i % 10)
            data = sprintf("\"id\":\"%s\",\"%s\":%s", vin, s1, v1)
            if (rand() < 0.3) {
                s2 = names[int(rand() * 6) + 1]
                if (s2 != s1) {
                    v2 = (s2 == "door") ? "\"open\"" : sprintf("%d", i)
                    data = data sprintf(",\"%s\":%s", s2, v2)
                }
            }
            printf "%s|{\"data\":{%s},\"received_at\":%.0f,\"produced_at\":%.0f}\n", vin, data, at, at - 5
        }
    }'
}

# expected_latest READINGS.kv > "VIN<TAB>record" lines, sorted: per sensor
# the value with the newest received_at, sensors in name order, received_at
# and produced_at the newest of the winning readings.
expected_latest() {
    sed 's/^[^|]*|//' "$1" | awk '
    {
        line = $0
        # timestamps stay strings: mawk prints numbers above 2^31 as 1.7e+12
        match(line, /"received_at":[0-9]+/); at_s = substr(line, RSTART + 14, RLENGTH - 14); at = at_s + 0
        match(line, /"produced_at":[0-9]+/); pr_s = substr(line, RSTART + 14, RLENGTH - 14)
        match(line, /"data":\{[^}]*\}/); data = substr(line, RSTART + 8, RLENGTH - 9)
        n = split(data, parts, ",")
        split(parts[1], idkv, ":"); vin = idkv[2]; gsub(/"/, "", vin)
        for (k = 2; k <= n; k++) {
            split(parts[k], kv, ":"); s = kv[1]; gsub(/"/, "", s)
            key = vin SUBSEP s
            if (!(key in best) || at > best[key]) { best[key] = at; at_str[key] = at_s; val[key] = kv[2]; prod[key] = pr_s }
        }
    }
    END {
        for (key in best) {
            split(key, vk, SUBSEP); print vk[1] "\t" vk[2] "\t" val[key] "\t" at_str[key] "\t" prod[key]
        }
    }' | sort -t $'\t' -k1,1 -k2,2 | awk -F'\t' '
    function flush() {
        if (vin != "") printf "%s\t{\"data\":{\"id\":\"%s\"%s},\"received_at\":%s,\"produced_at\":%s}\n", vin, vin, body, maxat_s, maxpr_s
    }
    $1 != vin { flush(); vin = $1; body = ""; maxat = 0; maxpr = 0 }
    {
        body = body ",\"" $2 "\":" $3
        if ($4 + 0 > maxat) { maxat = $4 + 0; maxat_s = $4 }
        if ($5 + 0 > maxpr) { maxpr = $5 + 0; maxpr_s = $5 }
    }
    END { flush() }'
}

# latest_outputs TOPIC SINCE_MS > "VIN<TAB>record" lines, sorted: the latest
# committed output per VIN with its produced_at removed, after checking that
# each produced_at is an emit time in [SINCE_MS, now]. The latest is the one
# emitted last (the greatest produced_at; on a tie, the later in a
# partition): a packed message (--batch-size) is keyed by its first record,
# so one VIN's records can sit in several partitions, whose order kcat does
# not keep.
latest_outputs() {
    local now
    read_topic "$1" '%k\t%s\n' | unpack_records | awk -F'\t' '
        { at = match($2, /"produced_at":[0-9]+}$/) ? substr($2, RSTART + 14, RLENGTH - 15) + 0 : -1
          if (!($1 in latest) || at >= when[$1]) { latest[$1] = $2; when[$1] = at } }
        END { for (k in latest) print k "\t" latest[k] }' |
        sort >"$WORK/latest_raw.tsv"
    now=$(date +%s%3N)
    awk -F'\t' -v lo="$2" -v hi="$now" '
        !match($2, /"produced_at":[0-9]+}$/) { print "no produced_at last: " $0 > "/dev/stderr"; bad = 1; next }
        { t = substr($2, RSTART + 14, RLENGTH - 15) + 0
          if (t < lo + 0 || t > hi + 0) { print "produced_at " t " not in [" lo ", " hi "]: " $0 > "/dev/stderr"; bad = 1 } }
        END { exit bad }' "$WORK/latest_raw.tsv" || fail "an output record's produced_at is not its emit time"
    without_produced_at "$WORK/latest_raw.tsv"
}

# unpack_records: "key<TAB>value" lines in, one "VIN<TAB>record" line per
# record out: a packed message (--batch-size > 1, a JSON array of records)
# becomes its records, in order, each keyed by its own data.id.
unpack_records() {
    awk -F'\t' '
        substr($2, 1, 1) != "[" { print; next }
        {
            v = substr($2, 2, length($2) - 2)
            gsub(/\},\{"data":/, "}\001{\"data\":", v)
            n = split(v, recs, "\001")
            for (i = 1; i <= n; i++) {
                if (!match(recs[i], /^\{"data":\{"id":"[^"]*"/)) { print "not a record: " recs[i] > "/dev/stderr"; exit 1 }
                print substr(recs[i], 16, RLENGTH - 16) "\t" recs[i]
            }
        }'
}

# without_produced_at FILE: the records of FILE with their produced_at removed.
without_produced_at() { sed -E 's/,"produced_at":[0-9]+\}$/}/' "$1"; }

# ----------------------------------------------------------- metrics ---

# free_port: a loopback port nothing listens on, below the ephemeral range,
# never one of the brokers' ports nor tally's default.
free_port() {
    local base p i
    base=$((20000 + (RANDOM * 32768 + RANDOM) % 12000))
    for ((i = 0; i < 500; i++)); do
        p=$((base + i))
        case $p in 9092 | 9392 | 9464 | 19092 | 29092 | 39092 | "$KAFKA_PORT" | $((KAFKA_PORT + 1))) continue ;; esac
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    fail "no free loopback port from $base on"
}

# metric FILE NAME: the value of the sample NAME{...} in a /metrics scrape (one
# series; empty if there is none).
metric() { awk -v n="$2" 'index($0, n "{") == 1 || index($0, n " ") == 1 { print $NF; exit }' "$1"; }

# ------------------------------------------------------- secured mode ---

# kafka_tls_dir: sets TLS_DIR to where scripts/kafka (KAFKA_SECURE=1) put
# the CA, the client certificate and the librdkafka properties files of its
# secured listeners.
kafka_tls_dir() {
    TLS_DIR=${KAFKA_DATA_DIR:-${TMPDIR:-/tmp}/tally-kafka-$KAFKA_PORT}/tls
    [[ -f "$TLS_DIR/sasl-scram.properties" ]] ||
        fail "the test broker has no secured listeners ($TLS_DIR/sasl-scram.properties missing; start it with KAFKA_SECURE=1)"
}

# secret_of FILE: the sasl.password (or ssl.key.password) a properties file holds.
secret_of() { sed -n 's/^\(sasl\|ssl\.key\)\.password=//p' "$1" | head -n 1; }

# ---------------------------------------------------------- scale-out ---
#
#   gen_orders_by_store N SEED FIRST STORES TSV
#                                     like gen_orders, keyed by storeId
#   begin_offsets TOPIC               "partition offset" (low watermarks)
#   held_partitions DB                the partitions table, comma separated
#   counters_records PREFIX > FILE    the tally.counters records of the
#                                     changelog, one tab separated line each
#   counters_behind PREFIX INPUT      partitions whose counters chain does
#                                     not reach the input's end offset yet
#   check_counters_chain PREFIX INPUT each changelog partition's counters
#                                     chain covers its input partition once
#   open_transactions TOPIC P...      partitions with records of a
#                                     transaction still open

# gen_orders_by_store N SEED FIRST_ID STORES TSV > "storeId|json" lines; the
# orders of gen_orders (same fields, prices, event times; TSV in the same
# form) over STORES stores, keyed by storeId: every window of a store is then
# fed by one input partition, as scale-out requires.
gen_orders_by_store() { orders_awk "$1" "$2" "$3" "$4" "$5" store; }

# begin_offsets TOPIC: "partition offset" per partition (the low watermarks).
begin_offsets() {
    local parts p args=()
    parts=$(timeout 30 kcat -b "$KAFKA_BROKERS" -L -t "$1" 2>/dev/null | grep -c '^ *partition ') ||
        fail "no metadata for topic $1"
    for ((p = 0; p < parts; p++)); do args+=(-t "$1:$p:-2"); done
    timeout 30 kcat -b "$KAFKA_BROKERS" -Q "${args[@]}" |
        awk '{ p = $2; gsub(/[][]/, "", p); print p, $4 }' | sort -n
}

# held_partitions DB: the partitions the instance holds (its partitions
# table), "0,3" (empty: none, or no table yet).
held_partitions() { sqlval "$1" 'SELECT group_concat(part) FROM (SELECT part FROM partitions ORDER BY part)'; }

# counters_records PREFIX > lines of the per-partition "tally.counters"
# records in PREFIX-changelog (read_committed), sorted by changelog partition
# and offset: "changelog_partition offset part from to applied rejected
# skipped late instance key" (tab separated). Fails on a counters record that
# lacks one of these fields.
counters_records() {
    read_topic "$1-changelog" '%p\t%o\t%s\n' >"$WORK/changelog.raw"
    awk -F'\t' '
        function num(re,   s) {
            if (!match($3, re)) { bad = 1; return "" }
            s = substr($3, RSTART, RLENGTH); sub(/^.*[":\[]/, "", s); return s
        }
        index($3, "\"entity\":\"tally.counters\"") && index($3, "\"key\":\"pipeline.orders.p") {
            bad = 0
            part = num("\"part\":[0-9]+")
            if (match($3, /"input":\[[0-9]+,[0-9]+\]/)) {
                split(substr($3, RSTART + 9, RLENGTH - 10), io, ","); from = io[1]; to = io[2]
            } else bad = 1
            applied = num("\\.events_applied\":[0-9]+"); rejected = num("\\.events_rejected\":[0-9]+")
            skipped = num("\\.events_skipped\":[0-9]+"); late = num("\\.events_late\":[0-9]+")
            if (match($3, /"instance":"[^"]*"/)) inst = substr($3, RSTART + 12, RLENGTH - 13); else bad = 1
            if (match($3, /"key":"[^"]*"/)) key = substr($3, RSTART + 7, RLENGTH - 8); else bad = 1
            if (bad) { print "malformed counters record at " $1 "/" $2 ": " $3 > "/dev/stderr"; exit 1 }
            print $1 "\t" $2 "\t" part "\t" from "\t" to "\t" applied "\t" rejected "\t" skipped "\t" late "\t" inst "\t" key
        }' "$WORK/changelog.raw" >"$WORK/counters.unsorted" ||
        fail "$1-changelog holds a malformed tally.counters record"
    sort -t$'\t' -k1,1n -k2,2n "$WORK/counters.unsorted"
}

# counters_behind PREFIX INPUT: the partitions of INPUT whose last committed
# counters record does not end at the partition's end offset, as "p:to/end"
# words (empty once every record of INPUT is committed work).
counters_behind() {
    end_offsets "$2" >"$WORK/ends.behind"
    counters_records "$1" >"$WORK/counters.behind"
    awk -F'\t' 'NR == FNR { last[$1] = $5; next }
        { split($0, e, " "); to = (e[1] in last) ? last[e[1]] : 0
          if (to != e[2]) printf "%s:%s/%s ", e[1], to, e[2] }' \
        "$WORK/counters.behind" "$WORK/ends.behind"
}

# check_counters_chain PREFIX INPUT: for every partition N of INPUT, the
# counters records of PREFIX-changelog partition N (read_committed) are about
# N (key pipeline.orders.pN, part N) and their input ranges [FROM,TO) chain
# without gap or overlap from N's first offset to its end offset; each
# record's applied + rejected grows by exactly its range's length (skipped and
# late stay 0: orders), so the last one counts every record of N once. Two
# instances that both committed work on N would overlap; work lost would
# leave a gap. Leaves "part batches records instances" lines in
# $WORK/chain.summary.
check_counters_chain() {
    local prefix=$1 input=$2
    begin_offsets "$input" >"$WORK/chain.begin"
    end_offsets "$input" >"$WORK/chain.end"
    counters_records "$prefix" >"$WORK/chain.counters"
    [[ -s "$WORK/chain.counters" ]] || fail "$prefix-changelog holds no per-partition tally.counters records"
    awk -F'\t' -v bf="$WORK/chain.begin" -v ef="$WORK/chain.end" -v summary="$WORK/chain.summary" '
    BEGIN {
        while ((getline l < bf) > 0) { split(l, a, " "); begin[a[1]] = a[2]; parts[a[1]] = 1 }
        while ((getline l < ef) > 0) { split(l, a, " "); end[a[1]] = a[2] }
    }
    function err(m) { print "counters chain, changelog partition " $1 " offset " $2 ": " m > "/dev/stderr"; bad = 1 }
    {
        p = $1
        if (!(p in parts)) { err("no such input partition"); next }
        if ($3 != p) err("part " $3 " in changelog partition " p)
        if ($11 != "pipeline.orders.p" p) err("key " $11)
        prev = (p in to) ? to[p] : begin[p]
        if ($4 + 0 != prev + 0) err(($4 + 0 < prev + 0 ? "overlap" : "gap") ": input [" $4 "," $5 ") after " prev " (instance " $10 ")")
        if ($5 + 0 <= $4 + 0) err("empty or reversed range [" $4 "," $5 ")")
        done = $6 + $7
        if (done - ((p in sum) ? sum[p] : 0) != $5 - $4)
            err("applied+rejected went from " ((p in sum) ? sum[p] : 0) " to " done " over [" $4 "," $5 ")")
        if ($8 != 0 || $9 != 0) err("skipped " $8 ", late " $9)
        to[p] = $5; sum[p] = done; batches[p]++
        if (index(" " insts[p] " ", " " $10 " ") == 0) insts[p] = insts[p] (insts[p] == "" ? "" : " ") $10
    }
    END {
        for (p in parts) {
            last = (p in to) ? to[p] : begin[p]
            if (last != end[p]) { print "counters chain of partition " p " ends at " last ", the input ends at " end[p] > "/dev/stderr"; bad = 1 }
            if ((sum[p] + 0) != end[p] - begin[p]) { print "partition " p ": last counters applied+rejected " sum[p] + 0 ", the input holds " end[p] - begin[p] > "/dev/stderr"; bad = 1 }
            printf "%s %d %d %s\n", p, batches[p], end[p] - begin[p], insts[p] > summary
        }
        exit bad
    }' "$WORK/chain.counters" || fail "the tally.counters chains of $prefix-changelog do not cover $input exactly once"
    ok
}

# open_transactions TOPIC PARTITION...: those PARTITIONs of TOPIC that hold
# records of a transaction still open: their read_committed end (the last
# stable offset) is below their high watermark.
open_transactions() {
    local topic=$1 p args=()
    shift
    for p in "$@"; do args+=(-t "$topic:$p:-1"); done
    paste -d' ' \
        <(timeout 30 kcat -b "$KAFKA_BROKERS" -Q -X isolation.level=read_committed "${args[@]}" 2>/dev/null |
            awk '{ p = $2; gsub(/[][]/, "", p); print p, $4 }' | sort -n) \
        <(timeout 30 kcat -b "$KAFKA_BROKERS" -Q -X isolation.level=read_uncommitted "${args[@]}" 2>/dev/null |
            awk '{ p = $2; gsub(/[][]/, "", p); print p, $4 }' | sort -n) |
        awk '$1 == $3 && $2 < $4 { print $1 }'
}
