#!/usr/bin/env bash
# test_run_recovery.sh - `tally run` brings back a lost or damaged state
# database by itself, on a real broker, and ends exact every time. One
# pipeline (snapshots in a directory outside --state-dir) goes through, in order:
#
#   1. changelog table pruning: with --changelog-retention 0 the rows up to
#      the newest snapshot's last_seq are deleted (event=changelog_pruned);
#      with --changelog-retention 1h they stay;
#   2. kill -9, then the whole state directory deleted: the restart restores
#      the newest snapshot (source=snapshot, taken by the pruned run, holding
#      only the first part of the data) and replays exactly the changelog
#      records after it (records_replayed = seq at the kill - the snapshot's
#      last_seq > 0);
#   3. the newest snapshot corrupted (bytes flipped in the middle), the
#      database deleted: event=snapshot_rejected for it, the one before is
#      restored, the tail replayed;
#   4. the same with the newest snapshot truncated;
#   5. the database corrupted in place (b-tree pages overwritten) after a
#      clean stop: event=database_failed_check, the file is moved aside
#      unchanged (orders.db.failed-*), the newest snapshot is restored;
#   6. after a kill -9 with the database deleted (its -wal and -shm left):
#      `tally recover --dry-run` prints the plan (the snapshot marked, the
#      changelog offsets from the snapshot's manifest to the topic's end, the
#      records to replay), exits 0 and changes nothing (state directory,
#      snapshot files and topics byte-identical); `tally recover` then does it
#      (replaying exactly the planned number of records, moving the orphaned
#      -wal aside) and exits 0; the next `tally run` finds the database intact
#      (source=local, records_replayed=0);
#   7. the state directory and the snapshot directory both deleted: nothing
#      to catch up on at the start (source=new); each of the 3 partitions is
#      rebuilt from its changelog partition as it is assigned
#      (event=partition_assigned source=changelog; their records add up to the
#      committed records of the topic).
#
# After every recovery the SQLite state and the latest output per key equal
# the awk totals exactly, and the input positions the database recorded are
# the input's end offsets (every one of those restarts found nothing left to
# consume: the positions come from the replayed batches' counters records);
# at the end the DLQ holds each malformed line once.
# shellcheck source=../lib/tally.sh
source "$(dirname "$0")/../lib/tally.sh"

PARTS=5
N_PART=(0 2000 800 800 800 800) # orders per part, part 1..5
BAD_PART=4                       # malformed lines per part

new_stream orders.db
SNAPS=$WORK/snaps
COMMON=("${STREAM_ARGS[@]}" --snapshot-dir "$SNAPS" --snapshot-keep 3 --max-batch 200)

create_topic "$IN" 3
: >"$WORK/orders.tsv"
: >"$WORK/bad.kv"
first=1
for ((p = 1; p <= PARTS; p++)); do
    : >"$WORK/part$p.tsv"
    gen_orders "${N_PART[p]}" $((500 + p)) "$first" "$WORK/part$p.tsv" >"$WORK/orders$p.kv"
    gen_malformed "$BAD_PART" "part$p" >"$WORK/bad$p.kv"
    mix "$WORK/orders$p.kv" "$WORK/bad$p.kv" >"$WORK/input$p.kv"
    first=$((first + N_PART[p]))
done
N_ORDERS=0
N_BAD=0

# produce_part P: part P goes to the input; the expected totals grow.
produce_part() {
    produce "$IN" "$WORK/input$1.kv"
    cat "$WORK/part$1.tsv" >>"$WORK/orders.tsv"
    cat "$WORK/bad$1.kv" >>"$WORK/bad.kv"
    N_ORDERS=$((N_ORDERS + N_PART[$1]))
    N_BAD=$((N_BAD + BAD_PART))
}

# start_run ARGS...: a new `tally run` with COMMON and ARGS, its own log
# ($LOG); waits for event=started and sets RECOVERED to its recovered line.
start_run() { next_run_started "${COMMON[@]}" "$@"; }

# expect_recovered WHAT SOURCE SNAPSHOT DB_STATE REPLAYED: the fields of
# RECOVERED (REPLAYED "" : not checked).
expect_recovered() {
    local what=$1
    assert_eq "$what: source" "$2" "$(log_field "$RECOVERED" source)"
    assert_eq "$what: snapshot" "$3" "$(log_field "$RECOVERED" snapshot)"
    assert_eq "$what: db" "$4" "$(log_field "$RECOVERED" db)"
    if [[ -n "$5" ]]; then
        assert_eq "$what: records_replayed" "$5" "$(log_field "$RECOVERED" records_replayed)"
    fi
}

