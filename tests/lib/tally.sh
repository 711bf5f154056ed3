# tests/lib/tally.sh - starting, waiting for and stopping `tally` processes
# against the test broker, reading their state, and checking it exactly
# against awk (source it, do not run it; it sources assert.sh, kafka.sh and
# data.sh, so a test sources this file only).
# shellcheck shell=bash
#
# Environment: see assert.sh and kafka.sh. Every process started here is
# killed on exit, and the tails of its log are shown if the test fails.
#
# Provides:
#   new_stream DB_FILE [N]            stream_names N; DB (in STATE) and LOG
#   tally_bg LOG ARGS...              `tally ARGS` in the background, output
#                                     appended to LOG; sets TALLY_PID
#   tally_start LOG ARGS...           `tally run --pipeline orders` likewise
#   next_run ARGS...                  tally_start with a log of its own
#                                     ($WORK/runN.log in LOG; RUN counts)
#   next_run_started ARGS...          next_run, until started; sets RECOVERED
#   tally_wait_started PID LOG [SECONDS]
#                                     until LOG has a new event=started line
#   started_since LOG N               LOG has more than N event=started lines
#   tally_wait_exit PID SECONDS       sets RC to the exit status
#   alive_or_fail PID WHAT            fails if the process has exited
#   poll_until SECONDS PID WHAT CHECK...
#                                     until CHECK succeeds, PID alive
#   tally_stop PID                    SIGTERM, expects exit status 0
#   tally_kill9 PID                   SIGKILL, expects exit status 137
#   random_pause MIN MAX              a random number of seconds in [MIN, MAX]
#   kill9_loop KILLS WIPE_AFTER DB SQL MIN MAX START...
#                                     START, a pause, SIGKILL, KILLS times
#   sqlval DB SQL                     a value from the state database
#   meta DB KEY                       a value of its meta table
#   meta_sum DB KEY...                the sum of meta values (0: none)
#   orders_in DB                      orders the state counts
#   orders_above DB N                 the state counts more than N orders
#   db_seq DB                         the last changelog seq the state assigned
#   log_field LINE KEY                the value of KEY=... in a logfmt line
#   dlq_records PREFIX                committed records in PREFIX-dlq
#   dlq_reached PREFIX N_BAD          the DLQ holds N_BAD records (fails on more)
#   wait_done DB N_VALID PREFIX N_BAD SECONDS [PID]
#                                     until the state counts N_VALID orders
#                                     and the DLQ holds N_BAD records
#   orders_done DB N_VALID PREFIX N_BAD
#                                     wait_done's check
#   wait_positions DB TOPIC PREFIX N_BAD SECONDS [PID]
#                                     until the recorded input positions are
#                                     the partition ends, DLQ holds N_BAD
#   positions_done DB TOPIC PREFIX N_BAD
#                                     wait_positions' check
#   wait_total DB SQL N PREFIX N_BAD SECONDS [PID]
#                                     until SQL (one number) on DB is N and
#                                     the DLQ holds N_BAD records (any
#                                     pipeline; fails on more of either)
#   total_done DB SQL N PREFIX N_BAD  wait_total's check
#   wait_orders DB N SECONDS PID [WHAT]
#                                     until the state counts N orders
#   orders_counted DB N [PREFIX]      wait_orders' check
#   wait_meta DB N SECONDS PID KEY... until the meta KEYs add up to N or more
#   meta_reached DB N KEY...          wait_meta's check
#   check_positions WHAT DB TOPIC     the recorded input positions are the ends
#   wait_snapshot_of DB LOG SECONDS [PID]
#                                     until LOG has an event=snapshot line of
#                                     the database's current seq; sets SNAP_ID
#                                     and SNAP_PATH
#   snapshot_of DB LOG                wait_snapshot_of's check
#   state_windows DB                  order_windows rows (tally query)
#   output_windows TOPIC              latest output value per key, as rows
#   check_totals WHAT TSV DB OUTPUT   state and output == awk, exactly (DB
#                                     "" skips the state)
#   check_dlq PREFIX INPUT BAD_FILE   the DLQ holds each bad line once
#   check_dlq_set PREFIX BAD_FILE     the DLQ holds each bad line, repeats
#                                     allowed, nothing else
#   check_dlq_reasons PREFIX REASONS  each DLQ record's tally.error starts
#                                     with the reason REASONS gives its value
#   output_latest TOPIC               the latest committed "key<TAB>value"
#                                     per key, sorted (each key in one
#                                     partition)
#   input_counts TOPIC                "partition valid malformed" per
#                                     partition (malformed: keys bad-*)
#   partition_counters DB PIPELINE P...
#                                     "partition applied rejected" of each P,
#                                     from the database's meta
#   check_row_parts WHAT DB SQL INPUT each "part<TAB>key" row of SQL names
#                                     the partition of INPUT that key was
#                                     produced to
#   expect_usage_error WHAT ARGS...   tally run ARGS exits 2 with a message
#   latest_outputs TOPIC SINCE_MS     the latest telemetry output per VIN
#   vehicle_latest DB                 the state's latest record per VIN
#   check_latest WHAT TOPIC SINCE_MS EXPECTED DB
#                                     output and state == awk, exactly
#   metric FILE NAME                  a sample's value in a /metrics scrape
#   held_partitions DB                the partitions table, comma separated
#   counters_records PREFIX [PIPELINE] > FILE
#                                     the tally.counters records of the
#                                     changelog, one tab separated line each
#   counters_behind PREFIX INPUT [PIPELINE]
#                                     partitions whose counters chain does
#                                     not reach the input's end offset yet
#   check_counters_chain PREFIX INPUT [PIPELINE]
#                                     each changelog partition's counters
#                                     chain covers its input partition once
#                                     (PIPELINE: orders unless given)

