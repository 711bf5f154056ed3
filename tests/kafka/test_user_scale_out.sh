#!/usr/bin/env bash
# test_user_scale_out.sh - two `tally run --pipeline pageviews.sql` instances
# (a and b: one group, their own --instance-id and state directory, shared
# snapshots) over a 4-partition input keyed by page, while page views (some
# malformed) keep arriving:
#
#   1. a alone holds the 4 partitions;
#   2. b joins: partitions move from a (dropped there, reason=revoked) to b,
#      which rebuilds them from the snapshots and the changelog; both commit
#      work;
#   3. b is killed with SIGKILL: once its session has timed out a holds the 4
#      partitions again, b's among them (partition_assigned after the kill);
#   4. b starts again on its old state directory, partitions move back to it;
#   5. the stream ends; once every input partition's counters chain reaches
#      its end, while both run: their partitions tables are disjoint and
#      cover the 4, no row belongs to a partition its database does not
#      hold, no key is in both databases, each row's part is its page's input
#      partition, and the union of their page_views equals awk exactly; the
#      latest output per key equals awk; the counters chains cover every
#      input partition once and name both instances; the DLQ holds each
#      malformed event once with its reason; each database's meta counters
#      and input positions, for the partitions it holds, are the input's;
#   6. b stops (SIGTERM): a takes its partitions over (from b's last
#      snapshot), and a's page_views alone then equals awk exactly, its meta
#      counters are the input's per partition; the outputs are still exact;
#      last, a's input positions are the ends, those of the partitions it
#      took over included.
# shellcheck source=../lib/tally.sh
source "$(dirname "$0")/../lib/tally.sh"

PARTITIONS=4
N_PRE=6000       # page views produced before the first start
N_CHUNK=150      # then a chunk every CHUNK_GAP s until the end
CHUNK_GAP=0.3
MAX_CHUNKS=1000
SESSION=6s
TXN_TIMEOUT=20s  # how long the broker keeps a killed instance's transaction
TAKEOVER_S=90    # partitions of a killed or stopped instance move after its
                 # session timeout (and its transaction's timeout)
PV_ROWS='SELECT page, window_start_ms, views FROM page_views'
PV_SPEC=(page:text window_start_ms:int views:int)

stream_names
COMMON=(--input-topic "$IN" --output-topic "$OUT" --topic-prefix "$PREFIX" --group-id "$GROUP"
    --snapshot-dir "$WORK/snaps" --snapshot-interval 1s --session-timeout "$SESSION"
    --transaction-timeout "$TXN_TIMEOUT" --commit-interval-ms 50 --max-batch 200 --http off)
declare -A PID HELD
DB() { echo "$WORK/state-$1/pageviews.db"; }
LOG() { echo "$WORK/$1.log"; }

# start_instance X: `tally run --pipeline pageviews.sql` as instance X.
start_instance() {
    tally_bg "$(LOG "$1")" run --pipeline "$PAGEVIEWS_SQL" --brokers "$KAFKA_BROKERS" "${COMMON[@]}" \
        --instance-id "$(name "$1")" --state-dir "$WORK/state-$1"
    PID[$1]=$TALLY_PID
    tally_wait_started "${PID[$1]}" "$(LOG "$1")"
}

# must_live X...: fails if one of the instances exited.
must_live() {
    local x
    for x in "$@"; do alive_or_fail "${PID[$x]}" "(instance $x)"; done
}

# settled X...: the instances' partitions tables are disjoint, none is empty,
# and together they hold every partition (HELD[X]); what each listed goes to
# $WORK/held.timeline.
settled() {
    local x all=""
    must_live "$@"
    for x in "$@"; do
        HELD[$x]=$(held_partitions "$(DB "$x")")
        echo "$x ${HELD[$x]}" >>"$WORK/held.timeline"
        all+="${HELD[$x]},"
    done
    POLL_STATE=$(for x in "$@"; do printf '%s:[%s] ' "$x" "${HELD[$x]}"; done)
    for x in "$@"; do [[ -n "${HELD[$x]}" ]] || return 1; done
    [[ "$(tr ',' '\n' <<<"${all%,}" | sort -n | tr '\n' ' ')" == "$(seq -s ' ' 0 $((PARTITIONS - 1))) " ]]
}

