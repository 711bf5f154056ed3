#!/usr/bin/env bash
# test_user_pipeline.sh - the two example pipeline files (examples/pipelines/
# pageviews.sql, sensor_max.sql), which tally knows only from their @state
# and @fold, through the offline commands, against awk:
#
#   - tally ingest --pipeline FILE: the summary counts, the state table equals
#     awk exactly, each malformed or refused event is in the reject file with
#     its line and reason, meta's counters; the derived changelog holds one
#     row per changed key per batch, keyed by the primary key joined with
#     '#', the newest image of each key being its row as a JSON object;
#   - tally changelog export, then tally replay --pipeline-file FILE into a
#     new database: the state table (schema and rows, ordered by key) and the
#     changelog are identical to the ingested database's, and equal awk; a
#     second replay changes nothing; without --pipeline-file replay refuses
#     the unknown entity;
#   - a wrong pipeline file (an unknown directive, a state table without a
#     primary key, a @field of an unknown type, a @fold that deletes or
#     writes outside the state table) is refused by tally ingest and tally run
#     with exit status 2 and FILE:LINE: why, creating nothing.
# shellcheck source=../lib/data.sh
source "$(dirname "$0")/../lib/data.sh"

# dump DB TABLE ORDER_BY > the table's schema and its rows as INSERT
# statements, ordered by ORDER_BY; then the changelog's rows, by seq.
dump() {
    sq "$1" ".schema $2" ".mode insert $2" "SELECT * FROM \"$2\" ORDER BY $3" \
        '.mode insert changelog' 'SELECT * FROM changelog ORDER BY seq'
}