[[ -z "${TALLY_LIB_TALLY:-}" ]] || return 0
TALLY_LIB_TALLY=1

# shellcheck source=assert.sh
source "$(dirname "${BASH_SOURCE[0]}")/assert.sh"
# shellcheck source=kafka.sh
source "$(dirname "${BASH_SOURCE[0]}")/kafka.sh"
# shellcheck source=data.sh
source "$(dirname "${BASH_SOURCE[0]}")/data.sh"

declare -A STARTED_BEFORE=()
RUN=0

# ---------------------------------------------------------- processes ---

# new_stream DB_FILE [N]: stream_names N (kafka.sh), and the stream's
# database DB=$STATE/DB_FILE and log LOG=$WORK/tallyN.log.
new_stream() {
    stream_names "${2:-}"
    DB=$STATE/$1
    LOG=$WORK/tally${2:-}.log
}

# tally_bg LOG ARGS...: `tally ARGS` in the background, stdout and stderr
# appended to LOG; sets TALLY_PID. Remembers how many event=started lines LOG
# held before, for tally_wait_started.
tally_bg() {
    local log=$1 before
    shift
    before=$(grep -c 'event=started' "$log" 2>/dev/null || true)
    "$TALLY" "$@" >>"$log" 2>&1 &
    TALLY_PID=$!
    STARTED_BEFORE[$TALLY_PID]=${before:-0}
    bg_track "$TALLY_PID" "$log"
}

# tally_start LOG ARGS...: starts `tally run --pipeline orders` with ARGS in
# the background (a later --pipeline in ARGS wins); sets TALLY_PID.
tally_start() {
    local log=$1
    shift
    tally_bg "$log" run --pipeline orders --brokers "$KAFKA_BROKERS" "$@"
}

# next_run ARGS...: tally_start with ARGS and a log of its own, LOG =
# $WORK/runN.log (RUN counts the runs).
next_run() {
    RUN=$((RUN + 1))
    LOG=$WORK/run$RUN.log
    tally_start "$LOG" "$@"
}

# next_run_started ARGS...: next_run, then waits for event=started and sets
# RECOVERED to its event=recovered line.
next_run_started() {
    next_run "$@"
    tally_wait_started "$TALLY_PID" "$LOG"
    RECOVERED=$(grep -m1 'event=recovered ' "$LOG" || true)
    [[ -n "$RECOVERED" ]] || fail "run $RUN: no event=recovered line before event=started"
}

# tally_wait_started PID LOG [SECONDS]: until LOG has a new "event=started"
# line (more than it held when tally_bg started PID). Fails if the process
# exits first, or after SECONDS (60).
tally_wait_started() {
    POLL_EVERY=0.1 poll_until "${3:-60}" "$1" "tally (pid $1) logging event=started in $2" \
        started_since "$2" "${STARTED_BEFORE[$1]:-0}"
}

