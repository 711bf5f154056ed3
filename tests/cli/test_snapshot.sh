#!/usr/bin/env bash
# tally snapshot / tally restore: a restored snapshot equals the database it
# was taken from (every state row and changelog row, compared with SQL); the
# manifest names an absolute path and matches the file; --keep prunes; a flipped
# byte or a truncated file is refused with the reason, and nothing is restored.
set -euo pipefail
: "${TALLY:?}"
dir=$(mktemp -d /tmp/tally-cli-snapshot-XXXXXX)
trap 'rm -rf "$dir"' EXIT
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

# bad flags
set +e
"$TALLY" snapshot --db state.db 2>err; rc=$?
set -e
[[ $rc == 2 ]] && grep -q "snapshot-dir" err || fail "missing --snapshot-dir: exit $rc"
echo "ok: snapshot"
