#!/usr/bin/env bash
# test_enrich_kill9.sh - `tally enrich` killed with SIGKILL at random moments
# (8 times, 0.5-3 s after each start) while raw orders keep arriving, copies
# of earlier orders among them; each time restarted with the same
# --instance-id. Snapshots go every second to a directory outside the state
# directory, and after kills 3 and 6 the state directory is deleted, so those
# restarts rebuild the dedup state from snapshot + changelog. At the end it
# runs to completion: orders.enriched (read_committed) holds each distinct
# order exactly once with the normalized fields, and the DLQ each malformed
# record once.
# shellcheck source=../lib/tally.sh
source "$(dirname "$0")/../lib/tally.sh"
# shellcheck source=../lib/enrich.sh
source "$(dirname "$0")/../lib/enrich.sh"

N_PRE=12000   # distinct orders produced before the first start (with copies)
CHUNKS=10     # then CHUNKS chunks, one a second, each with
N_CHUNK=1500  # new distinct orders (with copies),
N_AGAIN=300   # copies of orders of earlier chunks,
BAD_PER_CHUNK=3
KILLS=8
WIPE_AFTER=" 3 6 "

IN=$(name in)
OUT=$(name out)
PREFIX=$(name p)
GROUP=$(name g)
INSTANCE=$(name i)
STATE=$WORK/state
DB=$STATE/enrich.db
LOG=$WORK/enrich.log
ARGS=(--input-topic "$IN" --output-topic "$OUT" --topic-prefix "$PREFIX" --group-id "$GROUP"
    --instance-id "$INSTANCE" --state-dir "$STATE" --commit-interval-ms 50 --max-batch 300
    --snapshot-dir "$WORK/snaps" --snapshot-interval 1s)

create_topic "$IN" 3
: >"$WORK/expected.tsv"
: >"$WORK/bad.kv"
: >"$WORK/reasons.tsv"
gen_raw_orders "$N_PRE" 777 1 "$WORK/expected.tsv" >"$WORK/orders0.kv"
gen_bad_raw 11 pre "$WORK/bad.kv" "$WORK/reasons.tsv"
dup_lines "$WORK/orders0.kv" 5 >"$WORK/dup0.kv"
mix "$WORK/dup0.kv" "$WORK/bad.kv" >"$WORK/chunk0.kv"
for ((c = 1; c <= CHUNKS; c++)); do
    gen_raw_orders "$N_CHUNK" $((1000 + c)) $((N_PRE + (c - 1) * N_CHUNK + 1)) "$WORK/expected.tsv" \
        >"$WORK/orders$c.kv"
    : >"$WORK/bad$c.kv"
    gen_bad_raw "$BAD_PER_CHUNK" "chunk$c" "$WORK/bad$c.kv" "$WORK/reasons.tsv"
    cat "$WORK/bad$c.kv" >>"$WORK/bad.kv"
    dup_lines "$WORK/orders$c.kv" $((50 + c)) >"$WORK/dup$c.kv"
    # copies of orders that earlier chunks (or the first batch) already sent
    cat "$WORK"/orders[0-9]*.kv | grep -v -F -f <(cut -d'|' -f1 "$WORK/orders$c.kv" | sed 's/$/|/') |
        shuf -n "$N_AGAIN" --random-source=<(yes "$c") >"$WORK/again$c.kv"
    mix "$WORK/dup$c.kv" "$WORK/again$c.kv" "$WORK/bad$c.kv" >"$WORK/chunk$c.kv"
done
N_VALID=$(wc -l <"$WORK/expected.tsv")
N_BAD=$(wc -l <"$WORK/bad.kv")
produce "$IN" "$WORK/chunk0.kv"

(
    for ((c = 1; c <= CHUNKS; c++)); do
        sleep 1
        produce "$IN" "$WORK/chunk$c.kv"
    done
) &
PRODUCER=$!
BG_PIDS+=("$PRODUCER")

# ---- kill -9 at random moments ---------------------------------------------
moved=0
for ((k = 1; k <= KILLS; k++)); do
    before=$(sqlval "$DB" 'SELECT count(*) FROM enrich_seen')
    enrich_start "$LOG" "${ARGS[@]}"
    pause=$(awk -v r="$RANDOM" 'BEGIN { printf "%.2f", 0.5 + (r % 2501) / 1000 }')
    sleep "$pause"
    if ! alive "$TALLY_PID"; then
        tally_wait_exit "$TALLY_PID" 5
        fail "tally enrich exited by itself with status $RC before kill $k"
    fi
    tally_kill9 "$TALLY_PID"
    after=$(sqlval "$DB" 'SELECT count(*) FROM enrich_seen')
    if [[ "${after:-0}" != "${before:-0}" ]]; then moved=$((moved + 1)); fi
    note "kill $k after ${pause}s: ${before:-0} orders seen before, ${after:-0} after"
    if [[ "$WIPE_AFTER" == *" $k "* ]]; then
        rm -rf "$STATE"
        note "kill $k: state directory deleted"
    fi
done
if wait "$PRODUCER"; then :; else fail "the background producer failed"; fi
((moved >= 3)) || fail "only $moved of $KILLS kills came while orders were being processed"

# ---- the last run goes to the end -------------------------------------------
STARTS_BEFORE=$(grep -c 'event=started' "$LOG" || true)
enrich_start "$LOG" "${ARGS[@]}"
tally_wait_started "$TALLY_PID" "$LOG"
wait_positions "$DB" "$IN" "$PREFIX" "$N_BAD" 180 "$TALLY_PID"
tally_stop "$TALLY_PID"

TOTAL=$(topic_records "$IN")
check_enriched "after $KILLS kills ($TOTAL input records)" "$OUT" "$WORK/expected.tsv"
check_dlq_reasons "$PREFIX" "$WORK/reasons.tsv"
rebuilt=$(grep -cE 'event=recovered source=(snapshot|changelog)' "$LOG" || true)
((rebuilt >= 1)) || fail "no restart rebuilt the deleted state from a snapshot or the changelog"
ok
finish "$KILLS kills ($moved while orders moved), $rebuilt rebuilds, $N_VALID distinct orders in $TOTAL records"