# damage_and_expect KIND NEWEST_ID NEWEST_PATH: the newest snapshot file
# flipped (KIND=flip) or truncated (KIND=truncate), the database deleted after
# a clean stop; the restart must reject it and restore the one before (ids
# sort by time), replay the tail after that one, and end exact.
damage_and_expect() {
    local kind=$1 newest=$2 newest_path=$3 seq size rejected previous previous_seq
    seq=$(db_seq "$DB")
    tally_stop "$TALLY_PID"
    assert_eq "$kind: the newest snapshot file" "snapshot-$newest.db" \
        "$(find "$SNAPS" -maxdepth 1 -name 'snapshot-*.db' -printf '%f\n' | sort | tail -n 1)"
    previous=$(find "$SNAPS" -maxdepth 1 -name 'snapshot-*.db' -printf '%f\n' | sort | tail -n 2 | head -n 1)
    previous=${previous#snapshot-}
    previous=${previous%.db}
    [[ "$previous" != "$newest" ]] || fail "$kind: only one snapshot is kept (test bug)"
    previous_seq=${previous##*-}
    cp "$newest_path" "$WORK/newest.orig"
    size=$(stat -c %s "$newest_path")
    if [[ "$kind" == flip ]]; then
        printf '\xff\xff\xff\xff' | dd of="$newest_path" bs=1 seek=$((size / 2)) conv=notrunc status=none
        assert_eq "$kind: size unchanged" "$size" "$(stat -c %s "$newest_path")"
    else
        truncate -s -4096 "$newest_path"
        assert_eq "$kind: size" $((size - 4096)) "$(stat -c %s "$newest_path")"
    fi
    ! cmp -s "$WORK/newest.orig" "$newest_path" || fail "$kind: the snapshot file did not change (test bug)"
    rm -f "$DB" "$DB-wal" "$DB-shm"

    start_run --snapshot-interval 500ms
    rejected=$(grep "event=snapshot_rejected " "$LOG" || true)
    assert_eq "$kind: snapshot_rejected lines" 1 "$(grep -c . <<<"$rejected")"
    assert_eq "$kind: the rejected snapshot" "$newest" "$(log_field "$rejected" snapshot)"
    if [[ "$kind" == flip ]]; then
        [[ "$rejected" == *"fails its checksum"* ]] || fail "$kind: the rejection does not name the checksum: $rejected"
    else
        [[ "$rejected" == *"has $((size - 4096)) bytes, its manifest says $size"* ]] ||
            fail "$kind: the rejection does not name the size: $rejected"
    fi
    ok
    ((seq > previous_seq)) || fail "$kind: no tail after the previous snapshot (test bug)"
    expect_recovered "$kind" snapshot "$previous" missing $((seq - previous_seq))
    wait_done "$DB" "$N_ORDERS" "$PREFIX" "$N_BAD" 60 "$TALLY_PID"
    check_totals "$kind: recovered from $previous" "$WORK/orders.tsv" "$DB" "$OUT"
    check_positions "$kind: recovered from $previous" "$DB" "$IN"
}

# ---- 1. pruning: --changelog-retention 0 ------------------------------------
produce_part 1
start_run --snapshot-interval 500ms --changelog-retention 0
expect_recovered "first start" new - missing 0
wait_done "$DB" "$N_ORDERS" "$PREFIX" "$N_BAD" 60 "$TALLY_PID"
wait_snapshot_of "$DB" "$LOG" 30 "$TALLY_PID"
S1=$SNAP_ID
S1_SEQ=$(db_seq "$DB")
limit=$((SECONDS + 20))
until grep -q "event=changelog_pruned .*below_seq=$((S1_SEQ + 1))\$" "$LOG"; do
    ((SECONDS < limit)) || fail "no event=changelog_pruned below_seq=$((S1_SEQ + 1)) within 20 s of snapshot $S1"
    sleep 0.2
done
newest_seq=$(sqlval "$DB" 'SELECT last_seq FROM snapshots ORDER BY created_ms DESC LIMIT 1')
assert_eq "last_seq of the newest snapshot in the snapshots table" "$S1_SEQ" "$newest_seq"
assert_eq "changelog rows with seq <= the newest snapshot's last_seq ($newest_seq)" 0 \
    "$(sqlval "$DB" "SELECT count(*) FROM changelog WHERE seq <= $newest_seq")"
# Every row up to the snapshot was deleted exactly once.
assert_eq "rows in the changelog_pruned lines" "$S1_SEQ" \
    "$(grep 'event=changelog_pruned ' "$LOG" | sed -E 's/.* rows=([0-9]+).*/\1/' | awk '{ n += $1 } END { print n + 0 }')"
tally_stop "$TALLY_PID"
check_totals "pruned changelog table" "$WORK/orders.tsv" "$DB" "$OUT"
ls "$SNAPS" >"$WORK/snaps.before"

# ---- 2. kill -9, state directory deleted: newest snapshot + changelog tail --
produce_part 2
start_run --snapshot-interval 0
expect_recovered "restart after a clean stop" local - intact 0
wait_done "$DB" "$N_ORDERS" "$PREFIX" "$N_BAD" 60 "$TALLY_PID"
seq=$(db_seq "$DB")
tally_kill9 "$TALLY_PID"
ls "$SNAPS" >"$WORK/snaps.after"
assert_files_eq "snapshot directory after a run with --snapshot-interval 0" "$WORK/snaps.before" "$WORK/snaps.after"
rm -rf "$STATE"
start_run --snapshot-interval 500ms --changelog-retention 1h
((seq > S1_SEQ)) || fail "no changelog tail after snapshot $S1 (test bug)"
expect_recovered "state directory deleted" snapshot "$S1" missing $((seq - S1_SEQ))
[[ -f "$SNAPS/snapshot-$(log_field "$RECOVERED" snapshot).db" ]] ||
    fail "the recovered line names no snapshot file of $SNAPS: $RECOVERED"
ok
if grep -q 'event=snapshot_rejected' "$LOG"; then fail "a snapshot was rejected: $(grep 'event=snapshot_rejected' "$LOG")"; fi
ok
assert_eq "meta recovery.source" snapshot "$(meta "$DB" recovery.source)"
assert_eq "meta recovery.snapshot" "$S1" "$(meta "$DB" recovery.snapshot)"
wait_done "$DB" "$N_ORDERS" "$PREFIX" "$N_BAD" 60 "$TALLY_PID"
check_totals "state directory deleted after kill -9" "$WORK/orders.tsv" "$DB" "$OUT"
check_positions "state directory deleted after kill -9" "$DB" "$IN"

# With --changelog-retention 1h a snapshot prunes none of these young rows.
wait_snapshot_of "$DB" "$LOG" 30 "$TALLY_PID"
S2=$SNAP_ID
S2_SEQ=$(db_seq "$DB")
sleep 0.5
rows=$(sqlval "$DB" "SELECT count(*) FROM changelog WHERE seq <= $S2_SEQ")
((rows > 0)) || fail "with --changelog-retention 1h the rows up to snapshot $S2 were deleted"
if grep -q 'event=changelog_pruned' "$LOG"; then fail "changelog pruned within the retention: $(grep 'event=changelog_pruned' "$LOG")"; fi
ok

# ---- 3. newest snapshot corrupted ------------------------------------------
produce_part 3
wait_done "$DB" "$N_ORDERS" "$PREFIX" "$N_BAD" 60 "$TALLY_PID"
wait_snapshot_of "$DB" "$LOG" 30 "$TALLY_PID"
damage_and_expect flip "$SNAP_ID" "$SNAP_PATH"

# ---- 4. newest snapshot truncated ------------------------------------------
produce_part 4
wait_done "$DB" "$N_ORDERS" "$PREFIX" "$N_BAD" 60 "$TALLY_PID"
wait_snapshot_of "$DB" "$LOG" 30 "$TALLY_PID"
damage_and_expect truncate "$SNAP_ID" "$SNAP_PATH"

# ---- 5. database corrupted in place ----------------------------------------
wait_snapshot_of "$DB" "$LOG" 30 "$TALLY_PID"
S6=$SNAP_ID
tally_stop "$TALLY_PID"
[[ ! -s "$DB-wal" ]] || fail "a clean stop left a non-empty $DB-wal (test assumes a checkpointed file)"
pages=$(sqlite3 -batch "$DB" "SELECT group_concat(pageno, ' ') FROM dbstat WHERE name = 'order_window_state'")
[[ -n "$pages" ]] || fail "cannot find the pages of order_window_state (sqlite3 without dbstat?)"
page_size=$(sqlite3 -batch "$DB" 'PRAGMA page_size')
for page in $pages; do
    head -c "$page_size" /dev/urandom | dd of="$DB" bs="$page_size" seek=$((page - 1)) conv=notrunc status=none
done
cp "$DB" "$WORK/corrupt.db"
check=$(sqlite3 -batch "$WORK/corrupt.db" 'PRAGMA quick_check' 2>&1 | head -n 1 || true)
[[ "$check" != ok ]] || fail "the overwritten database still passes quick_check (test bug)"
ok
note "corrupted pages $pages of $(($(stat -c %s "$DB") / page_size)); sqlite3: $check"
start_run --snapshot-interval 0
failed=$(grep -m1 'event=database_failed_check ' "$LOG" || true)
[[ -n "$failed" && "$failed" == *"db=$DB "* ]] || fail "no event=database_failed_check for $DB: $(grep -m3 'level=warn' "$LOG" || true)"
ok
moved=$(grep -m1 'event=database_moved_aside ' "$LOG" || true)
aside=$(log_field "$moved" to)
[[ "$aside" == "$DB.failed-"* ]] || fail "no event=database_moved_aside to $DB.failed-*: $moved"
assert_files_eq "the moved-aside database (unchanged)" "$WORK/corrupt.db" "$aside"
expect_recovered "database corrupt in place" snapshot "$S6" failed 0
wait_done "$DB" "$N_ORDERS" "$PREFIX" "$N_BAD" 60 "$TALLY_PID"
check_totals "database corrupt in place" "$WORK/orders.tsv" "$DB" "$OUT"
check_positions "database corrupt in place" "$DB" "$IN"

# ---- 6. tally recover --dry-run, then tally recover ------------------------
produce_part 5
wait_done "$DB" "$N_ORDERS" "$PREFIX" "$N_BAD" 60 "$TALLY_PID"
seq=$(db_seq "$DB")
tally_kill9 "$TALLY_PID"
rm -f "$DB"
wal_left=0
if [[ -e "$DB-wal" ]]; then
    wal_left=1
    cp "$DB-wal" "$WORK/orphan.wal"
fi
note "after the kill: $(cd "$STATE" && echo *) in the state directory"
S6_SEQ=${S6##*-}
((seq > S6_SEQ)) || fail "no changelog tail after snapshot $S6 (test bug)"
fingerprint() {
    (cd "$WORK" && find state snaps -type f -print0 | sort -z | xargs -0 sha256sum)
    for topic in "$PREFIX-changelog" "$PREFIX-snapshots" "$OUT" "$PREFIX-dlq"; do
        printf '%s ' "$topic"
        end_offsets "$topic" | tr '\n' ' '
        echo
    done
}
fingerprint >"$WORK/before.fp"
rc=0
"$TALLY" recover --pipeline orders --brokers "$KAFKA_BROKERS" --dry-run "${COMMON[@]}" \
    >"$WORK/plan.out" 2>"$WORK/plan.err" || rc=$?
assert_eq "tally recover --dry-run exit status (stderr: $(head -c 300 "$WORK/plan.err"))" 0 "$rc"
fingerprint >"$WORK/after.fp"
assert_files_eq "state dir, snapshot files and topic ends around the dry run" "$WORK/before.fp" "$WORK/after.fp"
[[ ! -e "$DB" ]] || fail "the dry run created $DB"
ok
grep -qxF "database    $DB: missing" "$WORK/plan.out" || fail "the plan does not say the database is missing: $(cat "$WORK/plan.out")"
grep -qE "^  \* $S6 .* verifies\$" "$WORK/plan.out" || fail "the plan does not mark $S6 as the chosen snapshot: $(cat "$WORK/plan.out")"
assert_eq "snapshots marked as chosen" 1 "$(grep -c '^  \* ' "$WORK/plan.out")"
grep -qxF "source      snapshot $S6" "$WORK/plan.out" || fail "the plan's source is not snapshot $S6: $(cat "$WORK/plan.out")"
grep -qxF "outcome     dry run: nothing was changed" "$WORK/plan.out" || fail "the plan has no dry-run outcome line"
grep -qxF "changelog   $PREFIX-changelog, 3 partition(s)" "$WORK/plan.out" || fail "the plan names no changelog topic with 3 partitions"
ok
# Per partition: from the snapshot manifest's offset + 1 to the topic's end.
end_offsets "$PREFIX-changelog" >"$WORK/changelog.ends"
while read -r p end; do
    from=$(grep -o "\"$PREFIX-changelog\\.$p\":[0-9]*" "$SNAPS/snapshot-$S6.json" | cut -d: -f2)
    [[ -n "$from" ]] || fail "the manifest of $S6 has no offset for changelog partition $p"
    grep -qxF "  [$p] from offset $((from + 1)) to $end" "$WORK/plan.out" ||
        fail "the plan does not replay partition $p from $((from + 1)) to $end: $(grep -F "[$p]" "$WORK/plan.out")"
    ok
done <"$WORK/changelog.ends"
planned=$(sed -nE 's/^replay +([0-9]+) record\(s\).*/\1/p' "$WORK/plan.out")
assert_eq "records the dry run plans to replay (seq at the kill - last_seq of $S6)" $((seq - S6_SEQ)) "$planned"

rc=0
"$TALLY" recover --pipeline orders --brokers "$KAFKA_BROKERS" "${COMMON[@]}" \
    >"$WORK/recover.log" 2>&1 || rc=$?
log_track "$WORK/recover.log"
assert_eq "tally recover exit status ($(tail -n 2 "$WORK/recover.log" | cut -c1-300))" 0 "$rc"
RECOVERED=$(grep -m1 'event=recovered ' "$WORK/recover.log" || true)
expect_recovered "tally recover" snapshot "$S6" missing "$planned"
if ((wal_left)); then
    # Applied to the restored database, it would corrupt it.
    moved_wal=$(find "$STATE" -maxdepth 1 -name 'orders.db.failed-*-wal' | sort | tail -n 1)
    [[ -n "$moved_wal" ]] || fail "the -wal left without its database was not moved aside: $(find "$STATE" -printf '%f ')"
    assert_files_eq "the -wal moved aside (unchanged)" "$WORK/orphan.wal" "$moved_wal"
fi
if grep -q 'event=started' "$WORK/recover.log"; then fail "tally recover started consuming"; fi
ok
assert_eq "orders in the recovered database" "$N_ORDERS" \
    "$(sqlval "$DB" 'SELECT coalesce(sum(count), 0) FROM order_window_state')"
check_positions "tally recover" "$DB" "$IN"
start_run --snapshot-interval 0
expect_recovered "tally run after tally recover" local - intact 0
wait_done "$DB" "$N_ORDERS" "$PREFIX" "$N_BAD" 60 "$TALLY_PID"
check_totals "tally recover" "$WORK/orders.tsv" "$DB" "$OUT"
tally_stop "$TALLY_PID"

# ---- 7. no database, no snapshot: the whole changelog topic -----------------
# Nothing to catch up on at the start (source=new); each input partition is
# rebuilt from its changelog partition when it is assigned, before it is read.
rm -rf "$STATE" "$SNAPS"
committed=$(read_topic "$PREFIX-changelog" '%o\n' | wc -l)
start_run --snapshot-interval 0
expect_recovered "state and snapshots deleted" new - missing 0
wait_done "$DB" "$N_ORDERS" "$PREFIX" "$N_BAD" 60 "$TALLY_PID"
tally_stop "$TALLY_PID"
assigned=$(grep 'event=partition_assigned ' "$LOG" || true)
assert_eq "state and snapshots deleted: partitions rebuilt" 3 "$(grep -c 'source=changelog' <<<"$assigned")"
assert_eq "state and snapshots deleted: records replayed for them" "$committed" \
    "$(sed -n 's/.* records=\([0-9]*\).*/\1/p' <<<"$assigned" | awk '{ n += $1 } END { print n + 0 }')"
check_totals "whole changelog replayed" "$WORK/orders.tsv" "$DB" "$OUT"
check_positions "whole changelog replayed" "$DB" "$IN"
check_dlq "$PREFIX" "$IN" "$WORK/bad.kv"

finish "$RUN runs of tally run, $N_ORDERS orders; the whole changelog was $committed records"
