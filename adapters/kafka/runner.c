/* adapters/kafka/runner.c - the daemon: consume -> apply -> produce -> commit.
 *
 * Per batch (after librdkafka's examples/transactions.c, v2.0.2):
 *
 *   1. collect up to max_batch messages or commit_interval_ms, whichever first
 *   2. Kafka: begin_transaction
 *   3. SQLite: BEGIN IMMEDIATE; apply the batch; triggers append changelog rows
 *   4. produce: dead letters (original bytes, reason in headers), the batch's
 *      changelog rows (key = state key, value = export line), the outputs
 *   5. send_offsets_to_transaction(input positions), commit_transaction
 *   6. SQLite: record input positions and changelog offsets in meta; COMMIT
 *
 * Abortable Kafka error: abort the transaction, ROLLBACK, rewind the consumer
 * to the committed offsets, go on. Fatal (fenced, or the broker lost our
 * producer): ROLLBACK and return -1. A crash between 5 and 6 leaves SQLite one
 * transaction behind; on start, recovery (adapters/kafka/recovery.c) applies the
 * changelog records after the offsets meta recorded, which closes exactly that
 * gap - or, with the changelog off, the consumer starts from the input
 * positions meta recorded instead of the group's.
 *
 * Rebalances: the Kafka transaction is only open while a batch is processed,
 * never during a poll, so a revoke (served inside poll) has nothing to commit:
 * it drops the collected, unprocessed messages and the consumer is rewound to
 * the committed offsets before the next batch. */
#include "runner.h"
#include "clock.h"
#include "error.h"

#include "changelog.h"
#include "log.h"
#include "http.h"
#include "kconf.h"
#include "meta.h"
#include "metrics.h"
#include "partitions.h"
#include "pipeline.h"
#include "pack.h"
#include "recovery.h"
#include "snapshot.h"
#include "store.h"
#include "topics.h"

#include <errno.h>
#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define KAFKA_TIMEOUT_MS 30000
#define STANDBY_MS 15000 /* see drop_standby() */

struct runner {
    const tly_runner_config *cfg;
    tly_topic_layout topics;
    char db_path[4096];
    tly_store *store;
    tly_pipeline *pipeline;
    rd_kafka_t *producer, *consumer;
    /* the batch being collected */
    rd_kafka_message_t **messages;
    tly_event *events;
    tly_event_result *results;
    int count;
    bool drop_collected; /* a revoke happened during collection */
    /* highest changelog offset per partition delivered in this transaction */
    int64_t changelog_offsets[TLY_MAX_PARTITIONS];
    bool delivery_failed;
    char delivery_error[256];
    /* crash points */
    const char *crash_at;
    long crash_batch;
    long batches;
    /* figures */
    int64_t applied, rejected, skipped, late, changes, outputs, aborted;
    /* consumer watchdog: since when the consumer has had no partitions */
    int64_t unassigned_since, last_watch;
    /* snapshots */
    char snapshot_dir[4096];
    int64_t next_snapshot_ms, snapshots, snapshot_seq;
    /* log_compacted: when the next flush is due */
    int64_t next_flush_ms;
    /* output records into messages (--batch-size) */
    tly_pack *pack;
    struct snapshot_job *snapshot_job;
    tly_metrics *metrics;
    int64_t last_gauges;
    /* event=error rate limit */
    int64_t error_log_second, error_lines, errors_unlogged;
    /* changelog table pruning: rows with seq < prune_below may go */
    int64_t prune_below, pruned_rows;
    /* input partitions: taken over on assignment, dropped on revocation */
    const tly_recovery_config *rcfg;
    int64_t standby_check_ms; /* when to drop rows of partitions not assigned (0: done) */
    bool closing;       /* the revocation of a shutdown keeps the rows */
    char rebalance_error[1200]; /* a partition could not be taken over */
    /* assigned, paused until their state is up to date (take_pending) */
    rd_kafka_topic_partition_list_t *pending;
    int64_t pending_since, pending_logged, pending_next_try;
};

void tly_runner_config_init(tly_runner_config *cfg, const char *pipeline)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->pipeline = pipeline;
    cfg->topic_prefix = "opb";
    cfg->group_id = "opb";
    cfg->instance_id = NULL;
    cfg->state_dir = "state";
    cfg->commit_interval_ms = 100;
    cfg->max_batch = 5000;
    cfg->changelog = 1;
    cfg->snapshot_interval_ms = 60000;
    cfg->snapshot_keep = 3;
    /* Under load the table grows by a row per changed key per batch: kept
     * for an hour, it would dwarf the state and every snapshot with it. */
    cfg->changelog_retention_ms = 0;
    cfg->manage_topics = 1;
    cfg->strategy = TLY_EMIT_INLINE;
    cfg->flush_interval_ms = 120000;
    cfg->allowed_lateness_ms = 0;
    cfg->batch_size = 1;
    cfg->query_timeout_ms = 5000;
    cfg->query_max_rows = 10000;
    cfg->session_timeout_ms = 45000;
    cfg->transaction_timeout_ms = 60000;
}

static const char *const strategy_names[] = {"inline", "log_compacted", "window_stream",
                                             "state_store"};

const char *tly_emit_strategy_name(int strategy)
{
    return strategy >= 0 && strategy < 4 ? strategy_names[strategy] : NULL;
}

int tly_emit_strategy_parse(const char *name)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(name, strategy_names[i]) == 0)
            return i;
    return -1;
}

static void crash_point(struct runner *r, const char *step)
{
    /* after_flush: at the first flush that emitted something, whatever the batch */
    if (r->crash_at && strcmp(r->crash_at, step) == 0 &&
        (r->batches == r->crash_batch || strcmp(step, "after_flush") == 0)) {
        /* after_produce: the records are on the broker, in a transaction
         * that stays open (input offsets not sent) until the broker aborts it */
        if (strcmp(step, "after_produce") == 0)
            rd_kafka_flush(r->producer, KAFKA_TIMEOUT_MS);
        tly_log("warn", "crash_point", "step=%s batch=%ld note=\"TALLY_CRASH_AT\"", step, r->batches);
        abort();
    }
}

/* ------------------------------------------------------------------------ */
/* librdkafka handles                                                        */
/* ------------------------------------------------------------------------ */

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    struct runner *r = opaque;
    (void)rk;
    if (m->err) {
        if (!r->delivery_failed)
            snprintf(r->delivery_error, sizeof(r->delivery_error), "%s: %s",
                     rd_kafka_topic_name(m->rkt), rd_kafka_err2str(m->err));
        r->delivery_failed = true;
        return;
    }
    if (r->cfg->changelog && strcmp(rd_kafka_topic_name(m->rkt), r->topics.changelog.name) == 0 &&
        m->partition >= 0 && m->partition < TLY_MAX_PARTITIONS && m->offset > r->changelog_offsets[m->partition])
        r->changelog_offsets[m->partition] = m->offset;
}

/* With the changelog off nothing can bring SQLite forward, so the input is
 * read from the positions SQLite recorded: after a crash between the Kafka and
 * the SQLite commit, that batch is applied again (its outputs and dead letters
 * are written a second time, with the same values). */
static void positions_from_state(struct runner *r, rd_kafka_topic_partition_list_t *partitions)
{
    bool recorded_any;

    if (r->cfg->changelog || !r->store)
        return;
    /* A state that recorded some input partitions but not this one never
     * applied anything of it - even if the group committed offsets for it (a
     * crash after the Kafka commit of its first batch): it starts from the
     * beginning. A state that recorded none (new, or --allow-empty) takes the
     * group's offsets. */
    recorded_any = tly_meta_has_positions(tly_store_db(r->store)) == 1;
    for (int i = 0; i < partitions->cnt; i++) {
        char key[512];
        int64_t offset;
        tly_meta_key_position(TLY_META_INPUT, partitions->elems[i].topic,
                            (int)partitions->elems[i].partition, key, sizeof(key));
        if (tly_store_meta_get_int(r->store, key, &offset) == 1)
            partitions->elems[i].offset = offset;
        else if (recorded_any)
            partitions->elems[i].offset = RD_KAFKA_OFFSET_BEGINNING;
    }
}

static void drop_partitions(struct runner *r, rd_kafka_topic_partition_list_t *partitions);
static int take_partitions(struct runner *r, rd_kafka_topic_partition_list_t *committed,
                           int64_t waited, char *errbuf, size_t errlen);

/* Takes the assigned partitions over before they are assigned, when their
 * committed offsets are stable at once (see take_pending). Returns 1 when
 * done, 0 when they must wait, -1 on an error (in rebalance_error). */
static int take_on_assign(struct runner *r, rd_kafka_topic_partition_list_t *partitions,
                          int64_t started)
{
    rd_kafka_topic_partition_list_t *committed = rd_kafka_topic_partition_list_copy(partitions);
    rd_kafka_resp_err_t e = rd_kafka_committed(r->consumer, committed, 1000);
    int rc = 1;

    if (e == RD_KAFKA_RESP_ERR__TIMED_OUT) {
        tly_log("info", "committed_offsets_wait", "partitions=%d note=\"a previous owner's "
                "transaction is still open: assigned paused, taken over when it ends\"",
                partitions->cnt);
        rc = 0;
    } else if (e) {
        snprintf(r->rebalance_error, sizeof(r->rebalance_error),
                 "cannot read the committed offsets: %s", rd_kafka_err2str(e));
        rc = -1;
    } else if ((rc = take_partitions(r, committed, tly_clock_mono_ms() - started, r->rebalance_error,
                                     sizeof(r->rebalance_error))) != 0) {
        if (rc > 0)
            tly_log("info", "committed_offsets_wait", "partitions=%d note=\"a previous owner's "
                    "transaction is still open on the changelog: assigned paused, taken over "
                    "when it ends\"", partitions->cnt);
        rc = rc < 0 ? -1 : 0; /* 1: a transaction open on the changelog: assigned paused */
    } else {
        rc = 1;
    }
    rd_kafka_topic_partition_list_destroy(committed);
    return rc;
}

/* Pauses just-assigned partitions until take_pending has taken them over. */
static void pause_assigned(struct runner *r, rd_kafka_topic_partition_list_t *partitions)
{
    rd_kafka_resp_err_t e = rd_kafka_pause_partitions(r->consumer, partitions);
    if (e)
        snprintf(r->rebalance_error, sizeof(r->rebalance_error),
                 "cannot pause the assigned partitions: %s", rd_kafka_err2str(e));
    if (!r->pending || r->pending->cnt == 0)
        r->pending_since = tly_clock_mono_ms();
    if (!r->pending)
        r->pending = rd_kafka_topic_partition_list_new(partitions->cnt);
    for (int i = 0; i < partitions->cnt; i++)
        rd_kafka_topic_partition_list_add(r->pending, partitions->elems[i].topic,
                                          partitions->elems[i].partition);
}

