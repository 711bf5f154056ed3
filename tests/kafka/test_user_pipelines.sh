#!/usr/bin/env bash
# test_user_pipelines.sh - the two example pipeline files, which tally knows
# only from their @state and @fold (examples/pipelines/pageviews.sql and
# sensor_max.sql), run by `tally run --pipeline FILE` on the real broker, and
# exact against awk. Their topics come from `tally topics create --pipeline
# FILE` (4 partitions, the output compacted).
#
#   1. pageviews, input keyed by page: views and malformed events (each with
#      the reason tally must give), more arriving in chunks while tally is
#      killed with SIGKILL at random moments KILLS times (snapshots every
#      second, outside the state directory, which is deleted after kill
#      WIPE_AFTER); then one run to the end. page_views equals awk exactly,
#      so does the latest output per key (the row as a JSON object, keyed
#      page#window_start_ms); the DLQ holds each malformed event once, with
#      its reason; meta's counters are the valid and malformed records of
#      each input partition; the changelog's counters chains cover every
#      input partition once; the recorded input positions are the ends; each
#      row's part is its page's input partition.
#   2. sensor_max, decimal temperatures (max per sensor per hour in integer
#      millionths, readings per hour), with readings @check refuses (below
#      absolute zero, above 1000) and ones with more than 6 decimals: exact
#      after a first run (which takes a snapshot and stops); then a run
#      without snapshots consumes more, is killed, and its state directory
#      deleted: the next run restores that snapshot and replays exactly the
#      changelog after it, and state and outputs are exact again; then more
#      readings, a kill while they drain, and state and snapshots both
#      deleted: every partition is rebuilt from the changelog, exact again.
#      Exact, each time: sensor_max and the latest output per key equal awk,
#      the DLQ holds each refused reading once with its reason, meta's
#      counters and the recorded input positions are the input's.
# shellcheck source=../lib/tally.sh
source "$(dirname "$0")/../lib/tally.sh"

PARTITIONS=4
N_PRE=12000      # page views produced before the first start
CHUNKS=12        # then CHUNKS x N_CHUNK more, one chunk a second
N_CHUNK=1000
BAD_PRE=18       # malformed events, before and per chunk
BAD_PER_CHUNK=2
KILLS=6
WIPE_AFTER=" 3 " # kills after which the state directory is deleted
N_SENSOR=(0 6000 3000 4000) # readings of sensor_max parts 1..3
BAD_SENSOR=16               # refused readings per part

PV_ROWS='SELECT page, window_start_ms, views FROM page_views'
PV_SPEC=(page:text window_start_ms:int views:int)
SM_ROWS='SELECT sensor, hour_start_ms, max_micros, readings FROM sensor_max'
SM_SPEC=(sensor:text hour_start_ms:int max_micros:int readings:int)

# ---- a bad file is refused before any broker is needed ----------------------
sed 's/^-- @fold$/-- @folds/' "$PAGEVIEWS_SQL" >"$WORK/bad.sql"
line=$(grep -n '^-- @folds$' "$WORK/bad.sql" | cut -d: -f1)
expect_usage_error "unknown directive" --pipeline "$WORK/bad.sql" --brokers "$KAFKA_BROKERS" --state-dir "$WORK/none"
expect_in "$WORK/usage.err" "unknown directive" "$WORK/bad.sql:$line: unknown directive"
[[ ! -e "$WORK/none" ]] || fail "a refused pipeline file created the state directory"
ok

# user_topics FILE: tally topics create --pipeline FILE with the stream's
# names: all five created, PARTITIONS each, the output compacted.
# (Not through `run`, whose OUT would hide the output topic's name.)
user_topics() {
    local what rc=0
    what="tally topics create --pipeline $(basename "$1")"
    tally topics create --pipeline "$1" --brokers "$KAFKA_BROKERS" --partitions "$PARTITIONS" \
        --input-topic "$IN" --output-topic "$OUT" --topic-prefix "$PREFIX" >"$WORK/topics.out" 2>"$WORK/topics.err" || rc=$?
    assert_eq "$what: exit status (stderr: $(head -c 300 "$WORK/topics.err"))" 0 "$rc"
    assert_eq "$what: topics created" 5 "$(grep -c "partitions=$PARTITIONS .*status=created" "$WORK/topics.out")"
    expect_in "$WORK/topics.out" "$what" "topic=$IN partitions=$PARTITIONS cleanup.policy=delete status=created" \
        "topic=$OUT partitions=$PARTITIONS cleanup.policy=compact status=created"
}

