#!/usr/bin/env bash
# tally snapshot / tally restore: a restored snapshot equals the database it
# was taken from (every state row and changelog row, compared with SQL); the
# manifest names an absolute path and matches the file; --keep prunes; a flipped
# byte or a truncated file is refused with the reason, and nothing is restored;
# a snapshot of a damaged database fails SQLite's quick_check and prunes no good
# snapshot; a snapshot onto a full disk fails with SQLite's reason and leaves no
# temporary file.
set -euo pipefail
: "${TALLY:?}"
dir=$(mktemp -d /tmp/tally-cli-snapshot-XXXXXX)
trap 'mountpoint -q "$dir/full" && umount "$dir/full"; rm -rf "$dir"' EXIT
cd "$dir"
fail() { echo "FAIL: $*" >&2; exit 1; }

awk 'BEGIN { for (i = 0; i < 3000; i++)
    printf "{\"orderId\":\"%d\",\"productId\":\"p%d\",\"storeId\":\"s%d\",\"price\":\"%d.%02d\",\"qty\":%d,\"ts\":%d000}\n",
        i, i % 7, i % 3, i % 50, i % 100, 1 + i % 4, 1700000000 + i }' >orders.jsonl
"$TALLY" ingest --pipeline orders --db state.db orders.jsonl >/dev/null