/* Cooperative (incremental) rebalancing: only the partitions that move are
 * in the list; the others keep flowing. An assigned partition is paused
 * until its state is up to date (take_pending, between polls, so that
 * waiting for a crashed owner's transaction does not hold the other
 * partitions up); a revoked one's rows are dropped, the new owner rebuilds
 * them. With the changelog off nothing could rebuild them: the rows stay,
 * and the state is only right for a group of one instance. */
static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *partitions, void *opaque)
{
    struct runner *r = opaque;
    rd_kafka_error_t *error = NULL;
    int64_t started = tly_clock_mono_ms();
    const char *change;
    int taken = 1;

    tly_metrics_add(r->metrics, TLY_C_REBALANCES, 1);
    tly_metrics_clear_lag(r->metrics); /* refilled from the new assignment */
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        change = "assigned";
        positions_from_state(r, partitions);
        if (r->cfg->changelog && partitions->cnt > 0 && (taken = take_on_assign(r, partitions, started)) < 0)
            return; /* not assigned: the loop stops with rebalance_error */
        error = rd_kafka_incremental_assign(rk, partitions);
        if (!error && taken == 0)
            pause_assigned(r, partitions);
    } else {
        change = rd_kafka_assignment_lost(rk) ? "lost" : "revoked";
        /* Nothing is in flight during a poll; what was collected is dropped
         * and read again from the committed offsets. */
        r->drop_collected = true;
        for (int i = 0; r->pending && i < partitions->cnt; i++)
            rd_kafka_topic_partition_list_del(r->pending, partitions->elems[i].topic,
                                              partitions->elems[i].partition);
        error = rd_kafka_incremental_unassign(rk, partitions);
        if (r->cfg->changelog && !r->closing)
            drop_partitions(r, partitions);
    }
    if (r->standby_check_ms)
        r->standby_check_ms = tly_clock_mono_ms() + STANDBY_MS;
    tly_log("info", "rebalance", "change=%s partitions=%d ms=%lld", change, partitions->cnt,
            (long long)(tly_clock_mono_ms() - started));
    tly_metrics_set(r->metrics, TLY_G_REBALANCE_MS, tly_clock_mono_ms() - started);
    if (error) {
        tly_log("error", "rebalance", "error=\"%s\"", rd_kafka_error_string(error));
        rd_kafka_error_destroy(error);
    }
}

static rd_kafka_t *new_producer(struct runner *r, char *errbuf, size_t errlen)
{
    char transactional_id[512], txn_timeout[32], client_id[300];
    rd_kafka_conf_t *conf;
    rd_kafka_t *rk;
    rd_kafka_error_t *error;

    snprintf(txn_timeout, sizeof(txn_timeout), "%lld", (long long)r->cfg->transaction_timeout_ms);
    /* The same instance id always gets the same transactional.id, so a
     * restarted instance fences its previous self. */
    snprintf(transactional_id, sizeof(transactional_id), "tally-%s-%s", r->cfg->group_id,
             r->cfg->instance_id);
    snprintf(client_id, sizeof(client_id), "tally-%s", r->cfg->instance_id);
    {
        const char *const defaults[] = {"client.id", client_id, "linger.ms", "5",
                                        /* librdkafka: at most transaction.timeout.ms */
                                        "message.timeout.ms", txn_timeout, NULL};
        const char *const required[] = {"transactional.id", transactional_id,
                                        "transaction.timeout.ms", txn_timeout, NULL};
        if (!(conf = tly_kconf_new(r->cfg->brokers, defaults, required, errbuf, errlen)))
            return NULL;
    }
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rd_kafka_conf_set_opaque(conf, r);
    if (!(rk = tly_kconf_client(RD_KAFKA_PRODUCER, conf, "the producer", errbuf, errlen)))
        return NULL;
    if ((error = rd_kafka_init_transactions(rk, KAFKA_TIMEOUT_MS))) {
        tly_error(errbuf, errlen, "init_transactions (transactional.id %s): %s", transactional_id,
             rd_kafka_error_string(error));
        rd_kafka_error_destroy(error);
        rd_kafka_destroy(rk);
        return NULL;
    }
    /* Learn the leaders of every topic this producer writes to now: otherwise
     * the first transaction waits about a second for that metadata, and the
     * first output after a restart comes that much later. */
    {
        const char *names[] = {r->topics.changelog.name, r->topics.output.name, r->topics.dlq.name,
                               r->topics.snapshots.name};
        for (size_t i = 0; i < sizeof(names) / sizeof(*names); i++) {
            rd_kafka_topic_t *t = rd_kafka_topic_new(rk, names[i], NULL);
            const struct rd_kafka_metadata *md = NULL;
            if (t && rd_kafka_metadata(rk, 0, t, &md, 5000) == RD_KAFKA_RESP_ERR_NO_ERROR)
                rd_kafka_metadata_destroy(md);
            if (t)
                rd_kafka_topic_destroy(t);
        }
    }
    tly_log("info", "producer_ready", "transactional_id=%s", transactional_id);
    return rk;
}

static rd_kafka_t *new_consumer(struct runner *r, char *errbuf, size_t errlen)
{
    rd_kafka_topic_partition_list_t *topics;
    rd_kafka_resp_err_t err;
    char session_timeout[32], client_id[300];
    rd_kafka_conf_t *conf;
    rd_kafka_t *rk;

    snprintf(session_timeout, sizeof(session_timeout), "%lld", (long long)r->cfg->session_timeout_ms);
    snprintf(client_id, sizeof(client_id), "tally-%s", r->cfg->instance_id);
    {
        /* members learn of a rebalance from a heartbeat: with librdkafka's 3 s
         * each of the two cooperative rounds waited that long */
        const char *const defaults[] = {"client.id", client_id, "heartbeat.interval.ms", "1000", NULL};
        /* static membership: a restart within the session timeout gets its
         * partitions back without a rebalance. 45 s (Kafka's default) also
         * outlasts a broker restart, which a 10 s session did not always. */
        const char *const required[] = {"group.id", r->cfg->group_id,
                                        "group.instance.id", r->cfg->instance_id,
                                        "session.timeout.ms", session_timeout,
                                        "isolation.level", "read_committed",
                                        "enable.auto.commit", "false",
                                        "enable.auto.offset.store", "false",
                                        "auto.offset.reset", "earliest",
                                        "partition.assignment.strategy", "cooperative-sticky",
                                        NULL};
        if (!(conf = tly_kconf_new(r->cfg->brokers, defaults, required, errbuf, errlen)))
            return NULL;
    }
    rd_kafka_conf_set_rebalance_cb(conf, on_rebalance);
    rd_kafka_conf_set_opaque(conf, r);
    if (!(rk = tly_kconf_client(RD_KAFKA_CONSUMER, conf, "the consumer", errbuf, errlen)))
        return NULL;
    rd_kafka_poll_set_consumer(rk);
    topics = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(topics, r->topics.input.name, RD_KAFKA_PARTITION_UA);
    err = rd_kafka_subscribe(rk, topics);
    rd_kafka_topic_partition_list_destroy(topics);
    if (err) {
        tly_error(errbuf, errlen, "cannot subscribe to %s: %s", r->topics.input.name, rd_kafka_err2str(err));
        rd_kafka_destroy(rk);
        return NULL;
    }
    return rk;
}

/* ------------------------------------------------------------------------ */
/* One batch                                                                 */
/* ------------------------------------------------------------------------ */

static void release_collected(struct runner *r)
{
    for (int i = 0; i < r->count; i++)
        rd_kafka_message_destroy(r->messages[i]);
    r->count = 0;
}

/* Seeks every assigned partition back to its committed offset (or the start). */
static int rewind_consumer(struct runner *r, char *errbuf, size_t errlen)
{
    rd_kafka_topic_partition_list_t *assigned = NULL;
    rd_kafka_error_t *error;
    rd_kafka_resp_err_t err = rd_kafka_assignment(r->consumer, &assigned);
    int rc = -1;

    if (err) {
        tly_error(errbuf, errlen, "cannot read assignment: %s", rd_kafka_err2str(err));
        goto done;
    }
    if (assigned->cnt == 0) {
        rc = 0;
        goto done;
    }
    if ((err = rd_kafka_committed(r->consumer, assigned, KAFKA_TIMEOUT_MS))) {
        tly_error(errbuf, errlen, "cannot read committed offsets: %s", rd_kafka_err2str(err));
        goto done;
    }
    positions_from_state(r, assigned);
    for (int i = 0; i < assigned->cnt; i++)
        if (assigned->elems[i].offset < 0)
            assigned->elems[i].offset = RD_KAFKA_OFFSET_BEGINNING;
    if ((error = rd_kafka_seek_partitions(r->consumer, assigned, KAFKA_TIMEOUT_MS))) {
        tly_error(errbuf, errlen, "cannot rewind: %s", rd_kafka_error_string(error));
        rd_kafka_error_destroy(error);
        goto done;
    }
    tly_log("info", "rewind", "partitions=%d", assigned->cnt);
    rc = 0;
done:
    if (assigned)
        rd_kafka_topic_partition_list_destroy(assigned);
    return rc;
}

/* Seeks each partition of the collected messages (and of extra, when not
 * NULL) back to the first one collected: they are dropped and read again.
 * Nothing else needs to move - the consumer has handed out nothing beyond
 * them - and no broker round trip is needed: during a rebalance,
 * rd_kafka_committed() waits for its second round (seconds), and so would
 * every partition that did not move. A partition no longer assigned is left
 * alone. Returns 0 or -1 with errbuf. */
static int rewind_collected(struct runner *r, const rd_kafka_message_t *extra, char *errbuf,
                            size_t errlen)
{
    rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(8);
    rd_kafka_error_t *error;
    int rc = 0;

    for (int i = 0; i <= r->count; i++) {
        const rd_kafka_message_t *m = i < r->count ? r->messages[i] : extra;
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
            rc = rewind_consumer(r, errbuf, errlen);
        } else {
            tly_log("info", "rewind", "partitions=%d", list->cnt);
        }
    }
    rd_kafka_topic_partition_list_destroy(list);
    return rc;
}

