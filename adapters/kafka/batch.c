/* adapters/kafka/batch.c - the commit protocol, one batch at a time.
 *
 * Per batch (after librdkafka's examples/transactions.c, v2.0.2):
 *
 *   1. collect    up to max_batch messages or commit_interval_ms, whichever
 *                 first (runner_collect)
 *   2. begin      Kafka: begin_transaction; SQLite: BEGIN IMMEDIATE
 *   3. apply      the pipeline applies the batch; triggers append changelog
 *                 rows; one counters row per input partition
 *   4. produce    dead letters (original bytes, reason in headers), the
 *                 batch's changelog rows (key = state key, value = export
 *                 line), the outputs
 *   5. commit to Kafka   send_offsets_to_transaction(input positions),
 *                 commit_transaction
 *   6. commit to SQLite  record input positions and changelog offsets in
 *                 meta; COMMIT
 *
 * On failure there is one exit path (batch_fail): SQLite is rolled back once
 * if its transaction is open, then by what failed -
 *   an abortable Kafka error, or a produce that failed: abort the Kafka
 *     transaction and rewind the consumer to the batch's first messages
 *     (abort_transaction_and_rewind); the loop goes on;
 *   a fatal Kafka error (fenced, the broker lost our producer): return
 *     BATCH_FATAL;
 *   the database before the Kafka commit: abort and rewind, then BATCH_FATAL;
 *   the database after the Kafka commit: BATCH_FATAL; Kafka has the batch
 *     and the next start's recovery (recovery.c) replays the changelog
 *     records after the offsets meta recorded, which closes exactly that gap -
 *     or, with the changelog off, the consumer starts from the input
 *     positions meta recorded instead of the group's.
 *
 * Rebalances: the Kafka transaction is only open while a batch is processed,
 * never during a poll, so a revoke (served inside poll) has nothing to commit:
 * it drops the collected, unprocessed messages and the consumer is rewound to
 * them before the next batch. */
#include "runner_int.h"

#include "changelog.h"
#include "clock.h"
#include "error.h"
#include "log.h"
#include "meta.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void runner_crash_point(struct runner *r, const char *step)
{
    if (r->stall_at && strcmp(r->stall_at, step) == 0 && r->batches == r->crash_batch) {
        struct timespec ts = {(time_t)(r->stall_ms / 1000), (long)(r->stall_ms % 1000) * 1000000};
        if (strcmp(step, "after_produce") == 0)
            rd_kafka_flush(r->producer, KAFKA_TIMEOUT_MS);
        tly_log("warn", "stall_point", "step=%s batch=%ld ms=%lld note=\"TALLY_STALL_AT\"", step,
                r->batches, (long long)r->stall_ms);
        r->stall_at = NULL; /* once */
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
            ;
    }
    /* after_flush: at the first flush that emitted something, whatever the batch */
    if (r->crash_at && strcmp(r->crash_at, step) == 0 &&
        (r->batches == r->crash_batch || strcmp(step, "after_flush") == 0)) {
        /* after_produce: the records are on the broker, in a transaction
         * that stays open (input offsets not sent) until the broker aborts it */
        if (strcmp(step, "after_produce") == 0)
            rd_kafka_flush(r->producer, KAFKA_TIMEOUT_MS);
        tly_log("warn", "crash_point", "step=%s batch=%ld note=\"TALLY_CRASH_AT\"", step,
                r->batches);
        abort();
    }
}

void runner_release_collected(struct runner *r)
{
    for (int i = 0; i < r->batch.count; i++)
        rd_kafka_message_destroy(r->batch.messages[i]);
    r->batch.count = 0;
}

/* Seeks each partition of the collected messages (and of extra, when not
 * NULL) back to the first one collected: they are dropped and read again.
 * Nothing else needs to move - the consumer has handed out nothing beyond
 * them - and no broker round trip is needed: during a rebalance,
 * rd_kafka_committed() waits for its second round (seconds), and so would
 * every partition that did not move. A partition no longer assigned is left
 * alone. Returns 0 or -1 with errbuf. */
