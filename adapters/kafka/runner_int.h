/* adapters/kafka/runner_int.h - the daemon's parts and the state they share.
 *
 * Not an interface: runner.h is. The daemon (tly_runner_run) is split by
 * what each part is responsible for:
 *
 *   runner.c        start (recovery, clients), the loop, shutdown
 *   batch.c         the commit protocol: collect a batch, then begin, apply,
 *                   produce, commit to Kafka, commit to SQLite - or abort the
 *                   transaction and rewind; transactions of their own
 *   emit.c          the producer: changelog records, outputs (packed), dead
 *                   letters, log_compacted flushes
 *   assignment.c    the consumer and partition ownership (ownership.h): the
 *                   rebalance callback, take-over, drops, the standby rows,
 *                   the consumer watchdog
 *   housekeeping.c  between batches: snapshots (a thread of their own),
 *                   changelog pruning, gauges
 *
 * Everything runs on the daemon's thread (librdkafka calls the rebalance
 * callback inside a poll, the delivery callback inside a producer poll or
 * flush), except the snapshot copy, which shares nothing but its job. */
#ifndef TLY_RUNNER_INT_H
#define TLY_RUNNER_INT_H

#include "runner.h"

#include "metrics.h"
#include "ownership.h"
#include "pack.h"
#include "pipeline.h"
#include "recovery.h"
#include "store.h"
#include "topics.h"

#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KAFKA_TIMEOUT_MS 30000

struct snapshot_job; /* housekeeping.c */

/* The batch being collected (batch.c). */
struct collected {
    rd_kafka_message_t **messages;
    tly_event *events;
    tly_event_result *results;
    int count;
    bool revoked; /* a revoke was served during the collection: drop and re-read */
};

/* Partitions this instance was assigned and the work around them
 * (assignment.c). Per-partition state lives in `owned`. */
struct assignment {
    tly_ownership *owned;
    int64_t changed_ms;       /* the last rebalance or consumer restart (monotonic) */
    int64_t take_retry_ms;    /* PENDING: when to ask for stable offsets again */
    int64_t take_logged_ms;   /* PENDING: when the wait was last logged */
    int64_t unassigned_since; /* the watchdog: since when no partition is assigned */
    int64_t last_watch;
    int64_t watchdog_ms; /* replace a consumer without partitions this long */
    int64_t lost_ms;     /* the last time the group took the partitions away (lost) */
    bool closing;        /* the revocation of a shutdown keeps the rows */
    char error[1200];    /* a partition could not be taken over: fatal */
};

struct runner {
    const tly_runner_config *cfg;
    const tly_recovery_config *rcfg;
    tly_topic_layout topics;
    char db_path[4096], snapshot_dir[4096];
    tly_store *store;
    tly_pipeline *pipeline;
    rd_kafka_t *producer, *consumer;
    tly_pack *pack; /* output records into messages (--batch-size) */
    tly_metrics *metrics;
    struct collected batch;
    struct assignment assign;
    /* highest changelog offset per partition delivered in this transaction
     * (-1: none since the partition was taken or dropped) */
    int64_t changelog_offsets[TLY_MAX_PARTITIONS];
    bool delivery_failed;
    /* a transaction expired during a stall: start over in-process (batch.c,
     * runner.c) instead of exiting */
    bool restart;
    long restarts;
    /* the last time the cluster answered (monotonic): a committed batch, a
     * probe (housekeeping.c); /readyz and tally_broker_up read it */
    int64_t broker_ok_ms, last_probe;
    char delivery_error[256];
    /* crash points (runner.h) */
    const char *crash_at;
    long crash_batch;
    const char *stall_at; /* TALLY_STALL_AT: sleep there instead, once */
    int64_t stall_ms;
    /* totals for the progress and shutdown lines */
    long batches;
    int64_t applied, rejected, skipped, late, changes, outputs, aborted;
    /* event=error rate limit (batch.c) */
    int64_t error_log_second, error_lines, errors_unlogged;
    /* housekeeping.c */
    struct snapshot_job *snapshot_job;
    int64_t next_snapshot_ms, snapshots, snapshot_seq;
    int64_t prune_below, pruned_rows, next_prune_plan;
    int64_t last_gauges;
    int64_t next_flush_ms; /* log_compacted: when the next flush is due (emit.c) */
};

enum batch_result { BATCH_COMMITTED, BATCH_ABORTED, BATCH_FATAL };

/* batch.c */
int runner_collect(struct runner *r, char *errbuf, size_t errlen);
void runner_release_collected(struct runner *r);
int runner_rewind_collected(struct runner *r, const rd_kafka_message_t *extra, char *errbuf,
                            size_t errlen);
enum batch_result runner_process_batch(struct runner *r, char *errbuf, size_t errlen);
enum batch_result
runner_own_transaction(struct runner *r, const char *what, const char *error_event,
                       int (*fill)(struct runner *r, void *ctx, char *why, size_t whylen),
                       void *ctx, char *errbuf, size_t errlen);
void runner_crash_point(struct runner *r, const char *step);

/* emit.c */
struct produce_ctx {
    struct runner *r;
    const char *topic;
    rd_kafka_resp_err_t err;
    int64_t count;
};
rd_kafka_t *runner_new_producer(struct runner *r, char *errbuf, size_t errlen);
rd_kafka_resp_err_t runner_produce(struct runner *r, const char *topic, const void *key,
                                   size_t key_len, const void *value, size_t value_len,
                                   rd_kafka_headers_t *headers);
int runner_produce_changelog(struct runner *r, struct produce_ctx *ctx, int64_t seq_before,
                             int64_t seq_after, char *err, size_t errlen);
rd_kafka_resp_err_t runner_produce_dead_letter(struct runner *r, const rd_kafka_message_t *m,
                                               const char *reason);
bool runner_batch_emits(const struct runner *r);
int runner_emit_outputs(struct runner *r, struct produce_ctx *ctx, int64_t seq_before,
                        int64_t seq_after, bool from_pending, char *err, size_t errlen);
int runner_output_message(void *ctx, const char *key, size_t key_len, const char *value,
                          size_t value_len);
int runner_flush_outputs(struct runner *r, const char *event, char *errbuf, size_t errlen);
int runner_maybe_flush(struct runner *r, char *errbuf, size_t errlen);
int runner_forget_emitted(struct runner *r, char *errbuf, size_t errlen);

/* assignment.c */
rd_kafka_t *runner_new_consumer(struct runner *r, char *errbuf, size_t errlen);
int runner_restore_standby(struct runner *r, char *errbuf, size_t errlen);
int runner_take_pending(struct runner *r, char *errbuf, size_t errlen);
bool runner_is_pending(const struct runner *r, const rd_kafka_message_t *m);
int runner_rewind_consumer(struct runner *r, char *errbuf, size_t errlen);
void runner_drop_standby(struct runner *r);
int runner_watch_consumer(struct runner *r, char *errbuf, size_t errlen);
int runner_sum_counters(struct runner *r, char *errbuf, size_t errlen);
void runner_count_held(struct runner *r);

/* housekeeping.c */
int runner_housekeeping_init(struct runner *r);
void runner_housekeeping_free(struct runner *r);
int runner_maybe_snapshot(struct runner *r, char *errbuf, size_t errlen);
int runner_finish_snapshot(struct runner *r, char *errbuf, size_t errlen);
void runner_prune(struct runner *r);
void runner_update_gauges(struct runner *r);
void runner_broker_answered(struct runner *r);
rd_kafka_resp_err_t runner_probe_cluster(struct runner *r, int timeout_ms);

#endif
