#!/usr/bin/env bash
# test_run_scale_out.sh - three `tally run` instances (a, b, c) in one consumer
# group share a 6-partition input while orders (keyed by storeId, some
# malformed) keep arriving. b is killed with SIGKILL inside a transaction
# that has written to its changelog partitions, and stays dead: a and c must
# take over its partitions once its session has timed out and the broker has
# aborted its transaction (--transaction-timeout 20s). Then d starts with
# an empty state directory and must take partitions over from a and c,
# rebuilding their state from the shared snapshots and the changelog. Once
# everything is consumed a, c and d are stopped, and:
#
#   1. the latest committed output per key equals the awk totals exactly;
#   2. the union of a's, c's and d's order_windows equals the awk totals, no
#      window is in two databases, their partitions tables are disjoint and
#      cover every partition, each row of order_window_state belongs to a
#      partition its database holds, and to the one its store is produced to;
#   3. per changelog partition, the tally.counters records chain their input
#      ranges without gap or overlap over the whole input partition, and count
#      every record of it once (no two instances committed the same input);
#   4. the DLQ holds each malformed line exactly once;
#   5. a and c logged partition_assigned for b's partitions after the kill, d
#      for the partitions it holds (rebuilt: source snapshot or changelog),
#      /metrics agree (tally_partitions_held adds up to 6, d reports a
#      recovery time for each of its partitions), and no partitions table,
#      whenever the test looked, listed a partition its instance was never
#      assigned.
# shellcheck source=../lib/tally.sh
source "$(dirname "$0")/../lib/tally.sh"

PARTITIONS=6
STORES=12        # over 6 partitions by kcat's key hash: every partition gets stores
N_PRE=3000       # produced before the first start
N_CHUNK=100      # then a chunk every CHUNK_GAP s (plus kcat's time) until the end
CHUNK_GAP=0.25
MAX_CHUNKS=1000
N_BURST=20000    # one chunk this big: b dies in the middle of its backlog
B_BATCH=5000     # b's --max-batch: transactions that take a while
SESSION=6s
TXN_TIMEOUT=20s  # how long b's open transaction lives on (the broker checks
                 # every 10 s): unless b had sent its input offsets, until
                 # after d has taken partitions over
TAKEOVER_S=90    # b's partitions move after the session timeout (and after
                 # TXN_TIMEOUT if b died with input offsets in its transaction)

command -v curl >/dev/null || fail "curl is required"

expect_usage_error "--session-timeout abc" --pipeline orders --brokers "$KAFKA_BROKERS" --session-timeout abc

stream_names
COMMON=("${TOPIC_ARGS[@]}" --snapshot-dir "$WORK/snaps" --snapshot-interval 1s --session-timeout "$SESSION"
    --transaction-timeout "$TXN_TIMEOUT"
    --commit-interval-ms 50 --max-batch 200)
declare -A PID PORT
DB() { echo "$WORK/state-$1/orders.db"; }
LOG() { echo "$WORK/$1.log"; }

# start_instance X [ARGS...]
start_instance() {
    local x=$1 p
    shift
    while :; do
        p=$(free_port)
        [[ " ${PORT[*]} " == *" $p "* ]] || break
    done
    PORT[$x]=$p
    tally_start "$(LOG "$x")" "${COMMON[@]}" --instance-id "$(name "$x")" --state-dir "$WORK/state-$x" \
        --http "127.0.0.1:$p" "$@"
    PID[$x]=$TALLY_PID
}

# must_live X...: fails if one of the instances exited.
must_live() {
    local x
    for x in "$@"; do
        if ! alive "${PID[$x]}"; then
            tally_wait_exit "${PID[$x]}" 5
            fail "instance $x exited with status $RC; log: $(tail -n 3 "$(LOG "$x")" | cut -c1-300)"
        fi
    done
}

# settled X...: the instances' partitions tables are disjoint, none is empty,
# and together they hold every partition. Sets HELD[X]; what each table
# listed goes to $WORK/held.timeline.
declare -A HELD
settled() {
    local x all=""
    for x in "$@"; do
        HELD[$x]=$(held_partitions "$(DB "$x")")
        echo "$x ${HELD[$x]}" >>"$WORK/held.timeline"
        [[ -n "${HELD[$x]}" ]] || return 1
        all+="${HELD[$x]},"
    done
    [[ "$(tr ',' '\n' <<<"${all%,}" | sort -n | tr '\n' ' ')" == "$(seq -s ' ' 0 $((PARTITIONS - 1))) " ]]
}