# started_since LOG N: LOG holds more than N event=started lines.
started_since() {
    local n
    n=$(grep -c 'event=started' "$1" 2>/dev/null || true)
    ((${n:-0} > $2))
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

# alive_or_fail PID WHAT: fails (with the exit status) if the process has
# exited; WHAT says when.
alive_or_fail() {
    alive "$1" && return 0
    tally_wait_exit "$1" 5
    fail "tally (pid $1) exited with status $RC $2"
}

# poll_until SECONDS PID WHAT CHECK...: runs the command CHECK every
# POLL_EVERY (0.2) s until it succeeds. Fails after SECONDS, or as soon as
# the process PID (unless "") has exited. CHECK may set POLL_STATE to say how
# far it got, for the failure message; it may fail the test itself.
poll_until() {
    local secs=$1 pid=$2 what=$3 limit=$((SECONDS + $1))
    shift 3
    POLL_STATE=""
    until "$@"; do
        [[ -z "$pid" ]] || alive_or_fail "$pid" "while waiting for $what${POLL_STATE:+ ($POLL_STATE)}"
        ((SECONDS < limit)) || fail "no $what within $secs s${POLL_STATE:+ ($POLL_STATE)}"
        sleep "${POLL_EVERY:-0.2}"
    done
}

# tally_stop PID: SIGTERM, then the process must exit 0 within 60 s.
tally_stop() {
    kill -TERM "$1" 2>/dev/null || fail "tally (pid $1) is not running any more"
    tally_wait_exit "$1" 60
    ((TIMED_OUT == 0)) || fail "tally (pid $1) did not exit within 60 s of SIGTERM"
    ((RC == 0)) || fail "tally (pid $1) exited with status $RC after SIGTERM, expected 0"
    ok
}

# tally_kill9 PID: SIGKILL; the process must die with status 137.
tally_kill9() {
    alive "$1" || fail "tally (pid $1) is not running any more, cannot kill it"
    kill -KILL "$1"
    tally_wait_exit "$1" 10
    assert_eq "exit status after kill -9 (pid $1)" 137 "$RC"
}

# random_pause MIN MAX: a random number of seconds from MIN to MAX (steps of
# 1 ms, printed with 2 decimals).
random_pause() {
    awk -v r="$RANDOM" -v lo="$1" -v hi="$2" 'BEGIN { printf "%.2f", lo + (r % (int((hi - lo) * 1000 + 0.5) + 1)) / 1000 }'
}

# kill9_loop KILLS WIPE_AFTER DB SQL MIN MAX START...: KILLS times: the
# command START (it starts one tally in the background: TALLY_PID), a random
# pause of MIN to MAX s (startup, recovery, batches, snapshots: whatever it
# is doing then), SIGKILL (exit status 137). After the kills listed in
# WIPE_AFTER (" 4 8 ") the directory of DB is deleted. SQL (one number) is
# read from DB before each start and after each kill; MOVED counts the kills
# after which it had changed.
kill9_loop() {
    local kills=$1 wipe=$2 db=$3 sql=$4 min=$5 max=$6 k pause before after
    shift 6
    MOVED=0
    for ((k = 1; k <= kills; k++)); do
        before=$(sqlval "$db" "$sql")
        "$@"
        pause=$(random_pause "$min" "$max")
        sleep "$pause"
        alive_or_fail "$TALLY_PID" "by itself before kill $k"
        tally_kill9 "$TALLY_PID"
        after=$(sqlval "$db" "$sql")
        if [[ "${after:-0}" != "${before:-0}" ]]; then MOVED=$((MOVED + 1)); fi
        note "kill $k after ${pause}s: [$sql] ${before:-0} before, ${after:-0} after"
        if [[ "$wipe" == *" $k "* ]]; then
            rm -rf "$(dirname "$db")"
            note "kill $k: state directory deleted"
        fi
    done
}

# -------------------------------------------------------------- state ---

# sqlval DB SQL: one value from the state database (read only; retries while
# the database is locked or not created yet). Empty if there is none.
sqlval() {
    sqlite3 -batch -readonly -cmd '.timeout 5000' "$1" "$2" 2>/dev/null || true
}

meta() { sqlval "$1" "SELECT value FROM meta WHERE key = '$2'"; }

# meta_sum DB KEY...: the sum of those meta values (0 when there are none).
meta_sum() {
    local db=$1 keys v
    shift
    keys=$(printf "'%s'," "$@")
    v=$(sqlval "$db" "SELECT coalesce(sum(value), 0) FROM meta WHERE key IN (${keys%,})")
    echo "${v:-0}"
}

# orders_in DB: the orders the state counts (0: none, or no database yet).
orders_in() {
    local n
    n=$(sqlval "$1" 'SELECT coalesce(sum(count), 0) FROM order_window_state')
    echo "${n:-0}"
}

# orders_above DB N: the state counts more than N orders.
orders_above() { (($(orders_in "$1") > $2)); }

# db_seq DB: the last changelog seq the state database assigned (0: none).
db_seq() {
    local seq
    seq=$(sqlval "$1" "SELECT seq FROM sqlite_sequence WHERE name = 'changelog'")
    echo "${seq:-0}"
}

# log_field LINE KEY: the value of KEY=VALUE in a logfmt LINE (unquoted
# values only); empty when the line has no such key.
log_field() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<"$1"; }