# wait_settled SECONDS X...
wait_settled() {
    local secs=$1
    shift
    POLL_EVERY=0.3 poll_until "$secs" "" "partitions of $* settled (disjoint, none empty, all $PARTITIONS held)" settled "$@"
}

# views_of X: the views X's database counts.
views_of() {
    local n
    n=$(sqlval "$(DB "$1")" 'SELECT coalesce(sum(views), 0) FROM page_views')
    echo "${n:-0}"
}

# committing X BEFORE: X's database counts more views than BEFORE.
committing() { (($(views_of "$1") > $2)); }

# assigned_since X LINE P: X logged partition_assigned for partition P after
# line LINE of its log.
assigned_since() {
    tail -n +$(($2 + 1)) "$(LOG "$1")" | grep -qE "event=partition_assigned partition=$3 "
}

# no_strays X...: no row of the instances' page_views belongs to a partition
# their partitions table does not list (a start may leave some, which go once
# the assignment has been stable for a while).
no_strays() {
    local x n
    for x in "$@"; do
        must_live "$x"
        n=$(sqlval "$(DB "$x")" 'SELECT count(*) FROM page_views WHERE part NOT IN (SELECT part FROM partitions)')
        POLL_STATE="$x: ${n:-?} rows of partitions it does not hold"
        [[ "$n" == 0 ]] || return 1
    done
}

# ---- input -------------------------------------------------------------------
rc=0
tally topics create --pipeline "$PAGEVIEWS_SQL" --brokers "$KAFKA_BROKERS" --partitions "$PARTITIONS" \
    --input-topic "$IN" --output-topic "$OUT" --topic-prefix "$PREFIX" >"$WORK/topics.out" 2>&1 || rc=$?
assert_eq "tally topics create --pipeline pageviews.sql ($(head -c 300 "$WORK/topics.out"))" 0 "$rc"
assert_eq "topics created" 5 "$(grep -c "partitions=$PARTITIONS .*status=created" "$WORK/topics.out")"
: >"$WORK/reasons.tsv"
: >"$WORK/pre.tsv"
gen_pageviews "$N_PRE" 31337 "$WORK/pre.tsv" >"$WORK/pre-views.kv"
gen_bad_pageviews 12 pre "$WORK/reasons.tsv" >"$WORK/pre.bad"
mix "$WORK/pre-views.kv" "$WORK/pre.bad" >"$WORK/pre.kv"
produce "$IN" "$WORK/pre.kv"

# The stream: one chunk every CHUNK_GAP s until $WORK/stop exists; the chunks
# produced are listed in $WORK/produced.
: >"$WORK/produced"
(
    for ((k = 1; k <= MAX_CHUNKS; k++)); do
        [[ -e "$WORK/stop" ]] && exit 0
        : >"$WORK/chunk$k.tsv"
        gen_pageviews "$N_CHUNK" $((5000 + k)) "$WORK/chunk$k.tsv" >"$WORK/chunk$k-views.kv"
        if ((k % 4 == 0)); then
            gen_bad_pageviews 1 "chunk$k" "$WORK/chunk$k.reasons" >"$WORK/chunk$k.bad"
        else
            : >"$WORK/chunk$k.bad"
            : >"$WORK/chunk$k.reasons"
        fi
        mix "$WORK/chunk$k-views.kv" "$WORK/chunk$k.bad" >"$WORK/chunk$k.kv"
        produce "$IN" "$WORK/chunk$k.kv"
        echo "$k" >>"$WORK/produced"
        sleep "$CHUNK_GAP"
    done
    echo "the stream ran out of chunks" >&2
    exit 1
) &
STREAM=$!
bg_track "$STREAM"

# ---- 1. a alone --------------------------------------------------------------
start_instance a
wait_settled 60 a
# a has committed views of every partition: whatever b takes has state.
all_parts() {
    local n
    must_live a
    n=$(sqlval "$(DB a)" 'SELECT count(DISTINCT part) FROM page_views')
    POLL_STATE="rows of ${n:-0} partitions"
    [[ "$n" == "$PARTITIONS" ]]
}
POLL_EVERY=0.3 poll_until 60 "" "views of all $PARTITIONS partitions committed by a" all_parts
note "a holds [${HELD[a]}]"

