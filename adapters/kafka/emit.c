/* adapters/kafka/emit.c - the daemon's producer: every record it writes goes
 * through here, inside the transaction that batch.c (or a transaction of its
 * own) has open.
 *
 *   changelog   one record per changelog row a batch wrote, to the changelog
 *               partition of the input partition that made it
 *   outputs     the pipeline's @emit (or @flush) records, packed by pack.c
 *   dead letters the original bytes of a rejected or late event, the reason
 *               and its origin in headers (tally.error, tally.topic,
 *               tally.partition, tally.offset)
 *   log_compacted flushes: every pending key's latest record, in a
 *               transaction of its own, then forgotten in SQLite
 *
 * Delivery reports (on_delivery) record the highest changelog offset per
 * partition, which batch.c writes into meta with the batch. */
#include "runner_int.h"

#include "changelog.h"
#include "clock.h"
#include "error.h"
#include "flush.h"
#include "kconf.h"
#include "log.h"

#include <stdio.h>
#include <string.h>

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
        m->partition >= 0 && m->partition < TLY_MAX_PARTITIONS &&
        m->offset > r->changelog_offsets[m->partition])
        r->changelog_offsets[m->partition] = m->offset;
}

rd_kafka_t *runner_new_producer(struct runner *r, char *errbuf, size_t errlen)
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
        /* compression.type lz4: a batch's changelog records are JSON lines
         * that share most of their bytes; lz4 cut the broker's CPU per drained
         * order by more than half (../peer-kstreams/compare.sh, 1 M orders:
         * broker_cpu_s 4.57 -> 2.10) at no measurable cost here. Consumers
         * (kcat too) decompress without being told. */
        const char *const defaults[] = {"client.id", client_id, "linger.ms", "5",
                                        "compression.type", "lz4",
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

/* One message inside the open transaction, to the partition the topic's
 * partitioner picks for the key; a full local queue is waited out (kconf.h).
 * Returns 0 or the librdkafka error. */
rd_kafka_resp_err_t runner_produce(struct runner *r, const char *topic, const void *key,
                                   size_t key_len, const void *value, size_t value_len,
                                   rd_kafka_headers_t *headers)
{
    return tly_kconf_produce(r->producer, NULL, topic, RD_KAFKA_PARTITION_UA, key, key_len, value,
                             value_len, headers, NULL, NULL);
}

/* A change made by input partition p goes to changelog partition p (the
 * topics have the same partition count): whoever takes p over next replays
 * that partition alone. */
static int produce_changelog_row(void *ctx, int64_t seq, const char *key, size_t key_len, int part,
                                 const char *line, size_t line_len)
{
    struct produce_ctx *c = ctx;
    (void)seq;
    c->err =
        tly_kconf_produce(c->r->producer, NULL, c->topic, part >= 0 ? part : RD_KAFKA_PARTITION_UA,
                          key, key_len, line, line_len, NULL, NULL, NULL);
    c->count++;
    return c->err ? 1 : 0;
}

/* The changelog rows the batch wrote (seq_before, seq_after], each to the
 * changelog partition of its input partition. Returns 0, or -1 with err. */
int runner_produce_changelog(struct runner *r, struct produce_ctx *ctx, int64_t seq_before,
                             int64_t seq_after, char *err, size_t errlen)
{
    ctx->topic = r->topics.changelog.name;
    if (tly_changelog_scan(r->store, seq_before, seq_after, produce_changelog_row, ctx, err,
                           errlen) < 0) {
        if (ctx->err)
            tly_error(err, errlen, "%s", rd_kafka_err2str(ctx->err));
        return -1;
    }
    return 0;
}

/* Output records go through the pack (--batch-size), which calls this. */
int runner_output_message(void *ctx, const char *key, size_t key_len, const char *value,
                          size_t value_len)
{
    struct produce_ctx *c = ctx;
    c->err = runner_produce(c->r, c->topic, key, key_len, value, value_len, NULL);
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
int runner_emit_outputs(struct runner *r, struct produce_ctx *ctx, int64_t seq_before,
                        int64_t seq_after, bool from_pending, char *err, size_t errlen)
{
    int rc;
    tly_pack_reset(r->pack, ctx);
    if (from_pending)
        rc = tly_pipeline_flush(r->pipeline, seq_after, produce_output, ctx, err, errlen);
    else
        rc =
            tly_pipeline_emit(r->pipeline, seq_before, seq_after, produce_output, ctx, err, errlen);
    if (rc == 0 && tly_pack_finish(r->pack) != 0)
        rc = tly_error(err, errlen, "cannot produce a packed message");
    if (rc < 0 && ctx->err)
        tly_error(err, errlen, "%s", rd_kafka_err2str(ctx->err));
    return rc;
}

/* Whether the batch itself emits (inline, window_stream), and from where. */
bool runner_batch_emits(const struct runner *r)
{
    return r->cfg->strategy == TLY_EMIT_INLINE || r->cfg->strategy == TLY_EMIT_WINDOW_STREAM;
}

rd_kafka_resp_err_t runner_produce_dead_letter(struct runner *r, const rd_kafka_message_t *m,
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
    err = runner_produce(r, r->topics.dlq.name, m->key, m->key_len, m->payload, m->len, headers);
    if (err)
        rd_kafka_headers_destroy(headers); /* producev only takes ownership on success */
    return err;
}

/* log_compacted: the flush-then-mark cycle (flush.h) with a Kafka
 * transaction of its own as the delivery. */
struct flush_ctx {
    struct produce_ctx produced;
    int64_t upto;
};

static int fill_flush(struct runner *r, void *ctx, char *why, size_t whylen)
{
    struct flush_ctx *f = ctx;
    if (tly_flush_read(r->store, r->pipeline, r->pack, &f->produced, &f->upto, why, whylen) < 0) {
        if (f->produced.err)
            tly_error(why, whylen, "%s", rd_kafka_err2str(f->produced.err));
        return -1;
    }
    return 0;
}

int runner_flush_outputs(struct runner *r, const char *event, char *errbuf, size_t errlen)
{
    struct flush_ctx f = {{r, r->topics.output.name, 0, 0}, tly_store_last_seq(r->store)};
    int64_t started = tly_clock_mono_ms(), records;
    char err[512];

    switch (runner_own_transaction(r, "flush", "flush_error", fill_flush, &f, errbuf, errlen)) {
    case BATCH_FATAL: return -1;
    case BATCH_ABORTED: return 0; /* the next flush covers it */
    case BATCH_COMMITTED: break;
    }
    records = tly_pack_records(r->pack);
    if (records > 0)
        runner_crash_point(r, "after_flush");
    if (tly_flush_forget(r->store, r->pipeline, f.upto, err, sizeof(err)) < 0)
        tly_log("warn", "flush_error", "error=%s note=\"the next flush repeats these records\"",
                tly_log_quote(err, (char[600]){0}, 600));
    r->outputs += records;
    tly_metrics_add(r->metrics, TLY_C_OUTPUTS, records);
    tly_flush_log(event, started, r->pack, f.upto);
    return 0;
}

int runner_maybe_flush(struct runner *r, char *errbuf, size_t errlen)
{
    if (r->cfg->strategy != TLY_EMIT_LOG_COMPACTED || tly_clock_mono_ms() < r->next_flush_ms)
        return 0;
    r->next_flush_ms = tly_clock_mono_ms() + r->cfg->flush_interval_ms;
    return runner_flush_outputs(r, "flush", errbuf, errlen);
}

/* After recovery, for the strategies whose batches emit (inline,
 * window_stream): the committed Kafka history already holds the outputs of
 * every change the database has, so a replayed change that the replay marked
 * pending again must not go out twice. What window_stream keeps for windows
 * still open stays pending. log_compacted and state_store keep everything:
 * which flush went out is not in the changelog, and emitting a latest record
 * again is harmless there. */
int runner_forget_emitted(struct runner *r, char *errbuf, size_t errlen)
{
    char err[512];
    if (!runner_batch_emits(r) || !tly_pipeline_has_flush(r->pipeline))
        return 0;
    if (tly_flush_forget(r->store, r->pipeline, tly_store_last_seq(r->store), err, sizeof(err)) < 0)
        return tly_error(errbuf, errlen, "cannot settle what was emitted before: %s", err);
    return 0;
}