# wait_settled SECONDS X...
wait_settled() {
    local limit=$((SECONDS + $1)) x desc
    shift
    until settled "$@"; do
        must_live "$@"
        if ((SECONDS >= limit)); then
            desc=""
            for x in "$@"; do desc+="$x:[${HELD[$x]}] "; done
            fail "the partitions of $* did not settle (disjoint, none empty, all $PARTITIONS held) within the limit: $desc"
        fi
        sleep 0.3
    done
}


# ---- input -----------------------------------------------------------------
create_topic "$IN" "$PARTITIONS"
gen_orders_by_store "$N_PRE" 4242 1 "$STORES" "$WORK/pre.tsv" >"$WORK/pre-orders.kv"
gen_malformed 12 "pre" >"$WORK/pre.bad"
mix "$WORK/pre-orders.kv" "$WORK/pre.bad" >"$WORK/pre.kv"
produce "$IN" "$WORK/pre.kv"

# The stream: one chunk every CHUNK_GAP s until $WORK/stop exists; the chunks
# produced are listed in $WORK/produced. While $WORK/burst exists the next
# chunk has N_BURST orders; $WORK/burst.started appears as it is sent,
# $WORK/burst.produced once it is.
: >"$WORK/produced"
(
    next_id=$((N_PRE + 1))
    for ((k = 1; k <= MAX_CHUNKS; k++)); do
        [[ -e "$WORK/stop" ]] && exit 0
        n=$N_CHUNK
        [[ -e "$WORK/burst" ]] && n=$N_BURST
        gen_orders_by_store "$n" $((9000 + k)) "$next_id" "$STORES" "$WORK/chunk$k.tsv" >"$WORK/chunk$k-orders.kv"
        next_id=$((next_id + n))
        if ((k % 5 == 0)); then gen_malformed 1 "chunk$k" >"$WORK/chunk$k.bad"; else : >"$WORK/chunk$k.bad"; fi
        mix "$WORK/chunk$k-orders.kv" "$WORK/chunk$k.bad" >"$WORK/chunk$k.kv"
        if ((n == N_BURST)); then
            rm "$WORK/burst"
            touch "$WORK/burst.started"
        fi
        produce "$IN" "$WORK/chunk$k.kv"
        echo "$k" >>"$WORK/produced"
        ((n == N_BURST)) && touch "$WORK/burst.produced"
        sleep "$CHUNK_GAP"
    done
    echo "the stream ran out of chunks" >&2
    exit 1
) &
STREAM=$!
bg_track "$STREAM"

# ---- a, b, c share the input -----------------------------------------------
# a creates the internal topics; b and c join it together.
start_instance a
tally_wait_started "${PID[a]}" "$(LOG a)"
start_instance b --max-batch "$B_BATCH"
start_instance c
tally_wait_started "${PID[b]}" "$(LOG b)"
tally_wait_started "${PID[c]}" "$(LOG c)"
wait_settled 90 a b c
note "a, b, c settled: a [${HELD[a]}] b [${HELD[b]}] c [${HELD[c]}]"

# b dies inside a transaction that has written to its changelog partitions
# (and, as a rule, sent its input offsets): until the broker aborts it
# (TXN_TIMEOUT) it holds back read_committed readers of them, and whoever
# takes b's partitions over. b sleeps (SIGSTOP) while a burst is
# sent, so that its share waits as a backlog of batches of B_BATCH, then runs
# for a few milliseconds at a time until it is caught that way (within 40
# tries, a few seconds: stopped for longer, b would lose its partitions to
# the session timeout; if not caught by then, it dies where it is).
touch "$WORK/burst"
limit=$((SECONDS + 60))
until [[ -e "$WORK/burst.started" ]]; do
    must_live a b c
    ((SECONDS < limit)) || fail "the burst was not sent within 60 s"
    sleep 0.02