int runner_rewind_collected(struct runner *r, const rd_kafka_message_t *extra, char *errbuf,
                            size_t errlen)
{
    rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(8);
    rd_kafka_error_t *error;
    int rc = 0;

    for (int i = 0; i <= r->batch.count; i++) {
        const rd_kafka_message_t *m = i < r->batch.count ? r->batch.messages[i] : extra;
        rd_kafka_topic_partition_t *p;
        if (!m || m->err)
            continue;
        p = rd_kafka_topic_partition_list_find(list, rd_kafka_topic_name(m->rkt), m->partition);
        if (!p) {
            p = rd_kafka_topic_partition_list_add(list, rd_kafka_topic_name(m->rkt), m->partition);
            p->offset = m->offset;
        } else if (m->offset < p->offset) {
            p->offset = m->offset;
        }
    }
    if (list->cnt > 0) {
        if ((error = rd_kafka_seek_partitions(r->consumer, list, KAFKA_TIMEOUT_MS))) {
            tly_log("warn", "rewind", "error=\"%s\" note=\"rewinding to the committed offsets\"",
                    rd_kafka_error_string(error));
            rd_kafka_error_destroy(error);
            rc = runner_rewind_consumer(r, errbuf, errlen);
        } else {
            tly_log("info", "rewind", "partitions=%d", list->cnt);
        }
    }
    rd_kafka_topic_partition_list_destroy(list);
    return rc;
}

/* The input positions after this batch: per partition, last offset + 1. */
static rd_kafka_topic_partition_list_t *batch_offsets(struct runner *r)
{
    rd_kafka_topic_partition_list_t *offsets = rd_kafka_topic_partition_list_new(8);
    rd_kafka_topic_partition_t *p = NULL;
    for (int i = 0; i < r->batch.count; i++) {
        rd_kafka_message_t *m = r->batch.messages[i];
        /* messages come in runs of one partition: look up only a new one */
        if (!p || i == 0 || r->batch.messages[i - 1]->partition != m->partition ||
            r->batch.messages[i - 1]->rkt != m->rkt)
            p = rd_kafka_topic_partition_list_find(offsets, rd_kafka_topic_name(m->rkt),
                                                   m->partition);
        if (!p)
            p = rd_kafka_topic_partition_list_add(offsets, rd_kafka_topic_name(m->rkt),
                                                  m->partition);
        if (m->offset + 1 > p->offset)
            p->offset = m->offset + 1;
    }
    return offsets;
}

/* event=error for a malformed event, event=late for one whose window had
 * closed (both also go to the dead-letter topic), at most 10 lines a second
 * together: a flood of bad input must not flood the log; the next line says
 * how many were not logged. */
static void log_rejected(struct runner *r, const rd_kafka_message_t *m, const char *event,
                         const char *reason)
{
    int64_t second = tly_clock_mono_ms() / 1000;
    char quoted[600];
    if (second != r->error_log_second) {
        r->error_log_second = second;
        r->error_lines = 0;
    }
    if (r->error_lines++ >= 10) {
        r->errors_unlogged++;
        return;
    }
    tly_log("warn", event,
            "topic=%s partition=%d offset=%lld reason=%s dead_letter=%s unlogged=%lld",
            rd_kafka_topic_name(m->rkt), (int)m->partition, (long long)m->offset,
            tly_log_quote(reason, quoted, sizeof(quoted)), r->topics.dlq.name,
            (long long)r->errors_unlogged);
    r->errors_unlogged = 0;
}

/* One tally.counters changelog row per input partition the batch read
 * (changelog.h): the partition's counters and the offsets consumed. */
static int record_counters(struct runner *r, char *err, size_t errlen)
{
    /* one pass, a linear search over the few partitions of a batch */
    struct {
        int32_t partition;
        int64_t from, to;
    } seen[TLY_MAX_PARTITIONS];
    int nseen = 0, last = -1;

    for (int i = 0; i < r->batch.count; i++) {
        const rd_kafka_message_t *m = r->batch.messages[i];
        int k = last >= 0 && seen[last].partition == m->partition ? last : -1;
        for (int j = 0; k < 0 && j < nseen; j++)
            if (seen[j].partition == m->partition)
                k = j;
        if (k < 0) {
            if (nseen == TLY_MAX_PARTITIONS)
                return tly_error(err, errlen, "a batch from more than %d partitions",
                                 TLY_MAX_PARTITIONS);
            k = nseen++;
            seen[k].partition = m->partition;
            seen[k].from = m->offset;
            seen[k].to = m->offset + 1;
        }
        last = k;
        if (m->offset < seen[k].from)
            seen[k].from = m->offset;
        if (m->offset + 1 > seen[k].to)
            seen[k].to = m->offset + 1;
    }
    for (int k = 0; k < nseen; k++)
        if (tly_changelog_record_counters(r->store, tly_pipeline_name(r->pipeline),
                                          (int)seen[k].partition, r->topics.input.name,
                                          seen[k].from, seen[k].to, r->cfg->instance_id, err,
                                          errlen) < 0)
            return -1;
    return 0;
}