/* Produces one message inside the open transaction, waiting while the local
 * queue is full. Returns 0 or the librdkafka error. */
static rd_kafka_resp_err_t produce_to(struct runner *r, const char *topic, int32_t partition,
                                      const void *key, size_t key_len, const void *value,
                                      size_t value_len, rd_kafka_headers_t *headers)
{
    rd_kafka_resp_err_t err;
    for (;;) {
        if (headers)
            err = rd_kafka_producev(r->producer, RD_KAFKA_V_TOPIC(topic),
                                    RD_KAFKA_V_PARTITION(partition),
                                    RD_KAFKA_V_KEY(key, key_len),
                                    RD_KAFKA_V_VALUE((void *)value, value_len),
                                    RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                    RD_KAFKA_V_HEADERS(headers), RD_KAFKA_V_END);
        else
            err = rd_kafka_producev(r->producer, RD_KAFKA_V_TOPIC(topic),
                                    RD_KAFKA_V_PARTITION(partition),
                                    RD_KAFKA_V_KEY(key, key_len),
                                    RD_KAFKA_V_VALUE((void *)value, value_len),
                                    RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
        if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL)
            return err;
        rd_kafka_poll(r->producer, 10);
    }
}

/* To the partition the topic's partitioner picks for the key. */
static rd_kafka_resp_err_t produce(struct runner *r, const char *topic, const void *key,
                                   size_t key_len, const void *value, size_t value_len,
                                   rd_kafka_headers_t *headers)
{
    return produce_to(r, topic, RD_KAFKA_PARTITION_UA, key, key_len, value, value_len, headers);
}

struct produce_ctx {
    struct runner *r;
    const char *topic;
    rd_kafka_resp_err_t err;
    int64_t count;
};

/* A change made by input partition p goes to changelog partition p (the
 * topics have the same partition count): whoever takes p over next replays
 * that partition alone. */
static int produce_changelog_row(void *ctx, int64_t seq, const char *key, size_t key_len,
                                 int part, const char *line, size_t line_len)
{
    struct produce_ctx *c = ctx;
    (void)seq;
    c->err = produce_to(c->r, c->topic, part >= 0 ? part : RD_KAFKA_PARTITION_UA, key, key_len,
                        line, line_len, NULL);
    c->count++;
    return c->err ? 1 : 0;
}

/* Output records go through the pack (--batch-size), which calls this. */
static int produce_output_message(void *ctx, const char *key, size_t key_len, const char *value,
                                  size_t value_len)
{
    struct produce_ctx *c = ctx;
    c->err = produce(c->r, c->topic, key, key_len, value, value_len, NULL);
    return c->err ? 1 : 0;
}

static int produce_output(void *ctx, const char *key, size_t key_len, const char *value,
                          size_t value_len)
{
    struct produce_ctx *c = ctx;
    c->count++;
    return tly_pack_add(c->r->pack, key, key_len, value, value_len);
}

/* The batch's or flush's outputs: @flush for the strategies that emit from
 * the database's pending set (inline and window_stream here, in the batch's
 * transaction), @emit for a pipeline without one. Sends the last pack. */
static int emit_outputs(struct runner *r, struct produce_ctx *ctx, int64_t seq_before,
                        int64_t seq_after, bool from_pending, char *err, size_t errlen)
{
    int rc;
    tly_pack_reset(r->pack, ctx);
    if (from_pending)
        rc = tly_pipeline_flush(r->pipeline, seq_after, produce_output, ctx, err, errlen);
    else
        rc = tly_pipeline_emit(r->pipeline, seq_before, seq_after, produce_output, ctx, err, errlen);
    if (rc == 0 && tly_pack_finish(r->pack) != 0)
        rc = tly_error(err, errlen, "cannot produce a packed message");
    if (rc < 0 && ctx->err)
        tly_error(err, errlen, "%s", rd_kafka_err2str(ctx->err));
    return rc;
}

/* Whether the batch itself emits (inline, window_stream), and from where. */
static bool batch_emits(const struct runner *r)
{
    return r->cfg->strategy == TLY_EMIT_INLINE || r->cfg->strategy == TLY_EMIT_WINDOW_STREAM;
}

static rd_kafka_resp_err_t produce_dead_letter(struct runner *r, const rd_kafka_message_t *m,
                                               const char *reason)
{
    rd_kafka_headers_t *headers = rd_kafka_headers_new(4);
    char number[32];
    rd_kafka_resp_err_t err;

    rd_kafka_header_add(headers, "tally.error", -1, reason, -1);
    rd_kafka_header_add(headers, "tally.topic", -1, rd_kafka_topic_name(m->rkt), -1);
    snprintf(number, sizeof(number), "%d", (int)m->partition);
    rd_kafka_header_add(headers, "tally.partition", -1, number, -1);
    snprintf(number, sizeof(number), "%lld", (long long)m->offset);
    rd_kafka_header_add(headers, "tally.offset", -1, number, -1);
    err = produce(r, r->topics.dlq.name, m->key, m->key_len, m->payload, m->len, headers);
    if (err)
        rd_kafka_headers_destroy(headers); /* producev only takes ownership on success */
    return err;
}