# dlq_records PREFIX: committed records in the DLQ.
dlq_records() { read_topic "$1-dlq" '%o\n' | wc -l; }

# dlq_reached PREFIX N_BAD: the DLQ holds N_BAD committed records (fails on
# more: duplicates).
dlq_reached() {
    local dlq
    dlq=$(dlq_records "$1")
    ((dlq <= $2)) || fail "the DLQ holds $dlq records, more than the $2 malformed lines (duplicates)"
    ((dlq == $2))
}

# wait_done DB N_VALID PREFIX N_BAD SECONDS [PID]: waits until the state
# database counts N_VALID orders (SQLite commits after Kafka did, so those are
# committed in Kafka too) and the DLQ holds N_BAD committed records. Fails on
# timeout, on more orders than N_VALID (duplicates), or if PID exits.
wait_done() {
    POLL_EVERY=0.5 poll_until "$5" "${6:-}" "state of $2 orders and $4 dead letters" \
        orders_done "$1" "$2" "$3" "$4"
}

# orders_done DB N_VALID PREFIX N_BAD: wait_done's check.
orders_done() {
    local have
    have=$(orders_in "$1")
    POLL_STATE="the state counts $have of $2 orders"
    ((have <= $2)) || fail "the state counts $have orders, more than the $2 produced (duplicates)"
    ((have == $2)) && dlq_reached "$3" "$4"
}

# wait_positions DB TOPIC PREFIX N_BAD SECONDS [PID]: waits until the input
# positions SQLite recorded (meta kafka.input.TOPIC.P) are the ends of every
# partition of TOPIC and the DLQ holds N_BAD committed records. For runs whose
# state database did not see every batch (another instance did some).
wait_positions() {
    end_offsets "$2" >"$WORK/ends"
    POLL_EVERY=0.5 poll_until "$5" "${6:-}" "input positions at the ends of $2 and $4 dead letters" \
        positions_done "$1" "$2" "$3" "$4"
}

# positions_done DB TOPIC PREFIX N_BAD: wait_positions' check.
positions_done() {
    local p end behind=0
    while read -r p end; do
        [[ "$(meta "$1" "kafka.input.$2.$p")" == "$end" ]] || behind=$((behind + 1))
    done <"$WORK/ends"
    POLL_STATE="$behind partitions of $2 behind their ends"
    ((behind == 0)) && dlq_reached "$3" "$4"
}

# wait_total DB SQL N PREFIX N_BAD SECONDS [PID]: wait_done for any
# pipeline: waits until SQL (one number, e.g. the sum of a count column) on
# the state database is N and the DLQ holds N_BAD committed records. Fails on
# timeout, on more than N (counted twice) or more than N_BAD, or if PID exits.
wait_total() {
    POLL_EVERY=0.5 poll_until "$6" "${7:-}" "[$2] = $3 and $5 dead letters" \
        total_done "$1" "$2" "$3" "$4" "$5"
}