# user_run FILE ARGS...: `tally run --pipeline FILE` on the stream, with a log
# of its own ($LOG = $WORK/runN.log; RUN counts the runs); sets TALLY_PID.
user_run() {
    local file=$1
    shift
    RUN=$((RUN + 1))
    LOG=$WORK/run$RUN.log
    tally_bg "$LOG" run --pipeline "$file" --brokers "$KAFKA_BROKERS" "${STREAM_ARGS[@]}" --http off "$@"
}

# user_run_started FILE ARGS...: user_run, until event=started; RECOVERED is
# its event=recovered line.
user_run_started() {
    user_run "$@"
    tally_wait_started "$TALLY_PID" "$LOG"
    RECOVERED=$(grep -m1 'event=recovered ' "$LOG" || true)
    [[ -n "$RECOVERED" ]] || fail "run $RUN: no event=recovered line before event=started"
}

# check_exact WHAT DB ROWS_SQL EXPECTED NKEYS SPEC...: the state rows
# (ROWS_SQL) equal EXPECTED, and the latest output per key equals them as
# records (state_records NKEYS SPEC).
check_exact() {
    local what=$1 db=$2 sql=$3 expected=$4 nkeys=$5
    shift 5
    [[ -s "$expected" ]] || fail "$what: no expected rows (test bug)"
    sqlite3 -batch -readonly -separator $'\t' "$db" "$sql" | sort >"$WORK/state.actual" ||
        fail "$what: cannot read $db"
    assert_files_eq "$what: state rows vs awk" "$expected" "$WORK/state.actual"
    state_records "$nkeys" "$@" <"$expected" >"$WORK/records.expected"
    output_latest "$OUT" >"$WORK/records.actual"
    assert_files_eq "$what: latest output record per key vs awk" "$WORK/records.expected" "$WORK/records.actual"
}

# check_counters WHAT DB PIPELINE N_VALID N_BAD: meta's totals, and per input
# partition the valid and malformed records it holds.
check_counters() {
    local what=$1 db=$2 pipeline=$3
    assert_eq "$what: meta events_applied" "$4" "$(meta "$db" "pipeline.$pipeline.events_applied")"
    assert_eq "$what: meta events_rejected" "$5" "$(meta "$db" "pipeline.$pipeline.events_rejected")"
    input_counts "$IN" >"$WORK/counters.expected"
    partition_counters "$db" "$pipeline" $(seq 0 $((PARTITIONS - 1))) >"$WORK/counters.actual"
    assert_files_eq "$what: meta applied and rejected per partition vs the input's valid and malformed records" \
        "$WORK/counters.expected" "$WORK/counters.actual"
}

# expect_recovered WHAT SOURCE SNAPSHOT DB_STATE REPLAYED: RECOVERED's fields.
expect_recovered() {
    assert_eq "$1: recovered source" "$2" "$(log_field "$RECOVERED" source)"
    assert_eq "$1: recovered snapshot" "$3" "$(log_field "$RECOVERED" snapshot)"
    assert_eq "$1: recovered db" "$4" "$(log_field "$RECOVERED" db)"
    assert_eq "$1: records_replayed" "$5" "$(log_field "$RECOVERED" records_replayed)"
}

# =============================== 1. pageviews ===============================
new_stream pageviews.db
user_topics "$PAGEVIEWS_SQL"
RUN_ARGS=(--max-batch 200 --snapshot-dir "$WORK/snaps" --snapshot-interval 1s)

: >"$WORK/views.tsv"
: >"$WORK/bad.kv"
: >"$WORK/reasons.tsv"
gen_pageviews "$N_PRE" 4711 "$WORK/views.tsv" >"$WORK/pre.kv"
gen_bad_pageviews "$BAD_PRE" pre "$WORK/reasons.tsv" >>"$WORK/bad.kv"
mix "$WORK/pre.kv" "$WORK/bad.kv" >"$WORK/chunk0.kv"
for ((c = 1; c <= CHUNKS; c++)); do
    gen_pageviews "$N_CHUNK" $((100 + c)) "$WORK/views.tsv" >"$WORK/views$c.kv"
    gen_bad_pageviews "$BAD_PER_CHUNK" "chunk$c" "$WORK/reasons.tsv" >"$WORK/bad$c.kv"
    cat "$WORK/bad$c.kv" >>"$WORK/bad.kv"
    mix "$WORK/views$c.kv" "$WORK/bad$c.kv" >"$WORK/chunk$c.kv"
