/* adapters/kafka/runner.h - tally run: consume Kafka, apply, commit exactly once.
 *
 * The commit protocol (see runner.c): one Kafka transaction carries a batch's
 * changelog records, its outputs, its dead letters and its input offsets;
 * SQLite commits only after Kafka did. So SQLite is never ahead of Kafka and at
 * most one transaction behind it, and on start the runner replays the
 * changelog topic from the offsets SQLite recorded to close that gap. */
#ifndef TLY_RUNNER_H
#define TLY_RUNNER_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

/* When outputs are produced.
 *   inline         each committed batch emits, in its own transaction, the
 *                  records it changed
 *   log_compacted  every flush_interval_ms, one transaction emits the latest
 *                  record of everything changed since the last flush; what is
 *                  pending is kept in the database (the pipeline's @flush), so a
 *                  crash between flushes neither loses nor skips a key
 *   window_stream  event-time windows of the pipeline's window_ms: a key's
 *                  record is emitted by the batch that closes the window it
 *                  changed in (newest event time - allowed_lateness_ms passed
 *                  the window's end); a later event for a closed window is
 *                  late: counted and dead-lettered, never applied
 *   state_store    nothing is emitted: the state is kept up to date and `tally
 *                  publish` (another process) emits what changed
 * All but inline need a pipeline with @flush (telemetry). */
enum {
    TLY_EMIT_INLINE = 0,
    TLY_EMIT_LOG_COMPACTED = 1,
    TLY_EMIT_WINDOW_STREAM = 2,
    TLY_EMIT_STATE_STORE = 3
};

/* "inline", "log_compacted", ... or NULL for an unknown strategy. */
const char *tly_emit_strategy_name(int strategy);
/* The strategy named `name`, or -1. */
int tly_emit_strategy_parse(const char *name);

typedef struct tly_runner_config {
    const char *pipeline;      /* "orders", "telemetry", "enrich", or a pipeline file's
                                  @pipeline name */
    const char *pipeline_file; /* that pipeline file (a user pipeline), or NULL for the
                                  built-in named pipeline */
    const char *brokers;       /* bootstrap.servers */
    const char *topic_prefix;  /* internal topics: <prefix>-changelog, -snapshots, -dlq */
    const char *group_id;      /* consumer group */
    const char *instance_id;   /* group.instance.id; transactional.id derives from it */
    const char *input_topic;   /* NULL: the pipeline's default */
    const char *output_topic;  /* NULL: the pipeline's default */
    const char *state_dir;     /* the database is <state_dir>/<pipeline>.db */
    int64_t window_ms;         /* pipeline window (orders' tumbling windows, telemetry's
                                  window_stream windows); <= 0: the pipeline's default */
    const char *const *pipeline_settings; /* more "name=value" @param overrides
                                             (NULL-terminated), or NULL */
    int64_t commit_interval_ms;           /* longest a batch collects before it commits */
    int max_batch;                        /* most events in one batch */
    int changelog;                        /* 1: mirror the changelog to Kafka (default) */
    int strategy;                         /* TLY_EMIT_* (default inline) */
    int64_t flush_interval_ms;            /* log_compacted: time between flushes (default 120 s) */
    int64_t allowed_lateness_ms;          /* window_stream: how far behind the newest event time
                                             a window stays open (default 0) */
    int batch_size;               /* output records packed into one message (adapters/kafka/pack.h;
                                     default 1) */
    const char *snapshot_dir;     /* where snapshots go (default <state_dir>/snapshots) */
    int64_t snapshot_interval_ms; /* take one every this often; <= 0: never (default 60 s) */
    int snapshot_keep;            /* newest snapshots kept (default 3) */
    int64_t changelog_retention_ms; /* changelog table rows are kept this long after
                                       the snapshot that contains them (default 0) */
    int allow_empty;                /* 1: start empty even if history exists (default 0) */
    int64_t session_timeout_ms;     /* consumer group session: how long a silent instance
                                       keeps its partitions (default 45000) */
    int64_t transaction_timeout_ms; /* how long the broker lets a transaction of a
                                       crashed instance hold back readers (default 60000) */
    int recover_only;               /* 1: recover the database, then return 0 (tally recover) */
    const char *http_listen;        /* HOST:PORT for /metrics, /query...; NULL: no server */
    int http_required;              /* 1: a server that cannot listen is fatal; 0: a warning */
    const char *http_token;         /* bearer token for /query and /metrics, or NULL */
    int64_t query_timeout_ms;       /* /query: interrupt after this (default 5000) */
    int64_t query_max_rows;         /* /query: at most this many rows (default 10000) */
    int64_t query_max_bytes;        /* /query: an answer's bytes at most (default 16 MiB) */
    int manage_topics;              /* 1: create missing output/internal topics (default);
                                   0: they exist already (the demo's mock cluster has
                                   no Admin API) */
    volatile sig_atomic_t *stop;    /* set by a signal handler: finish the batch, exit 0 */
} tly_runner_config;

/* Fills cfg with defaults: prefix and group "opb", instance "<pipeline>-0",
 * state dir "state", commit interval 100 ms, batch 5000, changelog on,
 * a snapshot every 60 s into <state dir>/snapshots keeping 3, changelog rows
 * pruned as soon as a snapshot holds them. */
void tly_runner_config_init(tly_runner_config *cfg, const char *pipeline);

/* Recovers the database (adapters/kafka/recovery.h), then runs until
 * *cfg->stop is set (returns 0 after a clean shutdown) or a fatal error
 * (returns -1 with errbuf: nothing can rebuild the state although history
 * exists, fenced by a newer instance, broker refused the transaction,
 * database failure).
 *
 * For tests, from the environment:
 *   TALLY_CRASH_AT=after_apply|after_produce|after_offsets|after_commit
 *       aborts the process at that step of the TALLY_CRASH_BATCH-th batch
 *       (default 1); TALLY_CRASH_AT=after_flush right after the first
 *       log_compacted flush's Kafka commit, before the database forgets
 *       what it emitted.
 *   TALLY_STALL_AT=STEP TALLY_STALL_MS=N
 *       the same steps (after_flush aside): at the TALLY_CRASH_BATCH-th batch
 *       the daemon sleeps N ms instead, once, its transaction open - a stall
 *       the broker ends by aborting that transaction after
 *       --transaction-timeout.
 *   TALLY_WATCHDOG_MS=N
 *       replaces a consumer without partitions after N ms instead of 60 s. */
int tly_runner_run(const tly_runner_config *cfg, char *errbuf, size_t errlen);

#endif