manifest=$("$TALLY" snapshot --db state.db --snapshot-dir snaps --keep 2)
id=$(sed -E 's/.*"snapshotId":"([^"]+)".*/\1/' <<<"$manifest")
path=$(sed -E 's/.*"path":"([^"]+)".*/\1/' <<<"$manifest")
[[ "$path" == /* ]] || fail "manifest path is not absolute: $path"
[[ -f "$path" && -f "${path%.db}.json" ]] || fail "snapshot files missing: $path"
[[ "$(stat -c %s "$path")" == "$(sed -E 's/.*"bytes":([0-9]+).*/\1/' <<<"$manifest")" ]] || fail "bytes differ"
[[ "$(sqlite3 state.db "SELECT count(*) FROM snapshots WHERE snapshot_id = '$id'")" == 1 ]] ||
    fail "manifest not recorded in the snapshots table"

# restore from another directory, by id
mkdir elsewhere
(cd elsewhere && "$TALLY" restore --snapshot "$id" --snapshot-dir ../snaps --db restored.db >/dev/null)
diff=$(sqlite3 state.db "ATTACH 'elsewhere/restored.db' AS r;
    SELECT (SELECT count(*) FROM (SELECT * FROM main.order_window_state EXCEPT SELECT * FROM r.order_window_state))
         + (SELECT count(*) FROM (SELECT * FROM r.order_window_state EXCEPT SELECT * FROM main.order_window_state))
         + (SELECT count(*) FROM (SELECT seq, key, key_seq, image FROM main.changelog EXCEPT SELECT seq, key, key_seq, image FROM r.changelog))
         + (SELECT count(*) FROM (SELECT seq, key, key_seq, image FROM r.changelog EXCEPT SELECT seq, key, key_seq, image FROM main.changelog))")
[[ "$diff" == 0 ]] || fail "restored database differs from the source in $diff rows"
[[ "$(sqlite3 elsewhere/restored.db 'SELECT sum(count) FROM order_window_state')" == 3000 ]] || fail "restored count"

# restore never overwrites
if "$TALLY" restore --snapshot "$path" --db elsewhere/restored.db 2>err; then fail "overwrote a database"; fi
grep -q "exists" err || fail "no reason given for refusing to overwrite"

# --keep 2: three snapshots leave two
"$TALLY" snapshot --db state.db --snapshot-dir snaps --keep 2 >/dev/null
sleep 0.01
"$TALLY" snapshot --db state.db --snapshot-dir snaps --keep 2 >/dev/null
[[ $(ls snaps/*.db | wc -l) == 2 && $(ls snaps/*.json | wc -l) == 2 ]] || fail "--keep 2 left $(ls snaps)"
[[ ! -e "$path" ]] || fail "the oldest snapshot was not pruned"

# corruption: a flipped byte, then a truncated file
newest=$(ls snaps/*.db | sort | tail -n 1)
cp "$newest" pristine.db
printf '\xff' | dd of="$newest" bs=1 seek=5000 conv=notrunc status=none
if "$TALLY" restore --snapshot "$newest" --db bad1.db 2>err; then fail "restored a corrupted snapshot"; fi
grep -q "checksum" err || fail "corruption not reported as a checksum failure: $(cat err)"
[[ ! -e bad1.db ]] || fail "a corrupted snapshot left a database behind"
cp pristine.db "$newest"
truncate -s -1000 "$newest"
if "$TALLY" restore --snapshot "$newest" --db bad2.db 2>err; then fail "restored a truncated snapshot"; fi
grep -q "bytes" err || fail "truncation not reported: $(cat err)"

# A damaged source: a zeroed leaf page of the state table in a copy named like
# the original (same database name: its snapshots would rotate these out).
# Three failed snapshots with --keep 2 leave the two good ones.
good=$(ls snaps/*.db snaps/*.json | sort)
sqlite3 state.db 'PRAGMA wal_checkpoint(TRUNCATE)' >/dev/null
mkdir damaged
cp state.db damaged/state.db
page=$(sqlite3 state.db "SELECT max(pageno) FROM dbstat WHERE name = 'order_window_state' AND pagetype = 'leaf'")
[[ "$page" =~ ^[0-9]+$ ]] || fail "no leaf page of order_window_state: $page"
dd if=/dev/zero of=damaged/state.db bs="$(sqlite3 state.db 'PRAGMA page_size')" seek=$((page - 1)) \
    count=1 conv=notrunc status=none
for i in 1 2 3; do
    set +e
    "$TALLY" snapshot --db damaged/state.db --snapshot-dir snaps --keep 2 >out 2>err; rc=$?
    set -e
    [[ $rc == 1 ]] || fail "a snapshot of a damaged database exited $rc: $(cat out err)"
    grep -q "quick_check: .*Page $page" err || fail "damage not reported by quick_check: $(cat err)"
    [[ ! -s out ]] || fail "a failed snapshot printed a manifest: $(cat out)"
done
[[ "$(ls snaps/*.db snaps/*.json | sort)" == "$good" ]] || fail "failed snapshots changed the directory: $(ls -a snaps)"
[[ -z "$(ls -A snaps | grep -v '^snapshot-')" ]] || fail "temporary files left: $(ls -A snaps)"
[[ "$(sqlite3 damaged/state.db 'SELECT count(*) FROM snapshots')" == 2 ]] || fail "a failed snapshot was recorded"

# A full disk: a tmpfs smaller than the database (or, where mounting is not
# permitted, a file size limit: then SQLite's reason is an I/O error).
sqlite3 state.db 'PRAGMA wal_checkpoint(TRUNCATE)' >/dev/null
size=$(stat -c %s state.db)
mkdir full
limit=()
if mount -t tmpfs -o size=$((size / 2 / 4096 * 4096)) tmpfs full 2>/dev/null; then
    reason='database or disk is full'
else
    limit=(ulimit -f $((size / 2 / 1024)))
    reason='disk is full|disk I/O error'
fi
before=$(sqlite3 state.db 'SELECT count(*) FROM snapshots')
set +e
(trap '' XFSZ; "${limit[@]:-true}"; exec "$TALLY" snapshot --db state.db --snapshot-dir full/snaps --keep 2) >out 2>err; rc=$?
set -e
[[ $rc == 1 ]] || fail "a snapshot onto a full disk exited $rc: $(cat out err)"
grep -Eq "failed: ($reason)" err || fail "the full disk's reason is not named: $(cat err)"
[[ -z "$(ls -A full/snaps)" ]] || fail "a failed snapshot left files: $(ls -A full/snaps)"
[[ "$(sqlite3 state.db 'SELECT count(*) FROM snapshots')" == "$before" ]] || fail "a failed snapshot was recorded"

# bad flags
set +e
"$TALLY" snapshot --db state.db 2>err; rc=$?
set -e
[[ $rc == 2 ]] && grep -q "snapshot-dir" err || fail "missing --snapshot-dir: exit $rc"
echo "ok: snapshot"