done
N_VIEWS=$(wc -l <"$WORK/views.tsv")
N_BAD=$(wc -l <"$WORK/bad.kv")
produce "$IN" "$WORK/chunk0.kv"
produce_chunks "$IN" "$CHUNKS"

kill9_loop "$KILLS" "$WIPE_AFTER" "$DB" 'SELECT coalesce(sum(views), 0) FROM page_views' 1 2.5 \
    user_run "$PAGEVIEWS_SQL" "${RUN_ARGS[@]}"
mid_stream=$MOVED
wait_producer
assert_eq "records in the pageviews input" $((N_VIEWS + N_BAD)) "$(topic_records "$IN")"
end_offsets "$IN" >"$WORK/ends"
awk '$2 == 0 { exit 1 }' "$WORK/ends" || fail "an input partition is empty: $(tr '\n' ' ' <"$WORK/ends")"

# The run after the wipe rebuilt what the runs before had committed: from a
# snapshot and the changelog, or each partition from the changelog.
wipe=$(tr -d ' ' <<<"$WIPE_AFTER")
after_wipe=$WORK/run$((wipe + 1)).log
grep -qE 'event=recovered source=(snapshot|changelog) |event=partition_assigned .*source=(snapshot|changelog) ' "$after_wipe" ||
    fail "run $((wipe + 1)), after the state directory was deleted, rebuilt nothing: $(grep -E 'event=(recovered|partition_assigned)' "$after_wipe" | cut -c1-200)"
ok

user_run_started "$PAGEVIEWS_SQL" "${RUN_ARGS[@]}"
wait_total "$DB" 'SELECT coalesce(sum(views), 0) FROM page_views' "$N_VIEWS" "$PREFIX" "$N_BAD" 150 "$TALLY_PID"
tally_stop "$TALLY_PID"

expected_page_views "$WORK/views.tsv" >"$WORK/pv.expected"
check_exact "pageviews after $KILLS kills" "$DB" "$PV_ROWS" "$WORK/pv.expected" 2 "${PV_SPEC[@]}"
check_dlq "$PREFIX" "$IN" "$WORK/bad.kv"
check_dlq_reasons "$PREFIX" "$WORK/reasons.tsv"
check_counters "pageviews" "$DB" pageviews "$N_VIEWS" "$N_BAD"
check_counters_chain "$PREFIX" "$IN" pageviews
check_positions "pageviews" "$DB" "$IN"
check_row_parts "pageviews" "$DB" 'SELECT DISTINCT part, page FROM page_views' "$IN"
rebuilds=$(cat "$WORK"/run*.log | grep -cE 'event=recovered source=(snapshot|changelog) ' || true)
pv_summary="pageviews: $KILLS kills ($mid_stream while the state moved), $rebuilds rebuilds from a snapshot, $N_VIEWS views, $N_BAD malformed"
note "$pv_summary"

# =============================== 2. sensor_max ==============================
new_stream sensor_max.db 2
user_topics "$SENSOR_MAX_SQL"
SNAPS=$WORK/snaps2
: >"$WORK/readings.tsv"
: >"$WORK/sbad.kv"
: >"$WORK/sreasons.tsv"
N_READINGS=0
N_SBAD=0

# produce_readings P: sensor_max part P to the input; the expectations grow.
produce_readings() {
    local p=$1
    : >"$WORK/readings$p.tsv"
    gen_sensor_readings "${N_SENSOR[p]}" $((60 + p)) "$WORK/readings$p.tsv" >"$WORK/readings$p.kv"
    gen_bad_readings "$BAD_SENSOR" "part$p" "$WORK/sreasons.tsv" >"$WORK/sbad$p.kv"
    mix "$WORK/readings$p.kv" "$WORK/sbad$p.kv" >"$WORK/sinput$p.kv"
    produce "$IN" "$WORK/sinput$p.kv"
    cat "$WORK/readings$p.tsv" >>"$WORK/readings.tsv"
    cat "$WORK/sbad$p.kv" >>"$WORK/sbad.kv"
    N_READINGS=$((N_READINGS + N_SENSOR[p]))
    N_SBAD=$((N_SBAD + BAD_SENSOR))
}

