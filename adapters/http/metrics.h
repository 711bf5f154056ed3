/* adapters/http/metrics.h - the daemon's figures, for GET /metrics.
 *
 * Written by the daemon's thread, read by the HTTP thread: counters, gauges
 * and histogram buckets are C11 atomics (relaxed: a scrape may see one batch
 * half counted, never a torn value); the per-partition lag table has a mutex.
 * Rendered in the Prometheus text exposition format 0.0.4. */
#ifndef TLY_METRICS_H
#define TLY_METRICS_H

#include <stddef.h>
#include <stdint.h>

typedef struct tly_metrics tly_metrics;

typedef enum tly_counter {
    TLY_C_CONSUMED, /* input records read and processed in a committed batch */
    TLY_C_APPLIED,
    TLY_C_REJECTED,      /* malformed or invalid */
    TLY_C_LATE,          /* for an event-time window that had closed */
    TLY_C_DEAD_LETTERED, /* rejected + late: what went to the dead-letter topic */
    TLY_C_SKIPPED,
    TLY_C_CHANGES, /* changelog rows */
    TLY_C_OUTPUTS,
    TLY_C_BATCHES,
    TLY_C_TXN_COMMITTED,
    TLY_C_TXN_ABORTED,
    TLY_C_SNAPSHOTS,
    TLY_C_SNAPSHOT_ERRORS,
    TLY_C_REBALANCES,
    TLY_C_PARTITIONS_ASSIGNED, /* input partitions taken over (state brought up to date) */
    TLY_C_PARTITIONS_REVOKED,  /* input partitions given up (their rows dropped) */
    TLY_C_COUNT
} tly_counter;

typedef enum tly_gauge {
    TLY_G_READY,             /* 1 once recovered and consuming */
    TLY_G_SNAPSHOT_WRITE_MS, /* the last snapshot */
    TLY_G_SNAPSHOT_BYTES,
    TLY_G_SNAPSHOT_LAST_SEQ,
    TLY_G_RECOVERY_MS, /* the last recovery */
    TLY_G_RECOVERY_RECORDS,
    TLY_G_RECOVERY_BYTES,
    TLY_G_CHANGELOG_ROWS,
    TLY_G_LAST_SEQ,
    TLY_G_PARTITIONS_HELD,   /* input partitions this instance holds */
    TLY_G_REBALANCE_MS,      /* the last rebalance callback, state work included */
    TLY_G_ROWS_MOVED,        /* state rows whose input partition changed (meta) */
    TLY_G_BROKER_CONTACT_MS, /* wall-clock ms the cluster last answered (0: not yet) */
    TLY_G_COUNT
} tly_gauge;

typedef enum tly_histogram {
    TLY_H_E2E,    /* input record timestamp -> its batch committed */
    TLY_H_APPLY,  /* SQLite apply of a batch */
    TLY_H_COMMIT, /* Kafka transaction commit of a batch */
    TLY_H_BATCH,  /* a whole batch, begin to SQLite commit */
    TLY_H_COUNT
} tly_histogram;

tly_metrics *tly_metrics_new(const char *pipeline);
void tly_metrics_free(tly_metrics *metrics);

void tly_metrics_add(tly_metrics *metrics, tly_counter counter, int64_t delta);
void tly_metrics_set(tly_metrics *metrics, tly_gauge gauge, int64_t value);
int64_t tly_metrics_get(tly_metrics *metrics, tly_gauge gauge);
/* One observation, in milliseconds (n equal observations at once). */
void tly_metrics_observe_ms(tly_metrics *metrics, tly_histogram histogram, double ms, int64_t n);

/* Consumer lag of one input partition (high watermark - position); a
 * partition no longer assigned is dropped with tly_metrics_clear_lag. */
void tly_metrics_set_lag(tly_metrics *metrics, const char *topic, int partition, int64_t lag);
void tly_metrics_clear_lag(tly_metrics *metrics);

/* How long bringing one input partition's state up to date took when this
 * instance last took it over, and how many changelog records it replayed. */
void tly_metrics_set_partition_recovery(tly_metrics *metrics, int partition, int64_t ms,
                                        int64_t records);

/* Renders every metric, plus the size of db_path and its -wal (may be NULL),
 * into a malloc'ed NUL-terminated string the caller frees; NULL when out of
 * memory. */
char *tly_metrics_render(tly_metrics *metrics, const char *db_path);

#endif