/* One batch in flight: what each step hands the next, and what is open. */
struct batch {
    tly_batch_stats stats;
    int64_t seq_before, seq_after; /* the changelog rows the batch wrote: (before, after] */
    rd_kafka_topic_partition_list_t *offsets; /* input positions after the batch */
    struct produce_ctx outputs;
    int64_t t_start, t_applied, t_produced, t_kafka;
    int64_t t_begin;      /* begin_transaction (monotonic), 0 before it */
    bool sqlite_open;     /* BEGIN done, neither COMMIT nor ROLLBACK yet */
    bool kafka_committed; /* commit_transaction returned success */
    /* why the batch failed (batch_fail) */
    enum { FAIL_ABORT, FAIL_FATAL, FAIL_DATABASE } fail;
    const char *step;
    char why[600];
};

/* A step that failed: records what and why. Returns BATCH_ABORTED, the
 * result every failed step hands batch_fail. */
static enum batch_result failed(struct batch *b, int fail, const char *step, const char *why)
{
    b->fail = fail;
    b->step = step;
    snprintf(b->why, sizeof(b->why), "%s", why);
    return BATCH_ABORTED;
}

/* A transaction open longer than --transaction-timeout: the broker has
 * aborted it and bumped the producer's epoch, so every later call on it
 * fails as if another instance had fenced this one, although none exists.
 * Only a stall does this (a broker outage, a paused process): batches take
 * milliseconds. */
static bool txn_expired(const struct runner *r, const struct batch *b)
{
    return b->t_begin > 0 && tly_clock_mono_ms() - b->t_begin >= r->cfg->transaction_timeout_ms;
}

/* A transactional API error: fatal (fenced, or the producer's state is
 * gone) or abortable, as librdkafka's INTRODUCTION.md classifies them.
 * Retriable errors are retried by the caller before it gets here. Takes
 * ownership of error. */
static enum batch_result txn_failed(const struct runner *r, struct batch *b, const char *step,
                                    rd_kafka_error_t *error)
{
    bool fatal = rd_kafka_error_is_fatal(error) || !rd_kafka_error_txn_requires_abort(error);
    bool fenced = rd_kafka_error_code(error) == RD_KAFKA_RESP_ERR__FENCED ||
                  rd_kafka_error_code(error) == RD_KAFKA_RESP_ERR_PRODUCER_FENCED;
    char why[560];
    snprintf(why, sizeof(why), "%s%s", rd_kafka_error_string(error),
             !fatal || !fenced ? ""
             : txn_expired(r, b)
                 ? " (the transaction outlived --transaction-timeout and the broker aborted it)"
                 : " (another instance with the same --instance-id took over)");
    rd_kafka_error_destroy(error);
    return failed(b, fatal ? FAIL_FATAL : FAIL_ABORT, step, why);
}

/* A fatal producer error that a transaction's expiry explains (txn_expired)
 * is not the end: the daemon starts over in-process (runner.c), exactly as
 * a restart would - a new producer fences the old epoch, recovery brings the
 * state back to what Kafka committed, the consumer rejoins. Returns
 * BATCH_FATAL either way (the caller has written errbuf); r->restart says
 * which. */
static enum batch_result fatal_or_restart(struct runner *r, const struct batch *b)
{
    if (txn_expired(r, b)) {
        r->restart = true;
        tly_log("warn", "transaction_expired",
                "step=%s open_ms=%lld transaction_timeout_ms=%lld error=%s "
                "action=\"start over: new producer, recovery, rejoin\"",
                b->step, (long long)(tly_clock_mono_ms() - b->t_begin),
                (long long)r->cfg->transaction_timeout_ms,
                tly_log_quote(b->why, (char[700]){0}, 700));
    }
    return BATCH_FATAL;
}