# sensor_exact WHAT: state, outputs, dead letters, counters and positions.
sensor_exact() {
    expected_sensor_max "$WORK/readings.tsv" >"$WORK/sm.expected"
    check_exact "$1" "$DB" "$SM_ROWS" "$WORK/sm.expected" 2 "${SM_SPEC[@]}"
    check_dlq "$PREFIX" "$IN" "$WORK/sbad.kv"
    check_dlq_reasons "$PREFIX" "$WORK/sreasons.tsv"
    check_counters "$1" "$DB" sensor_max "$N_READINGS" "$N_SBAD"
    check_positions "$1" "$DB" "$IN"
}
SM_TOTAL='SELECT coalesce(sum(readings), 0) FROM sensor_max'

# ---- a first run: exact, a snapshot of its state, a clean stop ---------------
produce_readings 1
user_run_started "$SENSOR_MAX_SQL" --snapshot-dir "$SNAPS" --snapshot-interval 500ms
expect_recovered "sensor_max, first start" new - missing 0
wait_total "$DB" "$SM_TOTAL" "$N_READINGS" "$PREFIX" "$N_SBAD" 60 "$TALLY_PID"
wait_snapshot_of "$DB" "$LOG" 30 "$TALLY_PID"
S1=$SNAP_ID
S1_SEQ=$(db_seq "$DB")
tally_stop "$TALLY_PID"
sensor_exact "sensor_max, first run"
# The generator made the readings this test is about: below zero, exactly
# -273.15 and exactly 1000 (an hour's max).
assert_eq "readings below zero, at -273.15, hours whose max is 1000" "yes yes yes" \
    "$(awk -F'\t' 'FILENAME ~ /readings/ && $3 < 0 { neg = 1 } FILENAME ~ /readings/ && $3 == -273150000 { zero = 1 }
        FILENAME ~ /expected/ && $3 == 1000000000 { top = 1 }
        END { print (neg ? "yes" : "no"), (zero ? "yes" : "no"), (top ? "yes" : "no") }' "$WORK/readings.tsv" "$WORK/sm.expected")"

# ---- more, no snapshots, kill -9, the state directory lost -------------------
produce_readings 2
user_run_started "$SENSOR_MAX_SQL" --snapshot-dir "$SNAPS" --snapshot-interval 0
expect_recovered "sensor_max, restart after a clean stop" local - intact 0
wait_total "$DB" "$SM_TOTAL" "$N_READINGS" "$PREFIX" "$N_SBAD" 60 "$TALLY_PID"
seq=$(db_seq "$DB")
((seq > S1_SEQ)) || fail "no changelog after snapshot $S1 (test bug)"
tally_kill9 "$TALLY_PID"
rm -rf "$STATE"
user_run_started "$SENSOR_MAX_SQL" --snapshot-dir "$SNAPS" --snapshot-interval 500ms
expect_recovered "sensor_max, state directory lost" snapshot "$S1" missing $((seq - S1_SEQ))
wait_total "$DB" "$SM_TOTAL" "$N_READINGS" "$PREFIX" "$N_SBAD" 60 "$TALLY_PID"
sensor_exact "sensor_max, state directory lost"

# ---- more, kill -9 while they drain, state and snapshots lost ----------------
produce_readings 3
sleep "$(random_pause 0 1)" # a random moment of the drain, or after it
tally_kill9 "$TALLY_PID"
rm -rf "$STATE" "$SNAPS"
user_run_started "$SENSOR_MAX_SQL" --snapshot-dir "$SNAPS" --snapshot-interval 0
expect_recovered "sensor_max, state and snapshots lost" new - missing 0
wait_total "$DB" "$SM_TOTAL" "$N_READINGS" "$PREFIX" "$N_SBAD" 60 "$TALLY_PID"
tally_stop "$TALLY_PID"
assigned=$(grep 'event=partition_assigned ' "$LOG" || true)
assert_eq "sensor_max, state and snapshots lost: partitions rebuilt from the changelog" "$PARTITIONS" \
    "$(grep -cE 'source=changelog .*records=[1-9]' <<<"$assigned")"
replayed=$(sed -n 's/.* records=\([0-9]*\).*/\1/p' <<<"$assigned" | awk '{ n += $1 } END { print n + 0 }')
sensor_exact "sensor_max, state and snapshots lost"
check_counters_chain "$PREFIX" "$IN" sensor_max
check_row_parts "sensor_max" "$DB" 'SELECT DISTINCT part, sensor FROM sensor_max' "$IN"

finish "$pv_summary; sensor_max: $N_READINGS readings, $N_SBAD refused, restored from snapshot $S1 and from the whole changelog ($replayed records)"
