#!/usr/bin/env bash
# test_run_snapshot.sh - `tally run --snapshot-interval`: the daemon writes
# snapshots while it consumes, keeps the newest --snapshot-keep, and produces
# each manifest (keyed by pipeline) to the compacted <prefix>-snapshots topic.
# Every snapshot taken while batches were being committed is exactly the state
# at its manifest's changelog offsets: restored, it equals the changelog topic's
# records up to those offsets replayed into an empty database. An early
# snapshot, restored into a new state directory, and the daemon started on it
# again catches up from the changelog topic to exactly the same totals.
# shellcheck source=../lib/tally.sh
source "$(dirname "$0")/../lib/tally.sh"

N1=6000
N2=6000
stream_names
COMMON=("${TOPIC_ARGS[@]}" --instance-id "$INSTANCE" --commit-interval-ms 50 --max-batch 500)
SNAPS=$WORK/snaps

create_topic "$IN" 2
: >"$WORK/orders.tsv"
gen_orders "$N1" 11 1 "$WORK/orders.tsv" >"$WORK/first.kv"
gen_orders "$N2" 12 $((N1 + 1)) "$WORK/orders.tsv" >"$WORK/second.kv"
produce "$IN" "$WORK/first.kv"

tally_start "$WORK/run1.log" "${COMMON[@]}" --state-dir "$WORK/state1" --snapshot-dir "$SNAPS" \
    --snapshot-interval 500ms --snapshot-keep 2
tally_wait_started "$TALLY_PID" "$WORK/run1.log"
wait_done "$WORK/state1/orders.db" "$N1" "$PREFIX" 0 120 "$TALLY_PID"
# Let a snapshot of the first half happen, keep it aside, then the second half.
limit=$((SECONDS + 30))
until grep -q 'event=snapshot ' "$WORK/run1.log" && [[ -n "$(ls "$SNAPS"/*.json 2>/dev/null)" ]]; do
    ((SECONDS < limit)) || fail "no snapshot within 30 s"
    sleep 0.2