/* Aborts the open Kafka transaction after an abortable error and rewinds the
 * consumer to what the batch had collected (between batches nothing is
 * collected: nothing moves). SQLite is not touched. Returns BATCH_ABORTED,
 * or BATCH_FATAL with errbuf when the abort itself failed. */
static enum batch_result abort_transaction_and_rewind(struct runner *r, const char *step,
                                                      const char *why, char *errbuf, size_t errlen)
{
    rd_kafka_error_t *error;
    tly_log("warn", "transaction_aborted", "step=%s error=\"%s\"", step, why);
    r->aborted++;
    tly_metrics_add(r->metrics, TLY_C_TXN_ABORTED, 1);
    if ((error = rd_kafka_abort_transaction(r->producer, KAFKA_TIMEOUT_MS))) {
        tly_error(errbuf, errlen, "cannot abort the transaction after %s failed (%s): %s", step,
                  why, rd_kafka_error_string(error));
        rd_kafka_error_destroy(error);
        return BATCH_FATAL;
    }
    if (runner_rewind_collected(r, NULL, errbuf, errlen) < 0)
        return BATCH_FATAL;
    return BATCH_ABORTED;
}

/* Step 2: Kafka begin_transaction, SQLite BEGIN IMMEDIATE. */
static enum batch_result batch_begin(struct runner *r, struct batch *b)
{
    rd_kafka_error_t *error;
    char err[512];

    r->batches++;
    r->delivery_failed = false;
    b->t_begin = tly_clock_mono_ms();
    if ((error = rd_kafka_begin_transaction(r->producer)))
        return txn_failed(r, b, "begin_transaction", error);
    if (tly_store_begin(r->store, err, sizeof(err)) < 0)
        return failed(b, FAIL_DATABASE, "apply", err);
    b->sqlite_open = true;
    b->seq_before = tly_store_last_seq(r->store);
    return BATCH_COMMITTED;
}

/* Step 3: the pipeline applies the events; one counters row per partition. */
static enum batch_result batch_apply(struct runner *r, struct batch *b)
{
    struct collected *c = &r->batch;
    char err[512];

    for (int i = 0; i < c->count; i++) {
        c->events[i].data = c->messages[i]->payload ? c->messages[i]->payload : "";
        c->events[i].len = c->messages[i]->len;
        c->events[i].partition = (int)c->messages[i]->partition;
    }
    if (tly_pipeline_apply(r->pipeline, c->events, (size_t)c->count, c->results, &b->stats, err,
                           sizeof(err)) < 0 ||
        record_counters(r, err, sizeof(err)) < 0)
        return failed(b, FAIL_DATABASE, "apply", err);
    b->seq_after = tly_store_last_seq(r->store);
    b->t_applied = tly_clock_mono_ms();
    runner_crash_point(r, "after_apply");
    return BATCH_COMMITTED;
}

/* Step 4: dead letters, changelog records, outputs - all in the transaction. */
static enum batch_result batch_produce(struct runner *r, struct batch *b)
{
    struct collected *c = &r->batch;
    struct produce_ctx changelog = {r, NULL, 0, 0};
    char err[512];

    for (int i = 0; i < c->count; i++) {
        tly_event_status status = c->results[i].status;
        if (status == TLY_EVENT_REJECTED || status == TLY_EVENT_LATE) {
            rd_kafka_resp_err_t e =
                runner_produce_dead_letter(r, c->messages[i], c->results[i].reason);
            if (e)
                return failed(b, FAIL_ABORT, "produce dead letter", rd_kafka_err2str(e));
            log_rejected(r, c->messages[i], status == TLY_EVENT_LATE ? "late" : "error",
                         c->results[i].reason);
        } else if (status == TLY_EVENT_SKIPPED) {
            char quoted[256];
            tly_log("info", "skip", "partition=%d offset=%lld reason=%s",
                    (int)c->messages[i]->partition, (long long)c->messages[i]->offset,
                    tly_log_quote(c->results[i].reason, quoted, sizeof(quoted)));
        }
    }
    if (r->cfg->changelog &&
        runner_produce_changelog(r, &changelog, b->seq_before, b->seq_after, err, sizeof(err)) < 0)
        return failed(b, FAIL_ABORT, "produce changelog", err);
    b->outputs = (struct produce_ctx){r, r->topics.output.name, 0, 0};
    if (runner_batch_emits(r) &&
        runner_emit_outputs(r, &b->outputs, b->seq_before, b->seq_after,
                            tly_pipeline_has_flush(r->pipeline), err, sizeof(err)) < 0)
        return failed(b, FAIL_ABORT, "produce outputs", err);
    b->t_produced = tly_clock_mono_ms();
    runner_crash_point(r, "after_produce");
    return BATCH_COMMITTED;
}