# check_pipeline NAME FILE TABLE ORDER_BY ROWS_SQL NKEYS SPEC... -- with
# $WORK/NAME.jsonl (events), $WORK/NAME.expected (awk's rows),
# $WORK/NAME.reasons (each bad value's reason), N_VALID and N_BAD.
check_pipeline() {
    local name=$1 file=$2 table=$3 order=$4 rows=$5 nkeys=$6 a b total maxseq
    shift 6
    a=$WORK/$name-a.db
    b=$WORK/$name-b.db

    # ---- ingest ----
    run tally ingest --pipeline "$file" --db "$a" --batch 997 "$WORK/$name.jsonl"
    expect_rc "$name: ingest" 0
    assert_eq "$name: ingest lines" $((N_VALID + N_BAD)) "$(summary_field lines "$OUT")"
    assert_eq "$name: ingest applied" "$N_VALID" "$(summary_field applied "$OUT")"
    assert_eq "$name: ingest rejected" "$N_BAD" "$(summary_field rejected "$OUT")"
    assert_eq "$name: ingest skipped" 0 "$(summary_field skipped "$OUT")"
    assert_eq "$name: ingest pipeline" "$name" "$(summary_field pipeline "$OUT")"
    sq "$a" '.separator "\t"' "$rows" | sort >"$WORK/$name.state"
    assert_files_eq "$name: ingested $table vs awk" "$WORK/$name.expected" "$WORK/$name.state"
    assert_eq "$name: meta events_applied" "$N_VALID" "$(sq "$a" "SELECT value FROM meta WHERE key = 'pipeline.$name.events_applied'")"
    assert_eq "$name: meta events_rejected" "$N_BAD" "$(sq "$a" "SELECT value FROM meta WHERE key = 'pipeline.$name.events_rejected'")"

    # Each reject: its line of the input, its reason.
    jsonl_load "$WORK/$name-rejects.db" rejects "$a.rejects.jsonl"
    sq "$WORK/$name-rejects.db" '.separator "\t"' \
        "SELECT json_extract(j, '\$.line'), json_extract(j, '\$.input'), json_extract(j, '\$.error') FROM rejects" \
        >"$WORK/$name.rejects"
    assert_eq "$name: reject file lines" "$N_BAD" "$(wc -l <"$WORK/$name.rejects")"
    awk -F'\t' -v events="$WORK/$name.jsonl" -v reasons="$WORK/$name.reasons" '
        BEGIN {
            while ((getline l < events) > 0) line[++n] = l
            while ((getline l < reasons) > 0) { i = index(l, "\t"); why[substr(l, 1, i - 1)] = substr(l, i + 1) }
        }
        $2 != line[$1] { print "reject of line " $1 " holds " $2 ", the line is " line[$1] > "/dev/stderr"; bad = 1; next }
        !($2 in why) { print "line " $1 " rejected, but it is valid: " $2 " (" $3 ")" > "/dev/stderr"; bad = 1; next }
        index($3, why[$2]) != 1 { print "line " $1 ": error " $3 ", expected one starting " why[$2] > "/dev/stderr"; bad = 1; next }
        { seen[$2]++ }
        END { for (v in why) if (seen[v] != 1) { print "rejected " seen[v] + 0 " times: " v > "/dev/stderr"; bad = 1 }; exit bad }' \
        "$WORK/$name.rejects" || fail "$name: the reject file vs the malformed lines and their reasons"
    ok

    # The derived changelog: one row per changed key per batch; the newest
    # image of each key is its row, as the default emit writes it.
    assert_eq "$name: changelog rows = sum(key_seq)" "$(sq "$a" "SELECT sum(key_seq) FROM \"$table\"")" \
        "$(sq "$a" "SELECT count(*) FROM changelog WHERE entity = '$table'")"
    assert_eq "$name: changelog (key, key_seq) unique" 0 \
        "$(sq "$a" 'SELECT count(*) FROM (SELECT key, key_seq FROM changelog GROUP BY 1, 2 HAVING count(*) > 1)')"
    [[ "$(sq "$a" "SELECT max(key_seq) FROM \"$table\"")" -gt 1 ]] || fail "$name: no key changed in two batches (test bug)"
    ok
    state_records "$nkeys" "$@" <"$WORK/$name.expected" >"$WORK/$name.records"
    sq "$a" '.separator "\t"' "SELECT key, image FROM changelog c WHERE entity = '$table'
        AND key_seq = (SELECT max(key_seq) FROM changelog WHERE entity = c.entity AND key = c.key)" |
        sort >"$WORK/$name.images"
    assert_files_eq "$name: newest changelog image per key vs awk's rows as records" "$WORK/$name.records" "$WORK/$name.images"

    # ---- export, replay ----
    total=$(sq "$a" 'SELECT count(*) FROM changelog')
    maxseq=$(sq "$a" 'SELECT max(seq) FROM changelog')
    tally changelog export --db "$a" >"$WORK/$name.export.jsonl" 2>"$WORK/$name.export.err" ||
        fail "$name: changelog export failed: $(cat "$WORK/$name.export.err")"
    assert_eq "$name: exported lines" "$total" "$(wc -l <"$WORK/$name.export.jsonl")"
    run tally replay --db "$b" --pipeline-file "$file" "$WORK/$name.export.jsonl"
    expect_rc "$name: replay --pipeline-file" 0
    assert_eq "$name: replay rows" "$total" "$(summary_field rows "$OUT")"
    assert_eq "$name: replay changed" "$total" "$(summary_field changed "$OUT")"
    assert_eq "$name: replay gaps" 0 "$(summary_field gaps "$OUT")"
    assert_eq "$name: replay last_seq" "$maxseq" "$(summary_field last_seq "$OUT")"
    dump "$a" "$table" "$order" >"$WORK/$name-a.dump"
    dump "$b" "$table" "$order" >"$WORK/$name-b.dump"
    assert_files_eq "$name: $table and changelog, ingested vs replayed" "$WORK/$name-a.dump" "$WORK/$name-b.dump"
    sq "$b" '.separator "\t"' "$rows" | sort >"$WORK/$name.replayed"
    assert_files_eq "$name: replayed $table vs awk" "$WORK/$name.expected" "$WORK/$name.replayed"

    run tally replay --db "$b" --pipeline-file "$file" "$WORK/$name.export.jsonl"
    expect_rc "$name: second replay" 0
    assert_eq "$name: second replay changed" 0 "$(summary_field changed "$OUT")"
    assert_eq "$name: second replay unchanged" "$total" "$(summary_field unchanged "$OUT")"
    dump "$b" "$table" "$order" >"$WORK/$name-b2.dump"
    assert_files_eq "$name: $table and changelog after a second replay" "$WORK/$name-a.dump" "$WORK/$name-b2.dump"

    run tally replay --db "$WORK/$name-c.db" "$WORK/$name.export.jsonl"
    expect_rc "$name: replay without --pipeline-file" 1
    assert_contains "$name: replay without --pipeline-file" "$ERR" "unknown entity \"$table\" (pass its pipeline file with --pipeline-file)"
}

# ---- pageviews ---------------------------------------------------------------
: >"$WORK/pageviews.tsv"
: >"$WORK/pageviews.reasons"
gen_pageviews 20000 2024 "$WORK/pageviews.tsv" >"$WORK/pageviews.kv"
gen_bad_pageviews 27 cli "$WORK/pageviews.reasons" >"$WORK/pageviews.bad"
mix "$WORK/pageviews.kv" "$WORK/pageviews.bad" | cut -d'|' -f2- >"$WORK/pageviews.jsonl"
N_VALID=20000
N_BAD=27
expected_page_views "$WORK/pageviews.tsv" >"$WORK/pageviews.expected"
[[ $(wc -l <"$WORK/pageviews.expected") -ge 200 ]] || fail "fewer than 200 page windows (test bug)"
ok
check_pipeline pageviews "$PAGEVIEWS_SQL" page_views 'page, window_start_ms' \
    'SELECT page, window_start_ms, views FROM page_views' 2 page:text window_start_ms:int views:int