done
sleep 1.2
early_json=$(ls -t "$SNAPS"/*.json | head -n 1)
early_db=${early_json%.json}.db
mkdir -p "$WORK/kept"
cp "$early_db" "$early_json" "$WORK/kept/"
early_seq=$(sed -E 's/.*"lastSeq":([0-9]+).*/\1/' "$early_json")
# Every snapshot is copied aside as it appears (keep 2 deletes them): taken
# while the second half trickles in, they are snapshots under writes.
mkdir -p "$WORK/all"
(
    while :; do
        for json in "$SNAPS"/snapshot-*.json; do
            [[ -e "$json" && ! -e "$WORK/all/$(basename "$json")" ]] || continue
            cp "${json%.json}.db" "$WORK/all/" 2>/dev/null && cp "$json" "$WORK/all/" 2>/dev/null || true
        done
        sleep 0.05
    done
) &
COPIER=$!
bg_track "$COPIER"
split -l 500 "$WORK/second.kv" "$WORK/second.part."
for part in "$WORK"/second.part.*; do
    produce "$IN" "$part"
    sleep 0.25
done
wait_done "$WORK/state1/orders.db" $((N1 + N2)) "$PREFIX" 0 120 "$TALLY_PID"
sleep 1.5 # one more snapshot after the second half
tally_stop "$TALLY_PID"
sleep 0.2
kill "$COPIER" 2>/dev/null || true

# Files: at most --snapshot-keep of each, no temporary leftovers.
n_db=$(find "$SNAPS" -maxdepth 1 -name 'snapshot-*.db' | wc -l)
n_json=$(find "$SNAPS" -maxdepth 1 -name 'snapshot-*.json' | wc -l)
((n_db >= 1 && n_db <= 2 && n_json == n_db)) || fail "expected 1-2 snapshots (keep 2), found $n_db .db / $n_json .json"
[[ -z "$(find "$SNAPS" -maxdepth 1 -name '.*tmp')" ]] || fail "temporary snapshot files left behind"
ok
snapshots_logged=$(grep -c 'event=snapshot ' "$WORK/run1.log")
# one per change of state at most every 500 ms: at least one per half
((snapshots_logged >= 2)) || fail "only $snapshots_logged snapshots"
[[ -z "$(grep 'event=snapshot ' "$WORK/run1.log" | sed -E 's/.*last_seq=([0-9]+).*/\1/' | uniq -d)" ]] ||
    fail "two snapshots of the same seq: an unchanged state was copied again"

# The topic: one committed manifest per snapshot, keyed by pipeline; the newest
# names a file that exists and verifies.
read_topic "$PREFIX-snapshots" '%k\t%s\n' >"$WORK/manifests.tsv"
assert_eq "manifests on the topic" "$snapshots_logged" "$(wc -l <"$WORK/manifests.tsv")"
[[ -z "$(cut -f1 "$WORK/manifests.tsv" | grep -vx orders)" ]] || fail "a manifest is not keyed by pipeline"
newest=$(tail -n 1 "$WORK/manifests.tsv" | cut -f2)
newest_path=$(sed -E 's/.*"path":"([^"]+)".*/\1/' <<<"$newest")
[[ -f "$newest_path" ]] || fail "the newest manifest names a missing file: $newest_path"
"$TALLY" restore --snapshot "$newest_path" --db "$WORK/newest.db" >/dev/null ||
    fail "the newest snapshot does not restore"
ok

# Each snapshot = the changelog topic up to its manifest's offsets.
read_topic "$PREFIX-changelog" '%p\t%o\t%s\n' >"$WORK/changelog.tsv"
compared=0
for json in "$WORK"/all/snapshot-*.json; do
    [[ -e "$json" ]] || continue
    id=$(basename "$json" .json)
    "$TALLY" restore --snapshot "$json" --db "$WORK/$id.restored.db" >/dev/null ||
        fail "snapshot $id does not restore"
    # "lastChangelogOffset":{"<topic>.0":N,...} -> "0 N" lines
    sed -E 's/.*"lastChangelogOffset":\{([^}]*)\}.*/\1/' "$json" | tr ',' '\n' |
        sed -E 's/^"[^"]*\.([0-9]+)":([0-9]+)$/\1 \2/' >"$WORK/$id.offsets"
    awk -F'\t' 'NR == FNR { upto[$1] = $2; next } ($1 in upto) && $2 <= upto[$1] { print $3 }' \
        FS=' ' "$WORK/$id.offsets" FS='\t' "$WORK/changelog.tsv" >"$WORK/$id.prefix.jsonl"
    "$TALLY" replay --db "$WORK/$id.replayed.db" --on-gap warn "$WORK/$id.prefix.jsonl" \
        >/dev/null 2>"$WORK/$id.replay.err" || fail "replaying the changelog prefix of $id failed: $(tail -n 2 "$WORK/$id.replay.err")"
    diff=$(sqlite3 "$WORK/$id.restored.db" "ATTACH '$WORK/$id.replayed.db' AS r;
        SELECT (SELECT count(*) FROM (SELECT * FROM main.order_window_state EXCEPT SELECT * FROM r.order_window_state))
             + (SELECT count(*) FROM (SELECT * FROM r.order_window_state EXCEPT SELECT * FROM main.order_window_state))")
    rows=$(sqlval "$WORK/$id.restored.db" 'SELECT count(*) FROM order_window_state')
    ((rows > 0)) || fail "snapshot $id holds no state"
    assert_eq "rows differing between snapshot $id and the changelog up to its offsets" 0 "$diff"
    compared=$((compared + 1))
done
((compared >= 3)) || fail "only $compared snapshots were caught while orders flowed"
ok

# Recovery: the early snapshot (first half only) restored into a new state dir;
# the daemon replays the changelog after the snapshot's offsets and ends exact.
(( early_seq > 0 )) || fail "early snapshot has no seq"
mkdir -p "$WORK/state2"
"$TALLY" restore --snapshot "$WORK/kept/$(basename "$early_json")" --db "$WORK/state2/orders.db" >/dev/null ||
    fail "the early snapshot does not restore"
before=$(sqlval "$WORK/state2/orders.db" 'SELECT sum(count) FROM order_window_state')
((before < N1 + N2)) || fail "the early snapshot already holds everything ($before): the test proves nothing"
tally_start "$WORK/run2.log" "${COMMON[@]}" --state-dir "$WORK/state2" --snapshot-interval 0
tally_wait_started "$TALLY_PID" "$WORK/run2.log"
recovered=$(grep -m1 'event=recovered' "$WORK/run2.log" || true)
[[ "$recovered" == *"source=local"* && "$recovered" =~ records_replayed=[1-9] ]] ||
    fail "the restart did not replay the changelog after the snapshot: $recovered"
wait_done "$WORK/state2/orders.db" $((N1 + N2)) "$PREFIX" 0 60 "$TALLY_PID"
tally_stop "$TALLY_PID"
check_totals "restored from the early snapshot" "$WORK/orders.tsv" "$WORK/state2/orders.db" "$OUT"

finish "$snapshots_logged snapshots, $compared equal to the changelog at their offsets; early snapshot held $before orders, caught up to $((N1 + N2))"