/* Step 5: the input positions into the transaction, then commit it. A
 * retriable error (a timeout, a coordinator moving) is simply tried again,
 * as librdkafka's INTRODUCTION.md describes. */
static enum batch_result batch_commit_kafka(struct runner *r, struct batch *b)
{
    rd_kafka_consumer_group_metadata_t *group = rd_kafka_consumer_group_metadata(r->consumer);
    rd_kafka_error_t *error;

    b->offsets = batch_offsets(r);
    while ((error = rd_kafka_send_offsets_to_transaction(r->producer, b->offsets, group,
                                                         KAFKA_TIMEOUT_MS)) &&
           rd_kafka_error_is_retriable(error)) {
        tly_log("warn", "send_offsets_retry", "error=\"%s\"", rd_kafka_error_string(error));
        rd_kafka_error_destroy(error);
    }
    rd_kafka_consumer_group_metadata_destroy(group);
    if (error)
        return txn_failed(r, b, "send_offsets_to_transaction", error);
    runner_crash_point(r, "after_offsets");
    while ((error = rd_kafka_commit_transaction(r->producer, KAFKA_TIMEOUT_MS))) {
        if (!rd_kafka_error_is_retriable(error))
            return txn_failed(r, b, "commit_transaction", error);
        tly_log("warn", "commit_retry", "error=\"%s\"", rd_kafka_error_string(error));
        rd_kafka_error_destroy(error);
    }
    b->kafka_committed = true;
    rd_kafka_poll(r->producer, 0); /* serve the last delivery reports */
    b->t_kafka = tly_clock_mono_ms();
    runner_crash_point(r, "after_commit");
    return BATCH_COMMITTED;
}

/* Step 6: Kafka has the batch; SQLite records where it stands and commits. */
static enum batch_result batch_commit_sqlite(struct runner *r, struct batch *b)
{
    char key[512], err[512];

    for (int i = 0; i < b->offsets->cnt; i++) {
        rd_kafka_topic_partition_t *o = &b->offsets->elems[i];
        tly_meta_key_position(TLY_META_INPUT, o->topic, (int)o->partition, key, sizeof(key));
        if (tly_store_meta_set_int(r->store, key, o->offset) < 0)
            return failed(b, FAIL_DATABASE, "commit", sqlite3_errmsg(tly_store_db(r->store)));
    }
    for (int p = 0; r->cfg->changelog && p < TLY_MAX_PARTITIONS; p++) {
        if (r->changelog_offsets[p] < 0)
            continue;
        tly_meta_key_position(TLY_META_CHANGELOG, r->topics.changelog.name, p, key, sizeof(key));
        if (tly_store_meta_set_int(r->store, key, r->changelog_offsets[p]) < 0)
            return failed(b, FAIL_DATABASE, "commit", sqlite3_errmsg(tly_store_db(r->store)));
    }
    /* What the batch emitted from the pending set is out: forget it. */
    if (runner_batch_emits(r) && tly_pipeline_has_flush(r->pipeline) &&
        tly_pipeline_flushed(r->pipeline, b->seq_after, err, sizeof(err)) < 0)
        return failed(b, FAIL_DATABASE, "commit", err);
    if (tly_store_commit(r->store, err, sizeof(err)) < 0)
        return failed(b, FAIL_DATABASE, "commit", err);
    b->sqlite_open = false;
    return BATCH_COMMITTED;
}

/* The one exit path of a failed batch: SQLite rolled back once (if open),
 * then as b->fail says (the top of this file). */