done
kill -STOP "${PID[b]}"
until [[ -e "$WORK/burst.produced" ]]; do
    ((SECONDS < limit)) || { kill -CONT "${PID[b]}"; fail "the burst was not produced within 60 s"; }
    sleep 0.02
done
B_PARTS=$(held_partitions "$(DB b)")
IFS=, read -r -a b_parts <<<"$B_PARTS"
caught=no
for ((try = 1; try <= 40; try++)); do
    kill -CONT "${PID[b]}"
    sleep "0.00$((1 + RANDOM % 9))"
    kill -STOP "${PID[b]}"
    must_live a b c
    open=$(open_transactions "$PREFIX-changelog" "${b_parts[@]}" | tr '\n' ',')
    if [[ -n "$open" ]]; then
        caught=yes
        break
    fi
done
note "b stopped with a transaction open on changelog partitions [${open%,}] of its [$B_PARTS] (try $try)"

# ---- kill -9 b ---------------------------------------------------------------
declare -A LINES_AT_KILL
for x in a c; do LINES_AT_KILL[$x]=$(wc -l <"$(LOG "$x")"); done
tally_kill9 "${PID[b]}"
killed_at=$SECONDS
[[ -n "$B_PARTS" ]] || fail "b's partitions table is empty"
note "b killed holding [$B_PARTS] with $(orders_in "$(DB b)") orders in its state"
wait_settled "$TAKEOVER_S" a c
takeover_s=$((SECONDS - killed_at))
waited=$(tail -n +$((LINES_AT_KILL[a] + 1)) "$(LOG a)" | grep 'event=partition_assigned' || true
    tail -n +$((LINES_AT_KILL[c] + 1)) "$(LOG c)" | grep 'event=partition_assigned' || true)
waited_ms=$(while read -r line; do log_field "$line" waited_ms; done <<<"$waited" | sort -n | tail -n 1)
note "a and c took over b's partitions ${takeover_s} s after the kill (waited up to ${waited_ms:-?} ms for b's transaction): a [${HELD[a]}] c [${HELD[c]}]"

# ---- d joins -------------------------------------------------------------------
start_instance d
d_started=$SECONDS
tally_wait_started "${PID[d]}" "$(LOG d)"
wait_settled 90 a c d
join_s=$((SECONDS - d_started))
note "d took partitions over within ${join_s} s: a [${HELD[a]}] c [${HELD[c]}] d [${HELD[d]}]"
# d works on its partitions while the stream goes on.
d_before=$(orders_in "$(DB d)")
limit=$((SECONDS + 60))
while (($(orders_in "$(DB d)") <= d_before)); do
    must_live a c d
    ((SECONDS < limit)) || fail "d committed no new orders within 60 s of holding [${HELD[d]}]"
    sleep 0.2
done
sleep 2

# ---- the end of the stream, then everything consumed -------------------------------
touch "$WORK/stop"
if wait "$STREAM"; then :; else fail "the input stream failed"; fi
cp "$WORK/pre.tsv" "$WORK/orders.tsv"
cp "$WORK/pre.bad" "$WORK/bad.kv"
while read -r k; do
    cat "$WORK/chunk$k.tsv" >>"$WORK/orders.tsv"
    cat "$WORK/chunk$k.bad" >>"$WORK/bad.kv"
done <"$WORK/produced"
N_ORDERS=$(wc -l <"$WORK/orders.tsv")
N_BAD=$(wc -l <"$WORK/bad.kv")
assert_eq "records in the input topic" $((N_ORDERS + N_BAD)) "$(topic_records "$IN")"

# Done when every partition's counters chain reaches its end offset (the
# committed work of all instances) and the DLQ is complete.
limit=$((SECONDS + 90))
while :; do
    behind=$(counters_behind "$PREFIX" "$IN")
    if [[ -z "$behind" ]]; then
        dlq=$(dlq_records "$PREFIX")
        ((dlq > N_BAD)) && fail "the DLQ holds $dlq records, more than the $N_BAD malformed lines (duplicates)"
        ((dlq == N_BAD)) && break
    fi
    must_live a c d
    ((SECONDS < limit)) || fail "not consumed within 90 s; partitions whose counters chain is short (partition:to/end): ${behind:-none, but the DLQ holds $dlq of $N_BAD}"
    sleep 1