# ---- sensor_max --------------------------------------------------------------
: >"$WORK/sensor_max.tsv"
: >"$WORK/sensor_max.reasons"
gen_sensor_readings 15000 99 "$WORK/sensor_max.tsv" >"$WORK/sensor_max.kv"
gen_bad_readings 40 cli "$WORK/sensor_max.reasons" >"$WORK/sensor_max.bad"
mix "$WORK/sensor_max.kv" "$WORK/sensor_max.bad" | cut -d'|' -f2- >"$WORK/sensor_max.jsonl"
N_VALID=15000
N_BAD=40
expected_sensor_max "$WORK/sensor_max.tsv" >"$WORK/sensor_max.expected"
check_pipeline sensor_max "$SENSOR_MAX_SQL" sensor_max 'sensor, hour_start_ms' \
    'SELECT sensor, hour_start_ms, max_micros, readings FROM sensor_max' 2 \
    sensor:text hour_start_ms:int max_micros:int readings:int

# ---- wrong pipeline files ----------------------------------------------------
# refused WHAT FILE LINE WHY: tally ingest and tally run exit 2 with
# "FILE:LINE: WHY" on stderr and create neither database nor state directory.
refused() {
    local what=$1 file=$2 line=$3 why=$4
    rm -rf "$WORK/refused.db" "$WORK/refused-state"
    run tally ingest --pipeline "$file" --db "$WORK/refused.db" "$WORK/pageviews.jsonl"
    expect_rc "$what: tally ingest" 2
    assert_contains "$what: tally ingest" "$ERR" "tally ingest: $file:$line: $why"
    [[ ! -e "$WORK/refused.db" ]] || fail "$what: tally ingest created the database"
    run env -u KAFKA_BROKERS timeout 20 "$TALLY" run --pipeline "$file" --brokers 127.0.0.1:9 \
        --state-dir "$WORK/refused-state"
    expect_rc "$what: tally run" 2
    assert_contains "$what: tally run" "$ERR" "tally run: $file:$line: $why"
    [[ ! -e "$WORK/refused-state" ]] || fail "$what: tally run created the state directory"
    ok
}

# line_of PATTERN FILE: the number of the first line of FILE matching PATTERN.
line_of() { grep -n -m1 -- "$1" "$2" | cut -d: -f1; }

bad=$WORK/unknown-directive.sql
sed 's/^-- @param window_ms 60000$/-- @parm window_ms 60000/' "$PAGEVIEWS_SQL" >"$bad"
refused "unknown directive" "$bad" "$(line_of '^-- @parm' "$bad")" 'unknown directive "-- @parm window_ms 60000"'

bad=$WORK/no-primary-key.sql
sed 's/^    PRIMARY KEY (page, window_start_ms)$/    UNIQUE (page, window_start_ms)/' "$PAGEVIEWS_SQL" >"$bad"
refused "no primary key" "$bad" "$(line_of '^CREATE TABLE' "$bad")" "@state: table page_views has no PRIMARY KEY"

bad=$WORK/unknown-type.sql
sed 's/^\(-- @field celsius_micros celsius  \)decimal6/\1decimal7/' "$SENSOR_MAX_SQL" >"$bad"
refused "unknown @field type" "$bad" "$(line_of 'decimal7' "$bad")" '@field celsius_micros: unknown type "decimal7"'

bad=$WORK/fold-deletes.sql
{
    sed '/^-- @fold$/,$d' "$PAGEVIEWS_SQL"
    echo '-- @fold'
    echo 'INSERT INTO page_views (page, window_start_ms, views) VALUES (:page, 0, 1)'
    echo 'ON CONFLICT DO UPDATE SET views = views + 1;'
    echo "DELETE FROM page_views WHERE page = '/gone';"
} >"$bad"
refused "@fold deletes" "$bad" "$(line_of '^DELETE' "$bad")" "@fold: @fold deletes rows of page_views"

bad=$WORK/fold-outside.sql
{
    sed '/^-- @fold$/,$d' "$SENSOR_MAX_SQL"
    echo '-- @fold'
    echo "INSERT INTO meta (key, value) VALUES ('x', 1);"
} >"$bad"
refused "@fold writes outside the state table" "$bad" "$(line_of '^INSERT INTO meta' "$bad")" \
    "@fold: @fold writes to meta, outside the state table sensor_max"

# The sed edits above really changed the files (else the refusals prove nothing).
for f in unknown-directive no-primary-key unknown-type; do
    if cmp -s "$WORK/$f.sql" "$PAGEVIEWS_SQL" || cmp -s "$WORK/$f.sql" "$SENSOR_MAX_SQL"; then
        fail "$f.sql is an unchanged example file (test bug)"
    fi
done
ok

finish
