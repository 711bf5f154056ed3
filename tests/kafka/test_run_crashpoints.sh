#!/usr/bin/env bash
# test_run_crashpoints.sh - for each crash point of the commit protocol
# (TALLY_CRASH_AT = after_apply, after_produce, after_offsets, after_commit)
# and TALLY_CRASH_BATCH = 1 and 3: `tally run` on fresh output and internal
# topics and a fresh state must die with SIGABRT (status 134) at that step;
# restarted without the crash, it must finish with exact totals in the output
# topic and in SQLite, and each malformed line once in the DLQ.
#
# after_commit is the case where Kafka committed the batch and SQLite did not:
# the restart must replay it from the changelog topic (its recovered line says
# source=local records_replayed=N with N > 0: the intact database plus the
# changelog after its recorded offsets). At the other points the
# Kafka transaction was never committed, so nothing may be replayed.
# shellcheck source=../lib/tally.sh
source "$(dirname "$0")/../lib/tally.sh"

N_ORDERS=3000
N_BAD=10
POINTS=(after_apply after_produce after_offsets after_commit)
BATCHES=(1 3)

# ---- flags: usage errors need no broker -----------------------------------
expect_usage_error "--changelog maybe" --pipeline orders --brokers "$KAFKA_BROKERS" --changelog maybe
expect_usage_error "--pipeline bogus" --pipeline bogus --brokers "$KAFKA_BROKERS"
expect_usage_error "--strategy log_compacted for orders" --pipeline orders --brokers "$KAFKA_BROKERS" \
    --strategy log_compacted
expect_usage_error "unexpected argument" --pipeline orders --brokers "$KAFKA_BROKERS" extra

# One input topic for all cases: each case has its own consumer group, so
# each reads it from the beginning; everything tally writes is per case.
IN=$(name in)
create_topic "$IN" 3
: >"$WORK/orders.tsv"
gen_orders "$N_ORDERS" 31337 1 "$WORK/orders.tsv" >"$WORK/orders.kv"
gen_malformed "$N_BAD" "crash" >"$WORK/bad.kv"
mix "$WORK/orders.kv" "$WORK/bad.kv" >"$WORK/input.kv"
produce "$IN" "$WORK/input.kv"
assert_eq "records in the input topic" $((N_ORDERS + N_BAD)) "$(topic_records "$IN")"

summary=()
for point in "${POINTS[@]}"; do
    for batch in "${BATCHES[@]}"; do
        case_id="${point#after_}$batch"
        OUT=$(name "out-$case_id")
        PREFIX=$(name "p-$case_id")
        STATE=$WORK/state-$case_id
        DB=$STATE/orders.db
        RUN_ARGS=(--input-topic "$IN" --output-topic "$OUT" --topic-prefix "$PREFIX"
            --group-id "$(name "g-$case_id")" --instance-id "$(name "i-$case_id")" --state-dir "$STATE"
            --commit-interval-ms 50 --max-batch 200)

        # 1. the crash
        CRASH_LOG=$WORK/crash-$case_id.log
        export TALLY_CRASH_AT=$point TALLY_CRASH_BATCH=$batch
        tally_start "$CRASH_LOG" "${RUN_ARGS[@]}"
        unset TALLY_CRASH_AT TALLY_CRASH_BATCH
        tally_wait_exit "$TALLY_PID" 90
        ((TIMED_OUT == 0)) || fail "$case_id: tally did not crash within 90 s"
        grep -q "event=crash_point step=$point batch=$batch" "$CRASH_LOG" ||
            fail "$case_id: no crash_point log line for step=$point batch=$batch (status $RC): $(tail -n 2 "$CRASH_LOG" | cut -c1-300)"
        assert_eq "$case_id: exit status of the crash (SIGABRT)" 134 "$RC"
        if [[ "$point" == after_commit && "$batch" == 1 ]]; then
            # Kafka has batch 1, SQLite nothing.
            assert_eq "$case_id: orders in SQLite after the crash" 0 \
                "$(sqlval "$DB" 'SELECT coalesce(sum(count), 0) FROM order_window_state')"
        fi

        # 2. the restart runs to the end
        LOG=$WORK/run-$case_id.log
        tally_start "$LOG" "${RUN_ARGS[@]}"
        tally_wait_started "$TALLY_PID" "$LOG"
        wait_done "$DB" "$N_ORDERS" "$PREFIX" "$N_BAD" 120 "$TALLY_PID"
        tally_stop "$TALLY_PID"

        recovered=$(grep -m1 'event=recovered' "$LOG" || true)
        [[ -n "$recovered" ]] || fail "$case_id: no event=recovered line in the restart's log"
        replayed=$(sed -n 's/.* records_replayed=\([0-9]*\).*/\1/p' <<<"$recovered")
        if [[ "$point" == after_commit ]]; then
            [[ "$recovered" == *"source=local"* && "${replayed:-0}" -gt 0 ]] ||
                fail "$case_id: the restart did not replay the committed batch from the changelog: $recovered"
        else
            [[ "$recovered" == *"source=local"* && "$replayed" == 0 ]] ||
                fail "$case_id: the restart replayed records of a transaction that never committed: $recovered"
        fi
        ok

        check_totals "$case_id" "$WORK/orders.tsv" "$DB" "$OUT"
        check_dlq "$PREFIX" "$IN" "$WORK/bad.kv"
        # the counters too: after_commit's batch comes back from the changelog
        assert_eq "$case_id: events_applied in meta" "$N_ORDERS" "$(meta "$DB" pipeline.orders.events_applied)"
        assert_eq "$case_id: events_rejected in meta" "$N_BAD" "$(meta "$DB" pipeline.orders.events_rejected)"
        summary+=("$case_id:replayed=$replayed")
    done
done

finish "${summary[*]}"