done
note "all $N_ORDERS orders and $N_BAD malformed lines consumed"

# /metrics, while a, c and d run: they hold the 6 partitions between them, and
# d reports how long each of its partitions took to recover.
settled a c d || fail "after the drain a, c, d hold a [${HELD[a]}] c [${HELD[c]}] d [${HELD[d]}], not all $PARTITIONS partitions once"
held_total=0
for x in a c d; do
    curl -sf -o "$WORK/metrics-$x.txt" "http://127.0.0.1:${PORT[$x]}/metrics" ||
        fail "no /metrics from $x on port ${PORT[$x]}"
    h=$(metric "$WORK/metrics-$x.txt" tally_partitions_held)
    [[ "$h" =~ ^[0-9]+$ ]] || fail "$x: no tally_partitions_held on /metrics"
    held_total=$((held_total + h))
    for m in tally_rebalance_duration_seconds tally_partitions_assigned_total tally_partitions_revoked_total; do
        [[ -n "$(metric "$WORK/metrics-$x.txt" "$m")" ]] || fail "$x: no $m on /metrics"
    done
done
assert_eq "tally_partitions_held of a, c and d together" "$PARTITIONS" "$held_total"
for p in ${HELD[d]//,/ }; do
    grep -qE "^tally_partition_recovery_seconds\\{.*partition=\"$p\"\\} [0-9]" "$WORK/metrics-d.txt" ||
        fail "d holds partition $p but /metrics has no tally_partition_recovery_seconds{partition=\"$p\"}"
    grep -qE "^tally_partition_recovery_records\\{.*partition=\"$p\"\\} [0-9]" "$WORK/metrics-d.txt" ||
        fail "d holds partition $p but /metrics has no tally_partition_recovery_records{partition=\"$p\"}"
done
ok

# A start may leave rows of partitions the instance is not assigned; they go
# once its assignment has been stable for 15 s.
limit=$((SECONDS + 40))
for x in a c d; do
    while :; do
        stray=$(sqlval "$(DB "$x")" 'SELECT count(*) FROM order_window_state WHERE part NOT IN (SELECT part FROM partitions)')
        [[ "$stray" == 0 ]] && break
        must_live a c d
        ((SECONDS < limit)) || fail "$x still holds ${stray:-?} rows of partitions it does not hold, 40 s after the drain"
        sleep 0.5
    done
done

# SIGTERM together: stopping one at a time could hand its partitions around.
for x in a c d; do kill -TERM "${PID[$x]}"; done
for x in a c d; do
    tally_wait_exit "${PID[$x]}" 60
    ((TIMED_OUT == 0)) || fail "$x did not exit within 60 s of SIGTERM"
    ((RC == 0)) || fail "$x exited with status $RC after SIGTERM, expected 0"
    ok
done

# ---- 1. the output ---------------------------------------------------------------
check_totals "latest output of a, b, c, d" "$WORK/orders.tsv" "" "$OUT"

# ---- 2. the databases ---------------------------------------------------------------
# Which partition each store was produced to (kcat's key hash).
read_topic "$IN" '%p\t%k\n' | awk -F'\t' '$2 ~ /^s[0-9]+$/' | sort -u >"$WORK/store-parts.tsv"
assert_eq "stores produced to more than one partition" "" \
    "$(cut -f2 "$WORK/store-parts.tsv" | sort | uniq -d | tr '\n' ' ')"
assert_eq "input partitions with orders" "$PARTITIONS" "$(cut -f1 "$WORK/store-parts.tsv" | sort -u | wc -l)"
: >"$WORK/union.tsv"
: >"$WORK/held.all"
for x in a c d; do
    db=$(DB "$x")
    sqlite3 -batch -readonly "$db" 'SELECT part FROM partitions ORDER BY part' >"$WORK/held-$x" ||
        fail "cannot read $x's partitions table"
    [[ -s "$WORK/held-$x" ]] || fail "$x's partitions table is empty after its stop"
    cat "$WORK/held-$x" >>"$WORK/held.all"
    assert_eq "$x: order_window_state rows of a partition its partitions table does not list" 0 \
        "$(sqlval "$db" 'SELECT count(*) FROM order_window_state WHERE part IS NULL OR part NOT IN (SELECT part FROM partitions)')"
    sqlite3 -batch -readonly -separator $'\t' "$db" 'SELECT DISTINCT part, store_id FROM order_window_state' |
        sort >"$WORK/row-parts-$x.tsv"
    wrong=$(join -t$'\t' -1 2 -2 2 -o 1.1,1.2,2.1 <(sort -t$'\t' -k2,2 "$WORK/row-parts-$x.tsv") \
        <(sort -t$'\t' -k2,2 "$WORK/store-parts.tsv") | awk -F'\t' '$1 != $3 { printf "%s in part %s (produced to %s) ", $2, $1, $3 }')
    assert_eq "$x: stores whose rows carry another part than the one they were produced to" "" "$wrong"
    state_windows "$db" >"$WORK/state-$x.tsv"
    cat "$WORK/state-$x.tsv" >>"$WORK/union.tsv"
done
assert_eq "partitions held by two of a, c, d" "" "$(sort -n "$WORK/held.all" | uniq -d | tr '\n' ' ')"
assert_eq "partitions held by a, c, d" "$(seq -s ' ' 0 $((PARTITIONS - 1))) " "$(sort -n "$WORK/held.all" | tr '\n' ' ')"
assert_eq "windows in two of a's, c's, d's databases" "" \
    "$(cut -f1-3 "$WORK/union.tsv" | sort | uniq -d | head -n 5 | tr '\t\n' '# ')"
sort "$WORK/union.tsv" >"$WORK/union.sorted"
assert_files_eq "order_windows of a, c, d together vs awk" "$WORK/expected.tsv" "$WORK/union.sorted"

# ---- 3. the counters chains ---------------------------------------------------------
check_counters_chain "$PREFIX" "$IN"
while read -r p batches records insts; do
    note "partition $p: $records records in $batches committed batches, by ${insts// /, }"
done <"$WORK/chain.summary"

# ---- 4. the DLQ ---------------------------------------------------------------------
check_dlq "$PREFIX" "$IN" "$WORK/bad.kv"

# ---- 5. who took what, by the logs -----------------------------------------------------
# partition_assigned lines of a and c after the kill
for x in a c; do
    tail -n +$((LINES_AT_KILL[$x] + 1)) "$(LOG "$x")" | grep 'event=partition_assigned' || true
done >"$WORK/after-kill.log"
for p in ${B_PARTS//,/ }; do
    grep -qE "event=partition_assigned .*partition=$p( |$)" "$WORK/after-kill.log" ||
        fail "no partition_assigned for b's partition $p in a's or c's log after the kill"
done
ok
while read -r p; do
    line=$(grep -E "event=partition_assigned .*partition=$p( |$)" "$(LOG d)" | tail -n 1 || true)
    [[ -n "$line" ]] || fail "d holds partition $p but logged no partition_assigned for it"
    src=$(log_field "$line" source)
    [[ "$src" == snapshot || "$src" == changelog ]] ||
        fail "d started with an empty state directory, its partition $p had state, yet source=$src: $line"
    [[ "$(log_field "$line" ms)" =~ ^[0-9]+$ ]] || fail "partition_assigned without ms=: $line"
done <"$WORK/held-d"
ok
grep -q 'event=rebalance ' "$(LOG d)" || fail "d logged no event=rebalance"
ok
# A partitions table lists what its instance took over, never more.
while read -r x parts; do
    for p in ${parts//,/ }; do
        grep -qE "event=partition_assigned .*partition=$p( |$)" "$(LOG "$x")" ||
            fail "$x's partitions table listed partition $p ([$parts]), but $x never logged partition_assigned for it"
    done
done < <(sort -u "$WORK/held.timeline")
ok

finish "b killed inside a transaction: $caught; b's partitions [$B_PARTS] moved ${takeover_s} s after its kill (waited ${waited_ms:-?} ms for its transaction); d took [${HELD[d]}] within ${join_s} s; $(wc -l <"$WORK/produced") chunks streamed; $N_ORDERS orders, $N_BAD malformed"