# total_done DB SQL N PREFIX N_BAD: wait_total's check.
total_done() {
    local have
    have=$(sqlval "$1" "$2")
    have=${have:-0}
    POLL_STATE="[$2] is $have of $3"
    ((have <= $3)) || fail "[$2] is $have, more than the $3 events produced (counted twice)"
    ((have == $3)) && dlq_reached "$4" "$5"
}

# wait_orders DB N SECONDS PID [WHAT]: until the state counts N orders
# (fails on more). For runs whose DLQ may legitimately hold repeats
# (wait_done would take them for duplicates). WHAT prefixes the messages.
wait_orders() {
    POLL_EVERY=0.5 poll_until "$3" "$4" "${5:+$5: }state of $2 orders" orders_counted "$1" "$2" "${5:+$5: }"
}

# orders_counted DB N [PREFIX]: the state counts N orders (fails on more).
orders_counted() {
    local have
    have=$(orders_in "$1")
    POLL_STATE="the state counts $have of $2 orders"
    ((have <= $2)) || fail "${3:-}the state counts $have orders, more than the $2 produced (counted twice)"
    ((have == $2))
}

# wait_meta DB N SECONDS PID KEY...: until the meta values KEY... add up to N
# or more.
wait_meta() {
    local db=$1 want=$2 secs=$3 pid=$4
    shift 4
    poll_until "$secs" "$pid" "$* reaching $want" meta_reached "$db" "$want" "$@"
}