static enum batch_result batch_fail(struct runner *r, struct batch *b, char *errbuf, size_t errlen)
{
    if (b->sqlite_open) {
        tly_store_rollback(r->store);
        b->sqlite_open = false;
    }
    if (b->fail == FAIL_FATAL)
        return tly_error(errbuf, errlen, "%s: %s", b->step, b->why), fatal_or_restart(r, b);
    if (b->fail == FAIL_DATABASE && b->kafka_committed)
        return tly_error(errbuf, errlen,
                         "database error after the Kafka commit (restart replays it): %s", b->why),
               BATCH_FATAL;
    if (b->fail == FAIL_DATABASE) {
        char why[640];
        snprintf(why, sizeof(why), "database: %s", b->why);
        if (abort_transaction_and_rewind(r, b->step, why, errbuf, errlen) == BATCH_FATAL)
            return BATCH_FATAL;
        return tly_error(errbuf, errlen, "database error, batch aborted: %s", b->why), BATCH_FATAL;
    }
    if (abort_transaction_and_rewind(r, b->step, b->why, errbuf, errlen) == BATCH_FATAL)
        return fatal_or_restart(r, b);
    return BATCH_ABORTED;
}

/* A committed batch's figures. End-to-end latency is measured from each
 * input record's Kafka timestamp (set by its producer, or by the broker for
 * LogAppendTime topics) to now, when the batch's outputs became visible to
 * read_committed readers. */
static void batch_account(struct runner *r, struct batch *b)
{
    int64_t now = tly_clock_wall_ms(), done = tly_clock_mono_ms();
    tly_metrics *m = r->metrics;

    if (done - b->t_start >= 500)
        tly_log("warn", "slow_batch",
                "events=%d total_ms=%lld apply_ms=%lld produce_ms=%lld kafka_commit_ms=%lld "
                "sqlite_commit_ms=%lld",
                r->batch.count, (long long)(done - b->t_start),
                (long long)(b->t_applied - b->t_start), (long long)(b->t_produced - b->t_applied),
                (long long)(b->t_kafka - b->t_produced), (long long)(done - b->t_kafka));
    b->stats.changes = b->seq_after - b->seq_before; /* the counters row too: all mirrored */
    runner_broker_answered(r);
    r->applied += b->stats.applied;
    r->rejected += b->stats.rejected;
    r->skipped += b->stats.skipped;
    r->late += b->stats.late;
    r->changes += b->stats.changes;
    r->outputs += b->outputs.count;
    tly_metrics_add(m, TLY_C_CONSUMED, r->batch.count);
    tly_metrics_add(m, TLY_C_APPLIED, b->stats.applied);
    tly_metrics_add(m, TLY_C_REJECTED, b->stats.rejected);
    tly_metrics_add(m, TLY_C_SKIPPED, b->stats.skipped);
    tly_metrics_add(m, TLY_C_LATE, b->stats.late);
    tly_metrics_add(m, TLY_C_DEAD_LETTERED, b->stats.rejected + b->stats.late);
    tly_metrics_add(m, TLY_C_CHANGES, b->stats.changes);
    tly_metrics_add(m, TLY_C_OUTPUTS, b->outputs.count);
    tly_metrics_add(m, TLY_C_BATCHES, 1);
    tly_metrics_add(m, TLY_C_TXN_COMMITTED, 1);
    tly_metrics_observe_ms(m, TLY_H_APPLY, (double)(b->t_applied - b->t_start), 1);
    tly_metrics_observe_ms(m, TLY_H_COMMIT, (double)(b->t_kafka - b->t_produced), 1);
    tly_metrics_observe_ms(m, TLY_H_BATCH, (double)(done - b->t_start), 1);
    for (int i = 0; i < r->batch.count; i++) {
        int64_t ts = rd_kafka_message_timestamp(r->batch.messages[i], NULL);
        if (ts > 0)
            tly_metrics_observe_ms(m, TLY_H_E2E, (double)(now - ts), 1);
    }
    tly_metrics_set(m, TLY_G_LAST_SEQ, b->seq_after);
}

enum batch_result runner_process_batch(struct runner *r, char *errbuf, size_t errlen)
{
    struct batch b = {.t_start = tly_clock_mono_ms()};
    enum batch_result result;