# ---- 2. b joins --------------------------------------------------------------
a_lines=$(wc -l <"$(LOG a)")
start_instance b
wait_settled 90 a b
B_FIRST=${HELD[b]}
note "b joined: a [${HELD[a]}] b [$B_FIRST]"
for p in ${B_FIRST//,/ }; do
    grep -qE "event=partition_dropped partition=$p reason=revoked" <(tail -n +$((a_lines + 1)) "$(LOG a)") ||
        fail "b holds partition $p, yet a logged no partition_dropped reason=revoked for it"
    line=$(grep -E "event=partition_assigned partition=$p " "$(LOG b)" | tail -n 1 || true)
    [[ "$(log_field "$line" source)" =~ ^(snapshot|changelog)$ ]] ||
        fail "b took partition $p over from a, which had state for it, yet: ${line:-no partition_assigned line}"
done
ok
for x in a b; do
    before=$(views_of "$x")
    POLL_EVERY=0.3 poll_until 60 "${PID[$x]}" "new views committed by $x" committing "$x" "$before"
done

# ---- 3. kill -9 b: a takes everything over -----------------------------------
a_lines=$(wc -l <"$(LOG a)")
tally_kill9 "${PID[b]}"
killed_at=$SECONDS
wait_settled "$TAKEOVER_S" a
takeover_s=$((SECONDS - killed_at))
for p in ${B_FIRST//,/ }; do
    assigned_since a "$a_lines" "$p" || fail "a holds b's partition $p, but logged no partition_assigned for it after the kill"
done
ok
note "a took b's partitions [$B_FIRST] over ${takeover_s} s after the kill"

# ---- 4. b again, on its old state directory ----------------------------------
b_lines=$(wc -l <"$(LOG b)")
start_instance b
wait_settled 90 a b
note "b is back: a [${HELD[a]}] b [${HELD[b]}]"
for p in ${HELD[b]//,/ }; do
    assigned_since b "$b_lines" "$p" || fail "b holds partition $p after its restart, but logged no partition_assigned for it"
done
ok
before=$(views_of b)
POLL_EVERY=0.3 poll_until 60 "${PID[b]}" "new views committed by b after its restart" committing b "$before"

# ---- 5. the end of the stream, everything consumed -----------------------------
touch "$WORK/stop"
if wait "$STREAM"; then :; else fail "the input stream failed"; fi
cp "$WORK/pre.tsv" "$WORK/views.tsv"
cp "$WORK/pre.bad" "$WORK/bad.kv"
while read -r k; do
    cat "$WORK/chunk$k.tsv" >>"$WORK/views.tsv"
    cat "$WORK/chunk$k.bad" >>"$WORK/bad.kv"
    cat "$WORK/chunk$k.reasons" >>"$WORK/reasons.tsv"
done <"$WORK/produced"
N_VIEWS=$(wc -l <"$WORK/views.tsv")
N_BAD=$(wc -l <"$WORK/bad.kv")
assert_eq "records in the input topic" $((N_VIEWS + N_BAD)) "$(topic_records "$IN")"
end_offsets "$IN" >"$WORK/ends"
awk '$2 == 0 { exit 1 }' "$WORK/ends" || fail "an input partition is empty: $(tr '\n' ' ' <"$WORK/ends")"

# consumed: every partition's counters chain reaches its end, the DLQ is complete.
consumed() {
    local behind
    must_live a b
    behind=$(counters_behind "$PREFIX" "$IN" pageviews)
    POLL_STATE="partitions whose counters chain is short (partition:to/end): ${behind:-none}"
    [[ -z "$behind" ]] && dlq_reached "$PREFIX" "$N_BAD"
}
POLL_EVERY=1 poll_until 90 "" "all $N_VIEWS views and $N_BAD malformed events consumed" consumed
settled a b || fail "after the drain a and b do not hold the $PARTITIONS partitions once: $POLL_STATE"
POLL_EVERY=0.5 poll_until 40 "" "no rows of partitions not held" no_strays a b

expected_page_views "$WORK/views.tsv" >"$WORK/pv.expected"
: >"$WORK/union.tsv"
for x in a b; do
    db=$(DB "$x")
    sqlite3 -batch -readonly -separator $'\t' "$db" "$PV_ROWS" >>"$WORK/union.tsv" || fail "cannot read $db"
    check_row_parts "$x" "$db" 'SELECT DISTINCT part, page FROM page_views' "$IN"
done
assert_eq "page_views keys in both databases" "" "$(cut -f1,2 "$WORK/union.tsv" | sort | uniq -d | head -n 5 | tr '\t\n' '# ')"
sort "$WORK/union.tsv" >"$WORK/union.sorted"
assert_files_eq "page_views of a and b together vs awk" "$WORK/pv.expected" "$WORK/union.sorted"
state_records 2 "${PV_SPEC[@]}" <"$WORK/pv.expected" >"$WORK/records.expected"
output_latest "$OUT" >"$WORK/records.actual"
assert_files_eq "latest output record per key vs awk" "$WORK/records.expected" "$WORK/records.actual"
# Each database's counters, for the partitions it holds, are the input's.
input_counts "$IN" >"$WORK/counts.expected"
for x in a b; do partition_counters "$(DB "$x")" pageviews ${HELD[$x]//,/ }; done | sort -n >"$WORK/counts.actual"
assert_files_eq "meta applied and rejected of the partitions a and b hold vs the input" \
    "$WORK/counts.expected" "$WORK/counts.actual"
check_counters_chain "$PREFIX" "$IN" pageviews
for x in a b; do
    grep -qw "$(name "$x")" "$WORK/chain.summary" || fail "no counters record of instance $x: $(tr '\n' ';' <"$WORK/chain.summary")"
done
ok
while read -r p batches records insts; do
    note "partition $p: $records records in $batches committed batches, by ${insts// /, }"
done <"$WORK/chain.summary"
check_dlq "$PREFIX" "$IN" "$WORK/bad.kv"
check_dlq_reasons "$PREFIX" "$WORK/reasons.tsv"
# Each database's input positions, for the partitions it holds, are the ends.
for x in a b; do
    for p in ${HELD[$x]//,/ }; do
        assert_eq "$x: meta kafka.input.$IN.$p (the partition's end)" "$(awk -v p="$p" '$1 == p { print $2 }' "$WORK/ends")" \
            "$(meta "$(DB "$x")" "kafka.input.$IN.$p")"
    done
done

# ---- 6. b stops: a takes its partitions over, exact alone ---------------------
B_LAST=${HELD[b]}
a_lines=$(wc -l <"$(LOG a)")
tally_stop "${PID[b]}"
stopped_at=$SECONDS
wait_settled "$TAKEOVER_S" a
handover_s=$((SECONDS - stopped_at))
for p in ${B_LAST//,/ }; do
    assigned_since a "$a_lines" "$p" || fail "a holds b's partition $p, but logged no partition_assigned for it after b stopped"
done
ok
POLL_EVERY=0.5 poll_until 40 "" "no rows of partitions not held" no_strays a
tally_stop "${PID[a]}"
sqlite3 -batch -readonly -separator $'\t' "$(DB a)" "$PV_ROWS" | sort >"$WORK/a.sorted"
assert_files_eq "a's page_views after b stopped vs awk" "$WORK/pv.expected" "$WORK/a.sorted"
partition_counters "$(DB a)" pageviews $(seq 0 $((PARTITIONS - 1))) >"$WORK/counts.a"
assert_files_eq "a's meta applied and rejected per partition vs the input" "$WORK/counts.expected" "$WORK/counts.a"
assert_eq "a's meta events_applied" "$N_VIEWS" "$(meta "$(DB a)" pipeline.pageviews.events_applied)"
assert_eq "a's meta events_rejected" "$N_BAD" "$(meta "$(DB a)" pipeline.pageviews.events_rejected)"
output_latest "$OUT" >"$WORK/records.final"
assert_files_eq "latest output record per key at the end vs awk" "$WORK/records.expected" "$WORK/records.final"
# A partitions table lists what its instance took, never more.
while read -r x parts; do
    for p in ${parts//,/ }; do
        grep -qE "event=partition_assigned partition=$p " "$(LOG "$x")" ||
            fail "$x's partitions table listed partition $p ([$parts]), but $x never logged partition_assigned for it"
    done
done < <(sort -u "$WORK/held.timeline")
ok
check_positions "a, after b stopped and a took its partitions over" "$(DB a)" "$IN"

finish "b took [$B_FIRST] from a; a took them back ${takeover_s} s after b's kill; b came back with [$B_LAST], a took them ${handover_s} s after b stopped; $(wc -l <"$WORK/produced") chunks streamed; $N_VIEWS views, $N_BAD malformed"
