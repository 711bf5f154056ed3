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

new_stream enrich.db
ARGS=("${STREAM_ARGS[@]}" --max-batch 300 --snapshot-dir "$WORK/snaps" --snapshot-interval 1s)

create_topic "$IN" 3
gen_dup_chunks gen_raw_orders "$WORK/expected.tsv" 777 1000 5 50
produce "$IN" "$WORK/chunk0.kv"

produce_chunks "$IN" "$CHUNKS"

# ---- kill -9 at random moments ---------------------------------------------
kill9_loop "$KILLS" "$WIPE_AFTER" "$DB" 'SELECT count(*) FROM enrich_seen' 0.5 3 enrich_start "$LOG" "${ARGS[@]}"
moved=$MOVED
wait_producer
((moved >= 3)) || fail "only $moved of $KILLS kills came while orders were being processed"

# ---- the last run goes to the end -------------------------------------------
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
