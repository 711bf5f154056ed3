#!/usr/bin/env bash
# test_enrich_full_path.sh - the whole path in one binary: raw orders ->
# `tally enrich` -> orders.enriched -> `tally run --pipeline orders` ->
# orders.output. Raw orders arrive in chunks, with copies of earlier orders
# and malformed records among them; enrich runs throughout while the
# aggregator is killed with SIGKILL 6 times (its database intact: local
# recovery; once deleted after kill 4: snapshot + changelog) and restarted.
# At the end order_windows and the latest output per window equal the totals
# computed with awk over the distinct orders exactly, the aggregator
# dead-lettered nothing (whatever enrich calls validated, it accepts), and the
# enrich DLQ holds each malformed record once.
# shellcheck source=../lib/tally.sh
source "$(dirname "$0")/../lib/tally.sh"
# shellcheck source=../lib/enrich.sh
source "$(dirname "$0")/../lib/enrich.sh"

N_PRE=8000
CHUNKS=12
N_CHUNK=1000
N_AGAIN=200
BAD_PER_CHUNK=2
KILLS=6
WIPE_AFTER=" 4 "

RAW=$(name raw)
ENRICHED=$(name enriched)
OUTPUT=$(name output)
PA=$(name pa)
PB=$(name pb)
ENRICH_DB=$WORK/enrich-state/enrich.db
AGG_STATE=$WORK/agg-state
AGG_DB=$AGG_STATE/orders.db
ELOG=$WORK/enrich.log
ALOG=$WORK/aggregator.log
ENRICH_ARGS=(--input-topic "$RAW" --output-topic "$ENRICHED" --topic-prefix "$PA" --group-id "$(name ga)"
    --instance-id "$(name ia)" --state-dir "$WORK/enrich-state" --commit-interval-ms 50 --max-batch 500)
AGG_ARGS=(--input-topic "$ENRICHED" --output-topic "$OUTPUT" --topic-prefix "$PB" --group-id "$(name gb)"
    --instance-id "$(name ib)" --state-dir "$AGG_STATE" --commit-interval-ms 50 --max-batch 200
    --snapshot-dir "$WORK/agg-snaps" --snapshot-interval 1s --http off)

create_topic "$RAW" 3
create_topic "$ENRICHED" 3
gen_dup_chunks gen_orders "$WORK/orders.tsv" 31337 2000 9 70
produce "$RAW" "$WORK/chunk0.kv"

enrich_start "$ELOG" "${ENRICH_ARGS[@]}"
EPID=$TALLY_PID
tally_wait_started "$EPID" "$ELOG"

produce_chunks "$RAW" "$CHUNKS"

# ---- the aggregator, killed while enrich keeps going --------------------------
# aggregator_start: the aggregator, while enrich still runs.
aggregator_start() {
    alive_or_fail "$EPID" "(tally enrich, while the aggregator was being killed)"
    tally_start "$ALOG" "${AGG_ARGS[@]}"
}
kill9_loop "$KILLS" "$WIPE_AFTER" "$AGG_DB" 'SELECT coalesce(sum(count), 0) FROM order_window_state' 1 3 \
    aggregator_start
moved=$MOVED
alive_or_fail "$EPID" "(tally enrich, while the aggregator was being killed)"
wait_producer
((moved >= 3)) || fail "only $moved of $KILLS kills came while the aggregator was counting"

# ---- both to the end -----------------------------------------------------------
tally_start "$ALOG" "${AGG_ARGS[@]}"
APID=$TALLY_PID
tally_wait_started "$APID" "$ALOG"
wait_positions "$ENRICH_DB" "$RAW" "$PA" "$N_BAD" 180 "$EPID"
wait_done "$AGG_DB" "$N_VALID" "$PB" 0 180 "$APID"
tally_stop "$APID"
tally_stop "$EPID"

check_totals "full path, aggregator killed $KILLS times" "$WORK/orders.tsv" "$AGG_DB" "$OUTPUT"
check_dlq_reasons "$PA" "$WORK/reasons.tsv"
assert_eq "orders the aggregator dead-lettered" 0 "$(dlq_records "$PB")"
assert_eq "enriched records (one per distinct order)" "$N_VALID" \
    "$(read_topic "$ENRICHED" '%o\n' | wc -l)"
local_recoveries=$(grep -c 'event=recovered source=local' "$ALOG" || true)
((local_recoveries >= 3)) || fail "only $local_recoveries aggregator restarts recovered locally"
ok
finish "$N_VALID distinct orders in $(topic_records "$RAW") raw records, $KILLS aggregator kills ($moved mid-stream, $local_recoveries local recoveries)"