    if ((result = batch_begin(r, &b)) == BATCH_COMMITTED &&
        (result = batch_apply(r, &b)) == BATCH_COMMITTED &&
        (result = batch_produce(r, &b)) == BATCH_COMMITTED &&
        (result = batch_commit_kafka(r, &b)) == BATCH_COMMITTED &&
        (result = batch_commit_sqlite(r, &b)) == BATCH_COMMITTED)
        batch_account(r, &b);
    else
        result = batch_fail(r, &b, errbuf, errlen);
    if (b.offsets)
        rd_kafka_topic_partition_list_destroy(b.offsets);
    return result;
}

/* Between batches, a Kafka transaction of its own around fill(): the snapshot
 * manifest, a log_compacted flush. fill returns 0, or -1 with why. Returns
 * BATCH_COMMITTED, BATCH_ABORTED (the caller retries later) or BATCH_FATAL
 * (errbuf). A failed fill or commit is also logged as error_event when that
 * is not NULL. */
enum batch_result
runner_own_transaction(struct runner *r, const char *what, const char *error_event,
                       int (*fill)(struct runner *r, void *ctx, char *why, size_t whylen),
                       void *ctx, char *errbuf, size_t errlen)
{
    struct batch b = {0};
    rd_kafka_error_t *error;
    char step[128];

    b.t_begin = tly_clock_mono_ms();
    if ((error = rd_kafka_begin_transaction(r->producer))) {
        snprintf(step, sizeof(step), "begin_transaction (%s)", what);
        txn_failed(r, &b, step, error);
    } else if (fill(r, ctx, b.why, sizeof(b.why)) < 0) {
        if (error_event)
            tly_log("error", error_event, "error=%s", tly_log_quote(b.why, (char[700]){0}, 700));
        b.fail = FAIL_ABORT;
        b.step = what;
    } else if ((error = rd_kafka_commit_transaction(r->producer, KAFKA_TIMEOUT_MS))) {
        if (error_event)
            tly_log("error", error_event, "error=%s",
                    tly_log_quote(rd_kafka_error_string(error), (char[700]){0}, 700));
        snprintf(step, sizeof(step), "commit_transaction (%s)", what);
        txn_failed(r, &b, step, error);
    } else {
        runner_broker_answered(r);
        return BATCH_COMMITTED;
    }
    return batch_fail(r, &b, errbuf, errlen);
}

int runner_collect(struct runner *r, char *errbuf, size_t errlen)
{
    int64_t deadline = tly_clock_mono_ms() + r->cfg->commit_interval_ms;
    while (r->batch.count < r->cfg->max_batch && !(r->cfg->stop && *r->cfg->stop)) {
        int64_t left = deadline - tly_clock_mono_ms();
        rd_kafka_message_t *m;
        if (left <= 0)
            break;
        m = rd_kafka_consumer_poll(r->consumer, (int)(left > 100 ? 100 : left));
        if (r->assign.error[0]) {
            if (m)
                rd_kafka_message_destroy(m);
            return tly_error(errbuf, errlen, "%s", r->assign.error);
        }
        if (m && !m->err && runner_is_pending(r, m)) {
            rd_kafka_message_destroy(m);
            m = NULL;
        }
        if (!r->batch.revoked && runner_take_pending(r, errbuf, errlen) < 0) {
            if (m)
                rd_kafka_message_destroy(m);
            return -1;
        }
        if (r->batch.revoked) {
            /* A revoke was served inside that poll. */
            int rc;
            r->batch.revoked = false;
            rc = runner_rewind_collected(r, m, errbuf, errlen);
            runner_release_collected(r);
            if (m)
                rd_kafka_message_destroy(m);
            if (rc < 0)
                return -1;
            continue;
        }
        if (!m)
            continue;
        if (m->err) {
            if (m->err == RD_KAFKA_RESP_ERR__FATAL) {
                char reason[512];
                rd_kafka_fatal_error(r->consumer, reason, sizeof(reason));
                rd_kafka_message_destroy(m);
                return tly_error(errbuf, errlen, "consumer: %s%s", reason,
                                 strstr(reason, "FENCED") || strstr(reason, "fenced")
                                     ? " (another instance with the same --instance-id joined)"
                                     : "");
            }
            if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                tly_log("warn", "consumer_error", "error=\"%s\"", rd_kafka_message_errstr(m));
            rd_kafka_message_destroy(m);
            continue;
        }
        r->batch.messages[r->batch.count++] = m;
    }
    return 0;
}