# meta_reached DB N KEY...: wait_meta's check.
meta_reached() {
    local db=$1 want=$2 have
    shift 2
    have=$(meta_sum "$db" "$@")
    POLL_STATE="$have of $want"
    ((have >= want))
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

# wait_snapshot_of DB LOG SECONDS [PID]: waits until LOG has an
# "event=snapshot" line whose last_seq is the database's current seq (call it
# once the state stopped changing). Sets SNAP_ID and SNAP_PATH.
wait_snapshot_of() {
    poll_until "$3" "${4:-}" "snapshot of the current seq in $2" snapshot_of "$1" "$2"
}

# snapshot_of DB LOG: wait_snapshot_of's check.
snapshot_of() {
    local seq line
    seq=$(db_seq "$1")
    POLL_STATE="seq $seq"
    line=$(grep "event=snapshot .*last_seq=$seq " "$2" | tail -n 1 || true)
    [[ -n "$line" && "$seq" != 0 ]] || return 1
    SNAP_ID=$(log_field "$line" snapshot)
    SNAP_PATH=$(log_field "$line" path)
    [[ -n "$SNAP_ID" && -f "$SNAP_PATH" ]] || fail "snapshot line names no existing file: $line"
}

# ------------------------------------------------------ exact results ---

# output_latest TOPIC: the latest committed value per key of TOPIC, as
# "key<TAB>value" lines, sorted (a key's records are in one partition, in
# order; fails if a key is in two).
output_latest() {
    read_topic "$1" '%p\t%k\t%s\n' >"$WORK/latest.raw"
    awk -F'\t' '
        ($2 in part) && part[$2] != $1 { print "key " $2 " in partitions " part[$2] " and " $1 > "/dev/stderr"; bad = 1 }
        { part[$2] = $1; v = $0; sub(/^[^\t]*\t[^\t]*\t/, "", v); last[$2] = v }
        END { for (k in last) print k "\t" last[k]; exit bad }' "$WORK/latest.raw" >"$WORK/latest.tsv" ||
        fail "a key of the output topic $1 is in two partitions"
    sort "$WORK/latest.tsv"
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

# check_dlq_set PREFIX BAD_FILE: the DLQ holds every malformed line at least
# once and nothing else (a batch read again writes its dead letters again).
check_dlq_set() {
    cut -d'|' -f2- "$2" | sort -u >"$WORK/dlq.expected"
    read_topic "$1-dlq" '%s\n' | sort -u >"$WORK/dlq.actual"
    assert_files_eq "distinct DLQ values vs the malformed lines" "$WORK/dlq.expected" "$WORK/dlq.actual"
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

# vehicle_latest DB: the state's vehicle_latest view, "VIN<TAB>record" lines.
vehicle_latest() {
    sqlite3 -batch -readonly "$1" "SELECT vin || char(9) || record FROM vehicle_latest ORDER BY vin"
}

# check_latest WHAT TOPIC SINCE_MS EXPECTED DB: the latest output per VIN in
# TOPIC (latest_outputs) and the state's vehicle_latest equal EXPECTED
# (expected_latest), exactly.
check_latest() {
    latest_outputs "$2" "$3" >"$WORK/output.tsv"
    without_produced_at "$4" >"$WORK/expected_out.tsv"
    assert_files_eq "$1: latest output record per VIN (produced_at = emit time, checked apart)" \
        "$WORK/expected_out.tsv" "$WORK/output.tsv"
    vehicle_latest "$5" >"$WORK/state.tsv"
    assert_files_eq "$1: vehicle_latest in the state" "$4" "$WORK/state.tsv"
}

# input_counts TOPIC: "partition valid malformed" lines, one per partition
# of TOPIC, sorted: its records whose key starts with bad- (gen_malformed and
# the other generators of malformed lines key them so) and the others.
input_counts() {
    read_topic "$1" '%p\t%k\n' >"$WORK/input.keys"
    end_offsets "$1" | awk -v keys="$WORK/input.keys" '
        BEGIN { FS = "\t"; while ((getline l < keys) > 0) { split(l, a, "\t"); if (index(a[2], "bad-") == 1) bad[a[1]]++; else good[a[1]]++ } }
        { split($0, e, " "); printf "%s %d %d\n", e[1], good[e[1]], bad[e[1]] }' | sort -n
}

# partition_counters DB PIPELINE P...: "P applied rejected" per partition P,
# from meta pipeline.PIPELINE.pP.events_applied and _rejected (0 if none).
partition_counters() {
    local db=$1 pipeline=$2 p
    shift 2
    for p in "$@"; do
        echo "$p $(meta_sum "$db" "pipeline.$pipeline.p$p.events_applied") $(meta_sum "$db" "pipeline.$pipeline.p$p.events_rejected")"
    done
}

# check_row_parts WHAT DB SQL INPUT: SQL gives "part<TAB>key" rows of the
# state (the part column and the input key its rows come from); each part
# must be the partition of INPUT that key's records were produced to.
check_row_parts() {
    local what=$1 db=$2 sql=$3 input=$4
    read_topic "$input" '%p\t%k\n' | sort -u >"$WORK/key-parts.tsv"
    sqlite3 -batch -readonly -separator $'\t' "$db" "$sql" >"$WORK/row-parts.tsv" ||
        fail "$what: cannot read $db"
    [[ -s "$WORK/row-parts.tsv" ]] || fail "$what: no rows in $db (test bug)"
    awk -F'\t' -v what="$what" '
        NR == FNR { if (($2 in part) && part[$2] != $1) dup[$2] = 1; part[$2] = $1; next }
        !($2 in part) { print what ": a row of key " $2 ", which was never produced" > "/dev/stderr"; bad = 1; next }
        $2 in dup { print what ": key " $2 " was produced to several partitions" > "/dev/stderr"; bad = 1; next }
        $1 != part[$2] { print what ": rows of key " $2 " carry part " $1 ", its records went to partition " part[$2] > "/dev/stderr"; bad = 1 }
        END { exit bad }' "$WORK/key-parts.tsv" "$WORK/row-parts.tsv" ||
        fail "$what: state rows whose part is not their input partition"
    ok
}

# check_dlq_reasons PREFIX REASONS: REASONS holds "value<TAB>reason" lines;
# each committed DLQ record's tally.error header starts with the reason of
# its value (a value REASONS does not list fails).
check_dlq_reasons() {
    read_topic "$1-dlq" '%s\t%h\n' >"$WORK/dlq.reasons"
    awk -F'\t' -v want="$2" '
        BEGIN { while ((getline l < want) > 0) { i = index(l, "\t"); reason[substr(l, 1, i - 1)] = substr(l, i + 1) } }
        {
            h = $NF; v = substr($0, 1, length($0) - length(h) - 1)
            if (!(v in reason)) { print "a dead letter tally did not have to write: " v > "/dev/stderr"; bad = 1; next }
            i = index(h, "tally.error=")
            got = i ? substr(h, i + 12) : "(no tally.error header)"
            if (index(got, reason[v]) != 1) { print "dead letter " v ": tally.error=" got ", expected a reason starting " reason[v] > "/dev/stderr"; bad = 1 }
            n++
        }
        END { if (n == 0) { print "no dead letters" > "/dev/stderr"; bad = 1 }; exit bad }' "$WORK/dlq.reasons" ||
        fail "the reasons of the dead letters in $1-dlq"
    ok
}

# ----------------------------------------------------------- metrics ---

# metric FILE NAME: the value of the sample NAME{...} in a /metrics scrape (one
# series; empty if there is none).
metric() { awk -v n="$2" 'index($0, n "{") == 1 || index($0, n " ") == 1 { print $NF; exit }' "$1"; }

# ---------------------------------------------------------- scale-out ---

# held_partitions DB: the partitions the instance holds (its partitions
# table), "0,3" (empty: none, or no table yet).
held_partitions() { sqlval "$1" 'SELECT group_concat(part) FROM (SELECT part FROM partitions ORDER BY part)'; }

# counters_records PREFIX [PIPELINE] > lines of the per-partition
# "tally.counters" records of PIPELINE (orders unless given) in
# PREFIX-changelog (read_committed), sorted by changelog partition and
# offset: "changelog_partition offset part from to applied rejected skipped
# late instance key" (tab separated). Fails on a counters record that lacks
# one of these fields.
counters_records() {
    read_topic "$1-changelog" '%p\t%o\t%s\n' >"$WORK/changelog.raw"
    awk -F'\t' -v pipeline="${2:-orders}" '
        function num(re,   s) {
            if (!match($3, re)) { bad = 1; return "" }
            s = substr($3, RSTART, RLENGTH); sub(/^.*[":\[]/, "", s); return s
        }
        index($3, "\"entity\":\"tally.counters\"") && index($3, "\"key\":\"pipeline." pipeline ".p") {
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

# counters_behind PREFIX INPUT [PIPELINE]: the partitions of INPUT whose
# last committed counters record does not end at the partition's end offset,
# as "p:to/end" words (empty once every record of INPUT is committed work).
counters_behind() {
    end_offsets "$2" >"$WORK/ends.behind"
    counters_records "$1" "${3:-orders}" >"$WORK/counters.behind"
    awk -F'\t' 'NR == FNR { last[$1] = $5; next }
        { split($0, e, " "); to = (e[1] in last) ? last[e[1]] : 0
          if (to != e[2]) printf "%s:%s/%s ", e[1], to, e[2] }' \
        "$WORK/counters.behind" "$WORK/ends.behind"
}

# check_counters_chain PREFIX INPUT [PIPELINE]: for every partition N of
# INPUT, the counters records of PREFIX-changelog partition N (read_committed)
# are about N (key pipeline.PIPELINE.pN, PIPELINE orders unless given, part
# N) and their input ranges [FROM,TO) chain
# without gap or overlap from N's first offset to its end offset; each
# record's applied + rejected grows by exactly its range's length (skipped and
# late stay 0), so the last one counts every record of N once. Two
# instances that both committed work on N would overlap; work lost would
# leave a gap. Leaves "part batches records instances" lines in
# $WORK/chain.summary.
check_counters_chain() {
    local prefix=$1 input=$2 pipeline=${3:-orders}
    begin_offsets "$input" >"$WORK/chain.begin"
    end_offsets "$input" >"$WORK/chain.end"
    counters_records "$prefix" "$pipeline" >"$WORK/chain.counters"
    [[ -s "$WORK/chain.counters" ]] || fail "$prefix-changelog holds no per-partition tally.counters records of $pipeline"
    awk -F'\t' -v bf="$WORK/chain.begin" -v ef="$WORK/chain.end" -v summary="$WORK/chain.summary" -v pipeline="$pipeline" '
    BEGIN {
        while ((getline l < bf) > 0) { split(l, a, " "); begin[a[1]] = a[2]; parts[a[1]] = 1 }
        while ((getline l < ef) > 0) { split(l, a, " "); end[a[1]] = a[2] }
    }
    function err(m) { print "counters chain, changelog partition " $1 " offset " $2 ": " m > "/dev/stderr"; bad = 1 }
    {
        p = $1
        if (!(p in parts)) { err("no such input partition"); next }
        if ($3 != p) err("part " $3 " in changelog partition " p)
        if ($11 != "pipeline." pipeline ".p" p) err("key " $11)
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