/* The input positions after this batch: per partition, last offset + 1. */
static rd_kafka_topic_partition_list_t *batch_offsets(struct runner *r)
{
    rd_kafka_topic_partition_list_t *offsets = rd_kafka_topic_partition_list_new(8);
    for (int i = 0; i < r->count; i++) {
        rd_kafka_message_t *m = r->messages[i];
        rd_kafka_topic_partition_t *p =
            rd_kafka_topic_partition_list_find(offsets, rd_kafka_topic_name(m->rkt), m->partition);
        if (!p)
            p = rd_kafka_topic_partition_list_add(offsets, rd_kafka_topic_name(m->rkt), m->partition);
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
    tly_log("warn", event, "topic=%s partition=%d offset=%lld reason=%s dead_letter=%s unlogged=%lld",
            rd_kafka_topic_name(m->rkt), (int)m->partition, (long long)m->offset,
            tly_log_quote(reason, quoted, sizeof(quoted)), r->topics.dlq.name,
            (long long)r->errors_unlogged);
    r->errors_unlogged = 0;
}

/* One tally.counters changelog row per input partition the batch read
 * (changelog.h): the partition's counters and the offsets consumed. */
static int record_counters(struct runner *r, char *err, size_t errlen)
{
    for (int i = 0; i < r->count; i++) {
        int32_t p = r->messages[i]->partition;
        int64_t from = r->messages[i]->offset, to = from + 1;
        bool first = true;
        for (int j = 0; j < i && first; j++)
            first = r->messages[j]->partition != p;
        if (!first)
            continue;
        for (int j = i + 1; j < r->count; j++)
            if (r->messages[j]->partition == p) {
                if (r->messages[j]->offset < from)
                    from = r->messages[j]->offset;
                if (r->messages[j]->offset + 1 > to)
                    to = r->messages[j]->offset + 1;
            }
        if (tly_changelog_record_counters(r->store, tly_pipeline_name(r->pipeline), (int)p,
                                          r->topics.input.name, from, to,
                                          r->cfg->instance_id, err, errlen) < 0)
            return -1;
    }
    return 0;
}

enum batch_result { BATCH_COMMITTED, BATCH_ABORTED, BATCH_FATAL };

/* A committed batch's figures. End-to-end latency is measured from each
 * input record's Kafka timestamp (set by its producer, or by the broker for
 * LogAppendTime topics) to now, when the batch's outputs became visible to
 * read_committed readers. */
static void count_batch(struct runner *r, const tly_batch_stats *stats, int64_t outputs,
                        int64_t last_seq, int64_t t_start, int64_t t_applied, int64_t t_produced,
                        int64_t t_kafka)
{
    int64_t now = tly_clock_wall_ms();
    tly_metrics *m = r->metrics;
    tly_metrics_add(m, TLY_C_CONSUMED, r->count);
    tly_metrics_add(m, TLY_C_APPLIED, stats->applied);
    tly_metrics_add(m, TLY_C_REJECTED, stats->rejected);
    tly_metrics_add(m, TLY_C_SKIPPED, stats->skipped);
    tly_metrics_add(m, TLY_C_LATE, stats->late);
    tly_metrics_add(m, TLY_C_DEAD_LETTERED, stats->rejected + stats->late);
    tly_metrics_add(m, TLY_C_CHANGES, stats->changes);
    tly_metrics_add(m, TLY_C_OUTPUTS, outputs);
    tly_metrics_add(m, TLY_C_BATCHES, 1);
    tly_metrics_add(m, TLY_C_TXN_COMMITTED, 1);
    tly_metrics_observe_ms(m, TLY_H_APPLY, (double)(t_applied - t_start), 1);
    tly_metrics_observe_ms(m, TLY_H_COMMIT, (double)(t_kafka - t_produced), 1);
    tly_metrics_observe_ms(m, TLY_H_BATCH, (double)(tly_clock_mono_ms() - t_start), 1);
    for (int i = 0; i < r->count; i++) {
        int64_t ts = rd_kafka_message_timestamp(r->messages[i], NULL);
        if (ts > 0)
            tly_metrics_observe_ms(m, TLY_H_E2E, (double)(now - ts), 1);
    }
    tly_metrics_set(m, TLY_G_LAST_SEQ, last_seq);
}

/* Every second between batches: consumer lag per assigned partition (the
 * high watermark librdkafka last saw minus our position: no broker round
 * trip), and every ten seconds the changelog table's row count. */
static void update_gauges(struct runner *r)
{
    rd_kafka_topic_partition_list_t *assigned = NULL;
    int64_t now = tly_clock_mono_ms();
    static const int64_t every_ms = 1000;

    if (!r->metrics || now - r->last_gauges < every_ms)
        return;
    if (now / 10000 != r->last_gauges / 10000) {
        int64_t moved = 0, rows = tly_changelog_rows(r->store);
        if (rows >= 0)
            tly_metrics_set(r->metrics, TLY_G_CHANGELOG_ROWS, rows);
        if (tly_store_meta_get_int(r->store, TLY_META_ROWS_MOVED, &moved) == 1 &&
            moved > tly_metrics_get(r->metrics, TLY_G_ROWS_MOVED)) {
            tly_log("warn", "input_not_keyed_by_state",
                    "rows_moved=%lld note=\"events for one state row came from several input "
                    "partitions: key the input by the state's key before running several "
                    "instances\"", (long long)moved);
            tly_metrics_set(r->metrics, TLY_G_ROWS_MOVED, moved);
        }
    }
    r->last_gauges = now;
    if (rd_kafka_assignment(r->consumer, &assigned) != RD_KAFKA_RESP_ERR_NO_ERROR)
        return;
    if (rd_kafka_position(r->consumer, assigned) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        for (int i = 0; i < assigned->cnt; i++) {
            int64_t low, high;
            rd_kafka_topic_partition_t *p = &assigned->elems[i];
            if (rd_kafka_get_watermark_offsets(r->consumer, p->topic, p->partition, &low, &high) ==
                    RD_KAFKA_RESP_ERR_NO_ERROR &&
                high >= 0 && p->offset >= 0)
                tly_metrics_set_lag(r->metrics, p->topic, p->partition, high - p->offset);
        }
    }
    rd_kafka_topic_partition_list_destroy(assigned);
}

/* Aborts the Kafka transaction after an abortable error; rolls SQLite back. */
static enum batch_result abort_batch(struct runner *r, const char *what, const char *why,
                                     char *errbuf, size_t errlen)
{
    rd_kafka_error_t *error;
    tly_store_rollback(r->store);
    tly_log("warn", "transaction_aborted", "step=%s error=\"%s\"", what, why);
    r->aborted++;
    tly_metrics_add(r->metrics, TLY_C_TXN_ABORTED, 1);
    if ((error = rd_kafka_abort_transaction(r->producer, KAFKA_TIMEOUT_MS))) {
        tly_error(errbuf, errlen, "cannot abort the transaction after %s failed (%s): %s", what, why,
             rd_kafka_error_string(error));
        rd_kafka_error_destroy(error);
        return BATCH_FATAL;
    }
    /* the batch's messages are read again (between batches there are none) */
    if (rewind_collected(r, NULL, errbuf, errlen) < 0)
        return BATCH_FATAL;
    return BATCH_ABORTED;
}

/* Classifies a transactional API error: fatal, abortable, or retriable. */
static enum batch_result txn_error(struct runner *r, const char *what, rd_kafka_error_t *error,
                                   char *errbuf, size_t errlen)
{
    char why[512];
    enum batch_result result;
    snprintf(why, sizeof(why), "%s", rd_kafka_error_string(error));
    if (rd_kafka_error_is_fatal(error) || !rd_kafka_error_txn_requires_abort(error)) {
        tly_store_rollback(r->store);
        tly_error(errbuf, errlen, "%s: %s%s", what, why,
             rd_kafka_error_code(error) == RD_KAFKA_RESP_ERR__FENCED ||
                     rd_kafka_error_code(error) == RD_KAFKA_RESP_ERR_PRODUCER_FENCED
                 ? " (another instance with the same --instance-id took over)"
                 : "");
        rd_kafka_error_destroy(error);
        return BATCH_FATAL;
    }
    rd_kafka_error_destroy(error);
    result = abort_batch(r, what, why, errbuf, errlen);
    return result;
}

static enum batch_result process_batch(struct runner *r, char *errbuf, size_t errlen)
{
    rd_kafka_error_t *error;
    rd_kafka_topic_partition_list_t *offsets;
    rd_kafka_consumer_group_metadata_t *group;
    struct produce_ctx ctx = {r, NULL, 0, 0};
    tly_batch_stats stats;
    int64_t seq_before, seq_after;
    bool has_flush = tly_pipeline_has_flush(r->pipeline);
    char err[512];

    int64_t t_start = tly_clock_mono_ms(), t_applied, t_produced, t_kafka;

    r->batches++;
    r->delivery_failed = false;
    if ((error = rd_kafka_begin_transaction(r->producer)))
        return txn_error(r, "begin_transaction", error, errbuf, errlen);
    for (int i = 0; i < r->count; i++) {
        r->events[i].data = r->messages[i]->payload ? r->messages[i]->payload : "";
        r->events[i].len = r->messages[i]->len;
        r->events[i].partition = (int)r->messages[i]->partition;
    }
    if (tly_store_begin(r->store, err, sizeof(err)) < 0)
        goto database_failed;
    seq_before = tly_store_last_seq(r->store);
    if (tly_pipeline_apply(r->pipeline, r->events, (size_t)r->count, r->results, &stats, err,
                           sizeof(err)) < 0 ||
        record_counters(r, err, sizeof(err)) < 0)
        goto database_failed;
    seq_after = tly_store_last_seq(r->store);
    t_applied = tly_clock_mono_ms();
    crash_point(r, "after_apply");

    for (int i = 0; i < r->count; i++) {
        tly_event_status status = r->results[i].status;
        if (status == TLY_EVENT_REJECTED || status == TLY_EVENT_LATE) {
            rd_kafka_resp_err_t e = produce_dead_letter(r, r->messages[i], r->results[i].reason);
            if (e)
                return abort_batch(r, "produce dead letter", rd_kafka_err2str(e), errbuf, errlen);
            log_rejected(r, r->messages[i], status == TLY_EVENT_LATE ? "late" : "error",
                         r->results[i].reason);
        } else if (r->results[i].status == TLY_EVENT_SKIPPED) {
            char quoted[256];
            tly_log("info", "skip", "partition=%d offset=%lld reason=%s", (int)r->messages[i]->partition,
                    (long long)r->messages[i]->offset,
                    tly_log_quote(r->results[i].reason, quoted, sizeof(quoted)));
        }
    }
    if (r->cfg->changelog) {
        ctx.topic = r->topics.changelog.name;
        if (tly_changelog_scan(r->store, seq_before, seq_after, produce_changelog_row, &ctx, err,
                               sizeof(err)) < 0)
            return abort_batch(r, "produce changelog", ctx.err ? rd_kafka_err2str(ctx.err) : err,
                               errbuf, errlen);
    }
    ctx.topic = r->topics.output.name;
    ctx.count = 0;
    ctx.err = 0;
    if (batch_emits(r) && emit_outputs(r, &ctx, seq_before, seq_after, has_flush, err,
                                       sizeof(err)) < 0)
        return abort_batch(r, "produce outputs", err, errbuf, errlen);
    t_produced = tly_clock_mono_ms();
    crash_point(r, "after_produce");

    offsets = batch_offsets(r);
    group = rd_kafka_consumer_group_metadata(r->consumer);
    /* A retriable error (a timeout, a coordinator moving) may simply be tried
     * again, as librdkafka's INTRODUCTION.md describes. */
    while ((error = rd_kafka_send_offsets_to_transaction(r->producer, offsets, group,
                                                         KAFKA_TIMEOUT_MS)) &&
           rd_kafka_error_is_retriable(error)) {
        tly_log("warn", "send_offsets_retry", "error=\"%s\"", rd_kafka_error_string(error));
        rd_kafka_error_destroy(error);
    }
    rd_kafka_consumer_group_metadata_destroy(group);
    if (error) {
        rd_kafka_topic_partition_list_destroy(offsets);
        return txn_error(r, "send_offsets_to_transaction", error, errbuf, errlen);
    }
    crash_point(r, "after_offsets");
    while ((error = rd_kafka_commit_transaction(r->producer, KAFKA_TIMEOUT_MS))) {
        if (rd_kafka_error_is_retriable(error)) {
            tly_log("warn", "commit_retry", "error=\"%s\"", rd_kafka_error_string(error));
            rd_kafka_error_destroy(error);
            continue;
        }
        rd_kafka_topic_partition_list_destroy(offsets);
        return txn_error(r, "commit_transaction", error, errbuf, errlen);
    }
    rd_kafka_poll(r->producer, 0); /* serve the last delivery reports */
    t_kafka = tly_clock_mono_ms();
    crash_point(r, "after_commit");

    /* Kafka has the batch; now SQLite records where it stands and commits. */
    for (int i = 0; i < offsets->cnt; i++) {
        char key[512];
        tly_meta_key_position(TLY_META_INPUT, offsets->elems[i].topic, (int)offsets->elems[i].partition,
                            key, sizeof(key));
        if (tly_store_meta_set_int(r->store, key, offsets->elems[i].offset) < 0) {
            rd_kafka_topic_partition_list_destroy(offsets);
            snprintf(err, sizeof(err), "%s", sqlite3_errmsg(tly_store_db(r->store)));
            goto database_failed_after_kafka;
        }
    }
    rd_kafka_topic_partition_list_destroy(offsets);
    for (int p = 0; r->cfg->changelog && p < TLY_MAX_PARTITIONS; p++) {
        char key[512];
        if (r->changelog_offsets[p] < 0)
            continue;
        tly_meta_key_position(TLY_META_CHANGELOG, r->topics.changelog.name, p, key, sizeof(key));
        if (tly_store_meta_set_int(r->store, key, r->changelog_offsets[p]) < 0) {
            snprintf(err, sizeof(err), "%s", sqlite3_errmsg(tly_store_db(r->store)));
            goto database_failed_after_kafka;
        }
    }
    /* What the batch emitted from the pending set is out: forget it. */
    if (batch_emits(r) && has_flush &&
        tly_pipeline_flushed(r->pipeline, seq_after, err, sizeof(err)) < 0)
        goto database_failed_after_kafka;
    if (tly_store_commit(r->store, err, sizeof(err)) < 0)
        goto database_failed_after_kafka;
    if (tly_clock_mono_ms() - t_start >= 500)
        tly_log("warn", "slow_batch",
                "events=%d total_ms=%lld apply_ms=%lld produce_ms=%lld kafka_commit_ms=%lld "
                "sqlite_commit_ms=%lld",
                r->count, (long long)(tly_clock_mono_ms() - t_start), (long long)(t_applied - t_start),
                (long long)(t_produced - t_applied), (long long)(t_kafka - t_produced),
                (long long)(tly_clock_mono_ms() - t_kafka));
    stats.changes = seq_after - seq_before; /* the counters row too: every row mirrored */
    r->applied += stats.applied;
    r->rejected += stats.rejected;
    r->skipped += stats.skipped;
    r->late += stats.late;
    r->changes += stats.changes;
    r->outputs += ctx.count;
    count_batch(r, &stats, ctx.count, seq_after, t_start, t_applied, t_produced, t_kafka);
    return BATCH_COMMITTED;

database_failed:
    tly_store_rollback(r->store);
    {
        char why[600];
        snprintf(why, sizeof(why), "database: %s", err);
        if (abort_batch(r, "apply", why, errbuf, errlen) == BATCH_FATAL)
            return BATCH_FATAL;
        tly_error(errbuf, errlen, "database error, batch aborted: %s", err);
        return BATCH_FATAL;
    }
database_failed_after_kafka:
    /* Kafka committed; the changelog replay on the next start restores it. */
    tly_store_rollback(r->store);
    tly_error(errbuf, errlen, "database error after the Kafka commit (restart replays it): %s", err);
    return BATCH_FATAL;
}

/* ------------------------------------------------------------------------ */
/* Snapshots                                                                 */
/* ------------------------------------------------------------------------ */

/* The changelog table is pruned up to the newest snapshot (recovery never needs
 * the rows inside one: the changelog topic has them; and snapshot + an export
 * of the rows after it rebuild the state offline), but rows younger than
 * changelog_retention_ms stay for `tally changelog export`. Without snapshots,
 * only the retention bounds it. Sets the bound; prune_some() deletes in small
 * steps between batches. */
static void plan_pruning(struct runner *r)
{
    int64_t upto = r->cfg->snapshot_interval_ms > 0 ? r->snapshot_seq : tly_store_last_seq(r->store);
    int64_t below;

    if (upto <= 0)
        return;
    below = tly_changelog_prune_bound(r->store, upto,
                                      tly_clock_wall_ms() - r->cfg->changelog_retention_ms);
    if (below > r->prune_below)
        r->prune_below = below;
}

#define PRUNE_STEP 20000
#define VACUUM_STEP 1024 /* pages (4 MiB, ~25 ms here) per incremental_vacuum step */

/* Deletes at most PRUNE_STEP changelog rows below prune_below: each step is
 * one short write transaction, so ingestion never waits long behind it. Then
 * the freed pages go back to the file system, a step at a time. */
static void prune_some(struct runner *r)
{
    char err[512];
    int changes;
    int64_t free_pages;

    if (r->prune_below <= 0)
        return;
    if ((changes = tly_changelog_prune(r->store, r->prune_below, PRUNE_STEP, err, sizeof(err))) < 0)
        tly_log("warn", "changelog_prune_error", "error=\"%s\"", err);
    else
        r->pruned_rows += changes;
    if (changes > 0)
        return;
    if ((free_pages = tly_store_vacuum_step(r->store, VACUUM_STEP, err, sizeof(err))) < 0)
        tly_log("warn", "changelog_prune_error", "error=\"%s\"", err);
    else if (free_pages > 0)
        return;
    if (r->pruned_rows > 0)
        tly_log("info", "changelog_pruned", "rows=%lld below_seq=%lld", (long long)r->pruned_rows,
                (long long)r->prune_below);
    r->prune_below = 0;
    r->pruned_rows = 0;
}

/* Every snapshot_interval_ms a snapshot of the database is written by a
 * thread of its own (engine/snapshot.c: its own connection and read
 * transaction, so it sees exactly the last committed batch while the daemon
 * goes on writing - WAL keeps both apart). Copying a database of a million
 * keys takes about half a second; on the daemon's thread that was a stall
 * of every batch behind it. When the thread is done, the daemon produces the
 * manifest, keyed by pipeline, to the compacted <prefix>-snapshots topic in
 * a transaction of its own, between batches. A failed snapshot is logged and
 * retried at the next interval: the changelog still holds everything. */
struct snapshot_job {
    pthread_t thread;
    bool running;
    atomic_bool done;
    int rc;
    int64_t started_ms, written_ms;
    tly_snapshot_manifest manifest;
    char why[1024];
    /* inputs, copied: the thread owns nothing of the runner */
    char db_path[4096], dir[4096];
    int keep;
};

static void *snapshot_thread(void *arg)
{
    struct snapshot_job *job = arg;
    /* Only reads the database; recording the manifest is a write, done by
     * the daemon on its own connection between batches (a second writer
     * here would wait behind every batch's open transaction). */
    job->rc = tly_snapshot_copy(job->db_path, job->dir, &job->manifest, job->why, sizeof(job->why));
    job->written_ms = tly_clock_mono_ms();
    atomic_store(&job->done, true);
    return NULL;
}

static void start_snapshot(struct runner *r)
{
    struct snapshot_job *job = r->snapshot_job;
    int err;
    snprintf(job->db_path, sizeof(job->db_path), "%s", r->db_path);
    snprintf(job->dir, sizeof(job->dir), "%s", r->snapshot_dir);
    job->keep = r->cfg->snapshot_keep;
    job->started_ms = tly_clock_mono_ms();
    atomic_store(&job->done, false);
    if ((err = pthread_create(&job->thread, NULL, snapshot_thread, job)) != 0) {
        tly_log("error", "snapshot_error", "error=\"cannot start a thread: %s\"", strerror(err));
        return;
    }
    job->running = true;
}

/* Between batches, a Kafka transaction of its own around fill(): the snapshot
 * manifest, a log_compacted flush. fill returns 0, or -1 with why. Returns 1
 * when committed, 0 when aborted (the caller retries later), -1 on a fatal
 * error (errbuf). A failed fill or commit is also logged as error_event when
 * that is not NULL. */
static int own_transaction(struct runner *r, const char *what, const char *error_event,
                           int (*fill)(struct runner *r, void *ctx, char *why, size_t whylen),
                           void *ctx, char *errbuf, size_t errlen)
{
    rd_kafka_error_t *error;
    char why[600], step[128];

    if ((error = rd_kafka_begin_transaction(r->producer))) {
        snprintf(step, sizeof(step), "begin_transaction (%s)", what);
        return txn_error(r, step, error, errbuf, errlen) == BATCH_FATAL ? -1 : 0;
    }
    if (fill(r, ctx, why, sizeof(why)) < 0) {
        if (error_event)
            tly_log("error", error_event, "error=%s", tly_log_quote(why, (char[700]){0}, 700));
        return abort_batch(r, what, why, errbuf, errlen) == BATCH_FATAL ? -1 : 0;
    }
    if ((error = rd_kafka_commit_transaction(r->producer, KAFKA_TIMEOUT_MS))) {
        if (error_event)
            tly_log("error", error_event, "error=%s",
                    tly_log_quote(rd_kafka_error_string(error), (char[700]){0}, 700));
        snprintf(step, sizeof(step), "commit_transaction (%s)", what);
        return txn_error(r, step, error, errbuf, errlen) == BATCH_FATAL ? -1 : 0;
    }
    return 1;
}

static int fill_manifest(struct runner *r, void *ctx, char *why, size_t whylen)
{
    const char *manifest = ctx;
    rd_kafka_resp_err_t err = produce(r, r->topics.snapshots.name, r->cfg->pipeline,
                                      strlen(r->cfg->pipeline), manifest, strlen(manifest), NULL);
    if (err)
        return tly_error(why, whylen, "%s", rd_kafka_err2str(err));
    return 0;
}

/* Produces a finished snapshot's manifest. Returns -1 only on a fatal
 * producer error. */
static int publish_snapshot(struct runner *r, char *errbuf, size_t errlen)
{
    struct snapshot_job *job = r->snapshot_job;
    tly_snapshot_manifest *m = &job->manifest;
    char manifest[8192];
    int64_t publishing = tly_clock_mono_ms();
    int rc;

    pthread_join(job->thread, NULL);
    job->running = false;
    if (job->rc < 0 || tly_snapshot_record(r->store, job->keep, m, job->why, sizeof(job->why)) < 0) {
        tly_metrics_add(r->metrics, TLY_C_SNAPSHOT_ERRORS, 1);
        tly_log("error", "snapshot_error", "error=%s", tly_log_quote(job->why, (char[1100]){0}, 1100));
        return 0;
    }
    if (tly_snapshot_manifest_json(m, manifest, sizeof(manifest)) < 0) {
        tly_log("error", "snapshot_error", "error=\"manifest of %s is too large\"", m->path);
        return 0;
    }
    if ((rc = own_transaction(r, "snapshot manifest", NULL, fill_manifest, manifest, errbuf, errlen)) <= 0)
        return rc;
    r->snapshots++;
    r->snapshot_seq = m->last_seq;
    tly_metrics_add(r->metrics, TLY_C_SNAPSHOTS, 1);
    tly_metrics_set(r->metrics, TLY_G_SNAPSHOT_WRITE_MS, job->written_ms - job->started_ms);
    tly_metrics_set(r->metrics, TLY_G_SNAPSHOT_BYTES, m->bytes);
    tly_metrics_set(r->metrics, TLY_G_SNAPSHOT_LAST_SEQ, m->last_seq);
    plan_pruning(r);
    /* write_ms: the copy, beside the daemon; publish_ms: the manifest's
     * transaction, which ingestion waits for. */
    tly_log("info", "snapshot", "snapshot=%s last_seq=%lld bytes=%lld write_ms=%lld publish_ms=%lld path=%s",
            m->snapshot_id, (long long)m->last_seq, (long long)m->bytes,
            (long long)(job->written_ms - job->started_ms), (long long)(tly_clock_mono_ms() - publishing),
            m->path);
    return 0;
}

static int maybe_snapshot(struct runner *r, char *errbuf, size_t errlen)
{
    int64_t now = tly_clock_mono_ms();

    if (r->snapshot_job->running) {
        if (atomic_load(&r->snapshot_job->done))
            return publish_snapshot(r, errbuf, errlen);
        return 0;
    }
    if (r->cfg->snapshot_interval_ms <= 0 || now < r->next_snapshot_ms)
        return 0;
    r->next_snapshot_ms = now + r->cfg->snapshot_interval_ms;
    plan_pruning(r);
    if (tly_store_last_seq(r->store) == r->snapshot_seq)
        return 0; /* nothing changed since the last one */
    start_snapshot(r);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* log_compacted: periodic flushes                                           */
/* ------------------------------------------------------------------------ */

/* Emits the latest record of every pending key (@flush) in one Kafka
 * transaction, then forgets them (@flushed) in SQLite. A crash after the
 * Kafka commit and before SQLite's emits the same records again at the next
 * flush (the same latest values, to a compacted topic); a crash before the
 * commit emits nothing, and the next flush covers it. A key changed again
 * after the flush read stays pending (its mark is newer than upto). */
struct flush_ctx {
    struct produce_ctx produced;
    int64_t upto;
};

/* Forgets, in a transaction of its own, what is pending up to seq upto
 * (@flushed). Returns 0, or -1 with err (rolled back: it stays pending). */
static int forget_pending(struct runner *r, int64_t upto, char *err, size_t errlen)
{
    if (tly_store_begin(r->store, err, errlen) < 0 ||
        tly_pipeline_flushed(r->pipeline, upto, err, errlen) < 0 ||
        tly_store_commit(r->store, err, errlen) < 0) {
        tly_store_rollback(r->store);
        return -1;
    }
    return 0;
}

static int fill_flush(struct runner *r, void *ctx, char *why, size_t whylen)
{
    struct flush_ctx *f = ctx;
    return emit_outputs(r, &f->produced, 0, f->upto, true, why, whylen);
}

static int flush_outputs(struct runner *r, const char *event, char *errbuf, size_t errlen)
{
    struct flush_ctx f = {{r, r->topics.output.name, 0, 0}, tly_store_last_seq(r->store)};
    int64_t started = tly_clock_mono_ms();
    char err[512];
    int rc;

    if ((rc = own_transaction(r, "flush", "flush_error", fill_flush, &f, errbuf, errlen)) <= 0)
        return rc;
    if (f.produced.count > 0)
        crash_point(r, "after_flush");
    if (forget_pending(r, f.upto, err, sizeof(err)) < 0)
        tly_log("warn", "flush_error", "error=%s note=\"the next flush repeats these records\"",
                tly_log_quote(err, (char[600]){0}, 600));
    r->outputs += f.produced.count;
    tly_metrics_add(r->metrics, TLY_C_OUTPUTS, f.produced.count);
    tly_log("info", event, "flush_duration_ms=%lld vin_count=%lld message_count=%lld upto_seq=%lld",
            (long long)(tly_clock_mono_ms() - started), (long long)f.produced.count,
            (long long)tly_pack_messages(r->pack), (long long)f.upto);
    return 0;
}

static int maybe_flush(struct runner *r, char *errbuf, size_t errlen)
{
    if (r->cfg->strategy != TLY_EMIT_LOG_COMPACTED || tly_clock_mono_ms() < r->next_flush_ms)
        return 0;
    r->next_flush_ms = tly_clock_mono_ms() + r->cfg->flush_interval_ms;
    return flush_outputs(r, "flush", errbuf, errlen);
}

/* After recovery, for the strategies whose batches emit (inline,
 * window_stream): the committed Kafka history already holds the outputs of
 * every change the database has, so a replayed change that the replay marked
 * pending again must not go out twice. What window_stream keeps for windows
 * still open stays pending. log_compacted and state_store keep everything:
 * which flush went out is not in the changelog, and emitting a latest record
 * again is harmless there. */
static int forget_emitted(struct runner *r, char *errbuf, size_t errlen)
{
    char err[512];
    if (!batch_emits(r) || !tly_pipeline_has_flush(r->pipeline))
        return 0;
    if (forget_pending(r, tly_store_last_seq(r->store), err, sizeof(err)) < 0)
        return tly_error(errbuf, errlen, "cannot settle what was emitted before: %s", err);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Partitions                                                                */
/* ------------------------------------------------------------------------ */

/* The pipeline's event totals are the sum over the partitions held. */
static int sum_counters(struct runner *r, char *errbuf, size_t errlen)
{
    if (tly_store_begin(r->store, errbuf, errlen) < 0)
        return -1;
    if (tly_changelog_sum_counters(r->store, tly_pipeline_name(r->pipeline), errbuf, errlen) < 0) {
        tly_store_rollback(r->store);
        return -1;
    }
    return tly_store_commit(r->store, errbuf, errlen);
}

static void count_held(struct runner *r)
{
    int64_t held = tly_partitions_count(r->store);
    if (held >= 0)
        tly_metrics_set(r->metrics, TLY_G_PARTITIONS_HELD, held);
}

static void drop_partition(struct runner *r, int p, const char *reason)
{
    int64_t started = tly_clock_mono_ms();
    char err[1024];
    if (tly_recovery_drop(r->store, r->rcfg, p, err, sizeof(err)) < 0) {
        /* Left as they are: the next take of the partition replaces them. */
        tly_log("error", "partition_drop_error", "partition=%d error=%s", p,
                tly_log_quote(err, (char[1100]){0}, 1100));
        return;
    }
    /* Or the next batch would record our last offset of p again, and a
     * later take of p would start its replay there, over rows now gone. */
    if (p >= 0 && p < TLY_MAX_PARTITIONS)
        r->changelog_offsets[p] = -1;
    tly_metrics_add(r->metrics, TLY_C_PARTITIONS_REVOKED, 1);
    tly_log("info", "partition_dropped", "partition=%d reason=%s ms=%lld", p, reason,
            (long long)(tly_clock_mono_ms() - started));
}

static void drop_partitions(struct runner *r, rd_kafka_topic_partition_list_t *partitions)
{
    char err[1024];
    for (int i = 0; i < partitions->cnt; i++)
        if (strcmp(partitions->elems[i].topic, r->topics.input.name) == 0)
            drop_partition(r, (int)partitions->elems[i].partition, "revoked");
    if (sum_counters(r, err, sizeof(err)) < 0)
        tly_log("error", "partition_drop_error", "error=%s", tly_log_quote(err, (char[1100]){0}, 1100));
    count_held(r);
}

/* A start can leave rows of partitions this instance is not assigned: the
 * partitions it held before it stopped (others may have them now), or all
 * of them after a rebuild from a snapshot or the whole changelog. They are
 * right as of the changelog offset recorded for them, so an assignment
 * soon after only replays the tail; once the group has left the consumer's
 * assignment alone for STANDBY_MS they are dropped. */
static void drop_standby(struct runner *r)
{
    rd_kafka_topic_partition_list_t *assigned = NULL;
    unsigned char present[TLY_MAX_PARTITIONS];
    bool any = false;
    char err[1024];

    if (!r->standby_check_ms || tly_clock_mono_ms() < r->standby_check_ms || !r->cfg->changelog)
        return;
    r->standby_check_ms = 0;
    if (rd_kafka_assignment(r->consumer, &assigned) != RD_KAFKA_RESP_ERR_NO_ERROR ||
        tly_recovery_present(r->store, r->rcfg, present, err, sizeof(err)) < 0) {
        if (assigned)
            rd_kafka_topic_partition_list_destroy(assigned);
        r->standby_check_ms = tly_clock_mono_ms() + STANDBY_MS; /* try again */
        return;
    }
    for (int i = 0; i < assigned->cnt; i++)
        if (assigned->elems[i].partition >= 0 && assigned->elems[i].partition < TLY_MAX_PARTITIONS)
            present[assigned->elems[i].partition] = 0;
    rd_kafka_topic_partition_list_destroy(assigned);
    for (int p = 0; p < TLY_MAX_PARTITIONS; p++)
        if (present[p]) {
            drop_partition(r, p, "not_assigned");
            any = true;
        }
    if (any && sum_counters(r, err, sizeof(err)) < 0)
        tly_log("error", "partition_drop_error", "error=%s", tly_log_quote(err, (char[1100]){0}, 1100));
    count_held(r);
}

/* Brings the state of the partitions in `committed` (their committed
 * offsets, read already) up to date: adapters/kafka/recovery.c tly_recovery_take.
 * waited is how long the offsets took. Returns 0, 1 when a changelog
 * partition still has a previous owner's transaction open (nothing done:
 * later), or -1 with errbuf. */
static int take_partitions(struct runner *r, rd_kafka_topic_partition_list_t *committed,
                           int64_t waited, char *errbuf, size_t errlen)
{
    tly_partition_take *takes = calloc((size_t)committed->cnt + 1, sizeof(*takes));
    int n = 0, rc = -1, taken = 0;
    char err[1024];

    if (!takes)
        return tly_error(errbuf, errlen, "out of memory");
    for (int i = 0; i < committed->cnt; i++) {
        int p = (int)committed->elems[i].partition;
        if (strcmp(committed->elems[i].topic, r->topics.input.name) == 0 && p >= 0 &&
            p < TLY_MAX_PARTITIONS)
            takes[n++].partition = p;
    }
    if (n > 0 &&
        (taken = tly_recovery_take(r->rcfg, tly_pipeline_entity(r->pipeline), takes, n, err,
                                   sizeof(err))) < 0) {
        tly_error(errbuf, errlen, "cannot take over the assigned partitions: %s", err);
        goto done;
    }
    if (taken == 1) { /* a changelog partition has a transaction open: later */
        rc = 1;
        goto done;
    }
    /* Nothing anywhere for a partition the group has consumed: the changelog
     * topic lost it (every committed batch leaves a counters record there).
     * Resuming from the committed offset would count it as empty. */
    for (int i = 0; i < n && !r->cfg->allow_empty; i++) {
        rd_kafka_topic_partition_t *c = rd_kafka_topic_partition_list_find(
            committed, r->topics.input.name, takes[i].partition);
        if (strcmp(takes[i].source, "new") == 0 && c && c->offset > 0) {
            tly_error(errbuf, errlen, "partition %d of %s: the group has consumed it up to offset "
                      "%lld, but neither this database, a snapshot in %s nor %s holds its state; "
                      "refusing to count it from empty (--allow-empty does)",
                      takes[i].partition, r->topics.input.name, (long long)c->offset,
                      r->snapshot_dir, r->topics.changelog.name);
            goto done;
        }
    }
    for (int i = 0; i < n; i++) {
        /* meta has where the take left the partition; our deliveries go on from there */
        r->changelog_offsets[takes[i].partition] = -1;
        tly_log("info", "partition_assigned",
                "partition=%d source=%s snapshot=%s records=%lld ms=%lld waited_ms=%lld",
                takes[i].partition, takes[i].source, takes[i].snapshot_id[0] ? takes[i].snapshot_id : "-",
                (long long)takes[i].records, (long long)takes[i].ms, (long long)waited);
        tly_metrics_set_partition_recovery(r->metrics, takes[i].partition, waited + takes[i].ms,
                                           takes[i].records);
        tly_metrics_add(r->metrics, TLY_C_PARTITIONS_ASSIGNED, 1);
    }
    /* What the replay marked pending was emitted by the previous owner. */
    if (sum_counters(r, errbuf, errlen) < 0 || forget_emitted(r, errbuf, errlen) < 0)
        goto done;
    count_held(r);
    rc = 0;
done:
    free(takes);
    return rc;
}

/* The group's committed offsets of the assigned partitions come first: with
 * read_committed, librdkafka asks for stable ones, which the broker withholds
 * while the previous owner's transaction is open (a crashed instance's ends
 * when its transaction.timeout.ms passes), so the changelog's end read next
 * holds every batch those offsets count. Usually they come at once and the
 * rebalance callback takes the partitions over before assigning them. When
 * they do not, the partitions are assigned paused, and take_pending asks
 * again between polls with a short timeout: while it waits the other
 * partitions flow. Once taken over they are sought to the committed offsets
 * (what was fetched before the pause is not used) and resumed. Returns 0
 * (done, or not yet), -1 with errbuf. */
static int take_pending(struct runner *r, char *errbuf, size_t errlen)
{
    rd_kafka_topic_partition_list_t *committed;
    rd_kafka_resp_err_t e;
    rd_kafka_error_t *error;
    int rc = -1;

    if (!r->pending || r->pending->cnt == 0 || tly_clock_mono_ms() < r->pending_next_try)
        return 0;
    committed = rd_kafka_topic_partition_list_copy(r->pending);
    if ((e = rd_kafka_committed(r->consumer, committed, 200))) {
        rd_kafka_topic_partition_list_destroy(committed);
        r->pending_next_try = tly_clock_mono_ms() + 300; /* the other partitions get the time between */
        if (e != RD_KAFKA_RESP_ERR__TIMED_OUT)
            return tly_error(errbuf, errlen, "cannot read the committed offsets: %s", rd_kafka_err2str(e));
        if (tly_clock_mono_ms() - r->pending_since > 10 * KAFKA_TIMEOUT_MS)
            return tly_error(errbuf, errlen, "the committed offsets of %d assigned partitions stayed "
                             "unstable for %d s", r->pending->cnt, 10 * KAFKA_TIMEOUT_MS / 1000);
        if (tly_clock_mono_ms() - r->pending_logged >= 5000) {
            r->pending_logged = tly_clock_mono_ms();
            tly_log("info", "committed_offsets_wait", "partitions=%d waited_ms=%lld note=\"a previous "
                    "owner's transaction is still open\"", r->pending->cnt,
                    (long long)(tly_clock_mono_ms() - r->pending_since));
        }
        return 0;
    }
    for (int i = 0; i < committed->cnt; i++)
        if (committed->elems[i].offset < 0)
            committed->elems[i].offset = RD_KAFKA_OFFSET_BEGINNING; /* auto.offset.reset */
    if ((rc = take_partitions(r, committed, tly_clock_mono_ms() - r->pending_since, errbuf, errlen)) != 0) {
        if (rc > 0) { /* the changelog still hides a previous owner's transaction */
            r->pending_next_try = tly_clock_mono_ms() + 300;
            if (tly_clock_mono_ms() - r->pending_logged >= 5000) {
                r->pending_logged = tly_clock_mono_ms();
                tly_log("info", "committed_offsets_wait", "partitions=%d waited_ms=%lld note=\"a "
                        "previous owner's transaction is still open on the changelog\"",
                        r->pending->cnt, (long long)(tly_clock_mono_ms() - r->pending_since));
            }
            rc = 0;
        }
        goto done;
    }
    rc = -1;
    if ((error = rd_kafka_seek_partitions(r->consumer, committed, KAFKA_TIMEOUT_MS))) {
        tly_error(errbuf, errlen, "cannot seek the assigned partitions: %s", rd_kafka_error_string(error));
        rd_kafka_error_destroy(error);
        goto done;
    }
    if ((e = rd_kafka_resume_partitions(r->consumer, committed))) {
        tly_error(errbuf, errlen, "cannot resume the assigned partitions: %s", rd_kafka_err2str(e));
        goto done;
    }
    rd_kafka_topic_partition_list_destroy(r->pending);
    r->pending = NULL;
    rc = 0;
done:
    rd_kafka_topic_partition_list_destroy(committed);
    return rc;
}

/* Whether m is from a partition still being taken over (fetched before the
 * pause took hold): such a message is read again after the seek. */
static bool is_pending(const struct runner *r, const rd_kafka_message_t *m)
{
    return r->pending && r->pending->cnt > 0 &&
           rd_kafka_topic_partition_list_find(r->pending, rd_kafka_topic_name(m->rkt), m->partition);
}

/* ------------------------------------------------------------------------ */
/* The loop                                                                  */
/* ------------------------------------------------------------------------ */

#define WATCHDOG_MS 60000

/* librdkafka 2.0.2 can lose a static member's assignment (a session timeout
 * during a broker restart) and never rejoin: the group stays empty and the
 * daemon idles forever. A consumer without partitions for WATCHDOG_MS is
 * replaced by a new one; with the same group.instance.id it rejoins at once.
 * Safe between batches: nothing is in flight, and the new consumer starts
 * from the committed offsets. */
static int watch_consumer(struct runner *r, char *errbuf, size_t errlen)
{
    rd_kafka_topic_partition_list_t *assigned = NULL;
    int64_t now = tly_clock_mono_ms();
    int count;

    if (now - r->last_watch < 1000)
        return 0;
    r->last_watch = now;
    if (rd_kafka_assignment(r->consumer, &assigned) != RD_KAFKA_RESP_ERR_NO_ERROR)
        return 0;
    count = assigned->cnt;
    rd_kafka_topic_partition_list_destroy(assigned);
    if (count > 0) {
        r->unassigned_since = 0;
        return 0;
    }
    if (!r->unassigned_since) {
        r->unassigned_since = now;
        return 0;
    }
    if (now - r->unassigned_since < WATCHDOG_MS)
        return 0;
    /* Only while the cluster answers: with the broker gone, destroying the
     * consumer can block for minutes (and SIGTERM with it), and a new one
     * could not join anyway. */
    {
        const struct rd_kafka_metadata *md = NULL;
        rd_kafka_resp_err_t err = rd_kafka_metadata(r->producer, 0, NULL, &md, 2000);
        if (md)
            rd_kafka_metadata_destroy(md);
        if (err) {
            tly_log("warn", "consumer_watchdog", "reason=\"no partitions for %d s, but the cluster "
                    "does not answer (%s): waiting\"", WATCHDOG_MS / 1000, rd_kafka_err2str(err));
            r->unassigned_since = now;
            return 0;
        }
    }
    tly_log("warn", "consumer_restart", "reason=\"no partitions for %d s\"", WATCHDOG_MS / 1000);
    release_collected(r);
    rd_kafka_destroy_flags(r->consumer, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
    r->unassigned_since = 0;
    r->standby_check_ms = tly_clock_mono_ms() + STANDBY_MS;
    if (r->pending) {
        rd_kafka_topic_partition_list_destroy(r->pending);
        r->pending = NULL;
    }
    if (!(r->consumer = new_consumer(r, errbuf, errlen)))
        return -1;
    return 0;
}

static int collect(struct runner *r, char *errbuf, size_t errlen)
{
    int64_t deadline = tly_clock_mono_ms() + r->cfg->commit_interval_ms;
    while (r->count < r->cfg->max_batch && !(r->cfg->stop && *r->cfg->stop)) {
        int64_t left = deadline - tly_clock_mono_ms();
        rd_kafka_message_t *m;
        if (left <= 0)
            break;
        m = rd_kafka_consumer_poll(r->consumer, (int)(left > 100 ? 100 : left));
        if (r->rebalance_error[0]) {
            if (m)
                rd_kafka_message_destroy(m);
            return tly_error(errbuf, errlen, "%s", r->rebalance_error);
        }
        if (m && !m->err && is_pending(r, m)) {
            rd_kafka_message_destroy(m);
            m = NULL;
        }
        if (r->pending && r->pending->cnt > 0 && !r->drop_collected &&
            take_pending(r, errbuf, errlen) < 0) {
            if (m)
                rd_kafka_message_destroy(m);
            return -1;
        }
        if (r->drop_collected) {
            /* A revoke was served inside that poll. */
            int rc;
            r->drop_collected = false;
            rc = rewind_collected(r, m, errbuf, errlen);
            release_collected(r);
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
        r->messages[r->count++] = m;
    }
    return 0;
}

int tly_runner_run(const tly_runner_config *cfg, char *errbuf, size_t errlen)
{
    struct runner r;
    tly_recovery_config rcfg;
    tly_recovery_report recovery;
    tly_http *http = NULL;
    char err[1024], window_setting[64];
    const char *settings[18] = {NULL};
    int setting_count = 0;
    int64_t last_report, next_prune_plan = 0;
    bool first_commit = false;
    int rc = -1;

    memset(&r, 0, sizeof(r));
    memset(&rcfg, 0, sizeof(rcfg));
    memset(&recovery, 0, sizeof(recovery));
    r.cfg = cfg;
    for (int p = 0; p < TLY_MAX_PARTITIONS; p++)
        r.changelog_offsets[p] = -1;
    r.crash_at = getenv("TALLY_CRASH_AT");
    r.crash_batch = getenv("TALLY_CRASH_BATCH") ? atol(getenv("TALLY_CRASH_BATCH")) : 1;
    if (tly_topics_layout(cfg->pipeline, cfg->topic_prefix, cfg->input_topic, cfg->output_topic,
                          &r.topics, errbuf, errlen) < 0)
        return -1;
    if (mkdir(cfg->state_dir, 0755) != 0 && errno != EEXIST)
        return tly_error(errbuf, errlen, "cannot create state directory %s: %s", cfg->state_dir,
                    strerror(errno));
    snprintf(r.db_path, sizeof(r.db_path), "%s/%s.db", cfg->state_dir, cfg->pipeline);
    if (cfg->snapshot_dir)
        snprintf(r.snapshot_dir, sizeof(r.snapshot_dir), "%s", cfg->snapshot_dir);
    else
        snprintf(r.snapshot_dir, sizeof(r.snapshot_dir), "%s/snapshots", cfg->state_dir);
    r.next_snapshot_ms = tly_clock_mono_ms() + cfg->snapshot_interval_ms;
    r.snapshot_job = calloc(1, sizeof(*r.snapshot_job));
    r.messages = calloc((size_t)cfg->max_batch, sizeof(*r.messages));
    r.events = calloc((size_t)cfg->max_batch, sizeof(*r.events));
    r.results = calloc((size_t)cfg->max_batch, sizeof(*r.results));
    if (!r.messages || !r.events || !r.results || !r.snapshot_job) {
        tly_error(errbuf, errlen, "out of memory");
        goto done;
    }
    /* The HTTP server comes up first: /healthz answers and /readyz says
     * "recovering" while the state is brought back. */
    if (!(r.metrics = tly_metrics_new(cfg->pipeline))) {
        tly_error(errbuf, errlen, "out of memory");
        goto done;
    }
    if (cfg->http_listen) {
        tly_http_config hc = {cfg->http_listen, cfg->http_token, r.db_path, cfg->pipeline,
                              cfg->query_timeout_ms, cfg->query_max_rows, r.metrics};
        if (tly_http_start(&hc, &http, err, sizeof(err)) < 0) {
            if (cfg->http_required) {
                tly_error(errbuf, errlen, "%s", err);
                goto done;
            }
            tly_log("warn", "http_off", "error=%s", tly_log_quote(err, (char[1100]){0}, 1100));
        } else {
            tly_log("info", "http_listening", "address=%s port=%d token=%s", cfg->http_listen,
                    tly_http_port(http), cfg->http_token ? "required" : "none");
        }
    }
    /* Settings that cannot work (credentials, TLS, the wrong listener) end
     * the start here, with librdkafka's reason, instead of in a timeout of
     * the first request that needs the cluster. */
    {
        char summary[2048], quoted[2100];
        if (*tly_kconf_summary(summary, sizeof(summary)))
            tly_log("info", "kafka_settings", "settings=%s",
                    tly_log_quote(summary, quoted, sizeof(quoted)));
    }
    if (tly_kconf_check_cluster(cfg->brokers, KAFKA_TIMEOUT_MS, errbuf, errlen) < 0)
        goto done;
    /* Internal and output topics are created if missing; the input must exist. */
    if (cfg->manage_topics &&
        tly_topics_ensure(cfg->brokers, &r.topics, TLY_TOPIC_INTERNAL | TLY_TOPIC_OUTPUT, 0,
                          KAFKA_TIMEOUT_MS, NULL, errbuf, errlen) < 0)
        goto done;
    rcfg.brokers = cfg->brokers;
    rcfg.pipeline = cfg->pipeline;
    rcfg.topics = &r.topics;
    rcfg.group_id = cfg->group_id;
    rcfg.db_path = r.db_path;
    rcfg.snapshot_dir = r.snapshot_dir;
    rcfg.changelog = cfg->changelog;
    rcfg.allow_empty = cfg->allow_empty;
    rcfg.stop = cfg->stop;
    rcfg.by_partition = cfg->changelog && !cfg->recover_only;
    rcfg.instance = cfg->instance_id;
    /* Before the database is opened: a missing or failing one is replaced by
     * the newest snapshot that verifies. */
    if (tly_recovery_prepare(&rcfg, &recovery, errbuf, errlen) < 0)
        goto done;
    if (tly_store_open(r.db_path, NULL, &r.store, errbuf, errlen) < 0)
        goto done;
    if (cfg->window_ms > 0) {
        snprintf(window_setting, sizeof(window_setting), "window_ms=%lld", (long long)cfg->window_ms);
        settings[setting_count++] = window_setting;
    }
    for (const char *const *extra = cfg->pipeline_settings; extra && *extra && setting_count < 17;
         extra++)
        settings[setting_count++] = *extra;
    if (tly_pipeline_open(r.store, cfg->pipeline, settings, 0, &r.pipeline, errbuf, errlen) < 0)
        goto done;
    if (cfg->strategy != TLY_EMIT_INLINE && !tly_pipeline_has_flush(r.pipeline)) {
        tly_error(errbuf, errlen, "--strategy %s needs a pipeline that keeps what it has to emit "
                  "(a @flush section, like telemetry's); %s emits each batch's changes: use "
                  "--strategy inline", tly_emit_strategy_name(cfg->strategy), cfg->pipeline);
        goto done;
    }
    if (cfg->strategy == TLY_EMIT_WINDOW_STREAM &&
        tly_pipeline_set_windowed(r.pipeline, true, cfg->allowed_lateness_ms, errbuf, errlen) < 0)
        goto done;
    if (!(r.pack = tly_pack_new(cfg->batch_size, produce_output_message, NULL))) {
        tly_error(errbuf, errlen, "out of memory");
        goto done;
    }
    /* init_transactions first: it fences any previous instance with our
     * transactional.id and waits until that instance's last transaction is
     * committed or aborted. Only then is the end of the changelog final - a
     * replay before it could stop short of a batch whose commit was already
     * decided, while the input offsets it committed skip that batch for good. */
    if (!(r.producer = new_producer(&r, errbuf, errlen)))
        goto done;
    /* The replay writes through a connection of its own; the store sees the
     * result from its first transaction on. */
    if (tly_recovery_replay(&rcfg, tly_pipeline_entity(r.pipeline), &recovery, r.changelog_offsets,
                            errbuf, errlen) < 0 ||
        tly_recovery_finish(&rcfg, &recovery, errbuf, errlen) < 0)
        goto done;
    r.snapshot_seq = tly_snapshot_newest_recorded(r.store);
    r.rcfg = &rcfg;
    /* Snapshots name their instance: several share a snapshot directory. */
    if (tly_store_meta_set_text(r.store, TLY_META_INSTANCE, cfg->instance_id) < 0) {
        tly_error(errbuf, errlen, "cannot record the instance: %s", sqlite3_errmsg(tly_store_db(r.store)));
        goto done;
    }
    if (sum_counters(&r, errbuf, errlen) < 0 || forget_emitted(&r, errbuf, errlen) < 0)
        goto done;
    /* The partitions table said which partitions the replay above had to
     * bring up to date (tly_recovery_replay); from here on it lists what
     * this instance was assigned and took over, and it has taken nothing
     * yet (a restored snapshot's table lists another instance's). */
    if (!cfg->recover_only && cfg->changelog && tly_partitions_reset(r.store, errbuf, errlen) < 0)
        goto done;
    count_held(&r);
    r.next_flush_ms = tly_clock_mono_ms() + cfg->flush_interval_ms;
    tly_metrics_set(r.metrics, TLY_G_RECOVERY_MS, recovery.ttr_ms);
    tly_metrics_set(r.metrics, TLY_G_RECOVERY_RECORDS, recovery.records_replayed);
    tly_metrics_set(r.metrics, TLY_G_RECOVERY_BYTES, recovery.bytes_replayed);
    tly_metrics_set(r.metrics, TLY_G_LAST_SEQ, tly_store_last_seq(r.store));
    if (cfg->recover_only) {
        rc = 0;
        goto done;
    }
    if (!(r.consumer = new_consumer(&r, errbuf, errlen)))
        goto done;
    r.standby_check_ms = tly_clock_mono_ms() + STANDBY_MS;
    tly_metrics_set(r.metrics, TLY_G_READY, 1);
    tly_log("info", "started",
            "pipeline=%s input=%s output=%s changelog=%s group=%s instance=%s strategy=%s db=%s",
            cfg->pipeline, r.topics.input.name, r.topics.output.name,
            cfg->changelog ? r.topics.changelog.name : "off", cfg->group_id, cfg->instance_id,
            tly_emit_strategy_name(cfg->strategy), r.db_path);
    last_report = tly_clock_mono_ms();
    while (!(cfg->stop && *cfg->stop)) {
        enum batch_result result;
        if (collect(&r, errbuf, errlen) < 0 || watch_consumer(&r, errbuf, errlen) < 0)
            goto done;
        if (r.count > 0) {
            result = process_batch(&r, errbuf, errlen);
            release_collected(&r);
            if (result == BATCH_FATAL)
                goto done;
            if (result == BATCH_COMMITTED && !first_commit) {
                /* restart -> first committed output: the time to recover as
                 * the outside world sees it (less the consumer's own lag) */
                first_commit = true;
                tly_log("info", "first_commit", "since_start_ms=%lld recovery_ms=%lld",
                        (long long)(tly_clock_mono_ms() - recovery.started_ms), (long long)recovery.ttr_ms);
            }
        }
        if (maybe_snapshot(&r, errbuf, errlen) < 0)
            goto done;
        if (maybe_flush(&r, errbuf, errlen) < 0)
            goto done;
        if (cfg->snapshot_interval_ms <= 0 && tly_clock_mono_ms() >= next_prune_plan) {
            next_prune_plan = tly_clock_mono_ms() + 10000;
            plan_pruning(&r);
        }
        prune_some(&r);
        drop_standby(&r);
        update_gauges(&r);
        if (tly_clock_mono_ms() - last_report >= 10000) {
            last_report = tly_clock_mono_ms();
            tly_log("info", "progress",
                    "applied=%lld rejected=%lld late=%lld skipped=%lld changes=%lld outputs=%lld "
                    "batches=%ld aborted=%lld",
                    (long long)r.applied, (long long)r.rejected, (long long)r.late,
                    (long long)r.skipped, (long long)r.changes, (long long)r.outputs, r.batches,
                    (long long)r.aborted);
        }
    }
    tly_metrics_set(r.metrics, TLY_G_READY, 0);
    if (cfg->strategy == TLY_EMIT_LOG_COMPACTED && flush_outputs(&r, "shutdown_flush", errbuf, errlen) < 0)
        goto done;
    /* A snapshot under way is finished and published: it is a good one. */
    if (r.snapshot_job->running && publish_snapshot(&r, errbuf, errlen) < 0)
        goto done;
    tly_log("info", "shutdown", "applied=%lld rejected=%lld late=%lld skipped=%lld changes=%lld "
            "outputs=%lld batches=%ld aborted=%lld",
            (long long)r.applied, (long long)r.rejected, (long long)r.late, (long long)r.skipped,
            (long long)r.changes, (long long)r.outputs, r.batches, (long long)r.aborted);
    rc = 0;
done:
    tly_http_stop(http);
    if (r.snapshot_job && r.snapshot_job->running)
        pthread_join(r.snapshot_job->thread, NULL);
    free(r.snapshot_job);
    release_collected(&r);
    r.closing = true; /* the rows stay: a restart gets the partitions back */
    if (r.consumer) {
        rd_kafka_consumer_close(r.consumer);
        rd_kafka_destroy(r.consumer);
    }
    if (r.producer) {
        rd_kafka_flush(r.producer, 10000);
        rd_kafka_destroy(r.producer);
    }
    tly_pipeline_close(r.pipeline);
    tly_pack_free(r.pack);
    tly_store_close(r.store);
    if (rcfg.db_path)
        tly_recovery_discard(&rcfg, &recovery);
    if (r.pending)
        rd_kafka_topic_partition_list_destroy(r.pending);
    free(r.messages);
    free(r.events);
    free(r.results);
    tly_metrics_free(r.metrics);
    (void)err;
    return rc;
}
