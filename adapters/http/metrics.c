/* adapters/http/metrics.c - the daemon's figures, for GET /metrics.
 *
 * Names follow Prometheus conventions: tally_ prefix, the unit in the name
 * (_seconds, _bytes), _total for counters. Every series carries the
 * pipeline label, so several daemons can share one Prometheus job. */
#include "metrics.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Upper bounds in seconds; +Inf is implicit. From a millisecond (one small
 * batch) to ten seconds (a backlog). */
static const double bucket_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                       0.25,  0.5,    1,     2.5,  5,     10};
#define BUCKETS (sizeof(bucket_bounds) / sizeof(*bucket_bounds))

struct histogram {
    atomic_llong buckets[BUCKETS + 1]; /* not cumulative; the last is +Inf */
    atomic_llong count;
    atomic_llong sum_us;
};

#define MAX_LAG 256
#define MAX_PARTITIONS 256

struct partition_recovery {
    int set;
    int64_t ms, records;
};

struct lag {
    char topic[256];
    int partition;
    int64_t lag;
};

struct tly_metrics {
    char pipeline[64];
    atomic_llong counters[TLY_C_COUNT];
    atomic_llong gauges[TLY_G_COUNT];
    struct histogram histograms[TLY_H_COUNT];
    pthread_mutex_t lag_lock;
    struct lag lags[MAX_LAG];
    int lag_count;
    struct partition_recovery recoveries[MAX_PARTITIONS]; /* under lag_lock too */
};

static const struct {
    const char *name, *help;
} counter_info[TLY_C_COUNT] = {
    [TLY_C_CONSUMED] = {"tally_events_consumed_total",
                        "Input records processed in committed batches."},
    [TLY_C_APPLIED] = {"tally_events_applied_total", "Events applied to the state."},
    [TLY_C_REJECTED] = {"tally_events_rejected_total",
                        "Malformed or invalid events, logged as event=error and dead-lettered."},
    [TLY_C_LATE] = {"tally_events_late_total",
                    "Events for an event-time window that had already closed (window_stream), "
                    "logged as event=late and dead-lettered."},
    [TLY_C_DEAD_LETTERED] = {"tally_events_dead_lettered_total",
                             "Events produced to the dead-letter topic (rejected + late)."},
    [TLY_C_SKIPPED] = {"tally_events_skipped_total",
                       "Events skipped by the pipeline (e.g. an empty id), logged as event=skip."},
    [TLY_C_CHANGES] =
        {"tally_changelog_records_total",
         "Changelog rows written: state changes, and one tally.counters row per batch."},
    [TLY_C_OUTPUTS] = {"tally_outputs_total", "Output records produced."},
    [TLY_C_BATCHES] =
        {"tally_batches_total",
         "Batches committed (an aborted one counts in tally_transactions_aborted_total)."},
    [TLY_C_TXN_COMMITTED] = {"tally_transactions_committed_total", "Kafka transactions committed."},
    [TLY_C_TXN_ABORTED] = {"tally_transactions_aborted_total", "Kafka transactions aborted."},
    [TLY_C_SNAPSHOTS] = {"tally_snapshots_total", "Snapshots written and published."},
    [TLY_C_SNAPSHOT_ERRORS] = {"tally_snapshot_errors_total", "Snapshots that failed."},
    [TLY_C_REBALANCES] = {"tally_rebalances_total", "Partition assignments and revocations."},
    [TLY_C_PARTITIONS_ASSIGNED] = {"tally_partitions_assigned_total",
                                   "Input partitions taken over, their state brought up to date."},
    [TLY_C_PARTITIONS_REVOKED] =
        {"tally_partitions_revoked_total",
         "Input partitions given up (revoked or lost), their rows dropped."},
};

static const struct {
    const char *name, *help;
    double scale; /* rendered value = stored * scale */
} gauge_info[TLY_G_COUNT] = {
    [TLY_G_READY] = {"tally_ready", "1 once the state is recovered and the daemon consumes.", 1},
    [TLY_G_SNAPSHOT_WRITE_MS] = {"tally_snapshot_duration_seconds",
                                 "Time the last snapshot took to write.", 0.001},
    [TLY_G_SNAPSHOT_BYTES] = {"tally_snapshot_bytes", "Size of the last snapshot.", 1},
    [TLY_G_SNAPSHOT_LAST_SEQ] = {"tally_snapshot_last_seq",
                                 "Changelog seq the last snapshot holds.", 1},
    [TLY_G_RECOVERY_MS] = {"tally_recovery_duration_seconds",
                           "Time the last recovery on start took.", 0.001},
    [TLY_G_RECOVERY_RECORDS] = {"tally_recovery_records_replayed",
                                "Changelog records the last recovery replayed.", 1},
    [TLY_G_RECOVERY_BYTES] = {"tally_recovery_bytes_replayed",
                              "Changelog bytes the last recovery replayed.", 1},
    [TLY_G_CHANGELOG_ROWS] = {"tally_changelog_rows", "Rows in the changelog table.", 1},
    [TLY_G_LAST_SEQ] = {"tally_changelog_last_seq", "Highest changelog seq in the database.", 1},
    [TLY_G_PARTITIONS_HELD] = {"tally_partitions_held", "Input partitions this instance holds.", 1},
    [TLY_G_REBALANCE_MS] = {"tally_rebalance_duration_seconds",
                            "Time the last rebalance took here: dropping revoked partitions, or "
                            "bringing assigned ones up to date.",
                            0.001},
    [TLY_G_BROKER_CONTACT_MS] = {"tally_broker_last_contact_timestamp_seconds",
                                 "When the cluster last answered (Unix time): a committed "
                                 "transaction, or a metadata probe while no batch commits.",
                                 0.001},
    [TLY_G_ROWS_MOVED] = {"tally_state_rows_moved",
                          "State rows an event from another input partition updated, since the "
                          "database was created: 0 when the input is keyed by the state's key.",
                          1},
};

static const struct {
    const char *name, *help;
} histogram_info[TLY_H_COUNT] = {
    [TLY_H_E2E] = {"tally_end_to_end_latency_seconds",
                   "From an input record's Kafka timestamp to the commit of its batch's outputs."},
    [TLY_H_APPLY] = {"tally_apply_duration_seconds", "SQLite apply of one batch."},
    [TLY_H_COMMIT] = {"tally_commit_duration_seconds",
                      "Kafka side of one batch: send_offsets_to_transaction and commit."},
    [TLY_H_BATCH] = {"tally_batch_duration_seconds", "One batch, begin to SQLite commit."},
};

tly_metrics *tly_metrics_new(const char *pipeline)
{
    tly_metrics *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    snprintf(m->pipeline, sizeof(m->pipeline), "%s", pipeline);
    pthread_mutex_init(&m->lag_lock, NULL);
    return m;
}

void tly_metrics_free(tly_metrics *m)
{
    if (!m)
        return;
    pthread_mutex_destroy(&m->lag_lock);
    free(m);
}

void tly_metrics_add(tly_metrics *m, tly_counter c, int64_t delta)
{
    if (m)
        atomic_fetch_add_explicit(&m->counters[c], delta, memory_order_relaxed);
}

void tly_metrics_set(tly_metrics *m, tly_gauge g, int64_t value)
{
    if (m)
        atomic_store_explicit(&m->gauges[g], value, memory_order_relaxed);
}

int64_t tly_metrics_get(tly_metrics *m, tly_gauge g)
{
    return m ? atomic_load_explicit(&m->gauges[g], memory_order_relaxed) : 0;
}

void tly_metrics_observe_ms(tly_metrics *m, tly_histogram h, double ms, int64_t n)
{
    struct histogram *hist;
    size_t b = 0;
    if (!m || n <= 0)
        return;
    hist = &m->histograms[h];
    if (ms < 0)
        ms = 0; /* a producer clock ahead of ours */
    while (b < BUCKETS && ms / 1000.0 > bucket_bounds[b])
        b++;
    atomic_fetch_add_explicit(&hist->buckets[b], n, memory_order_relaxed);
    atomic_fetch_add_explicit(&hist->count, n, memory_order_relaxed);
    atomic_fetch_add_explicit(&hist->sum_us, (long long)(ms * 1000.0) * n, memory_order_relaxed);
}

void tly_metrics_set_lag(tly_metrics *m, const char *topic, int partition, int64_t lag)
{
    if (!m)
        return;
    pthread_mutex_lock(&m->lag_lock);
    for (int i = 0; i < m->lag_count; i++)
        if (m->lags[i].partition == partition && strcmp(m->lags[i].topic, topic) == 0) {
            m->lags[i].lag = lag;
            goto done;
        }
    if (m->lag_count < MAX_LAG) {
        struct lag *l = &m->lags[m->lag_count++];
        snprintf(l->topic, sizeof(l->topic), "%s", topic);
        l->partition = partition;
        l->lag = lag;
    }
done:
    pthread_mutex_unlock(&m->lag_lock);
}

void tly_metrics_clear_lag(tly_metrics *m)
{
    if (!m)
        return;
    pthread_mutex_lock(&m->lag_lock);
    m->lag_count = 0;
    pthread_mutex_unlock(&m->lag_lock);
}

void tly_metrics_set_partition_recovery(tly_metrics *m, int partition, int64_t ms, int64_t records)
{
    if (!m || partition < 0 || partition >= MAX_PARTITIONS)
        return;
    pthread_mutex_lock(&m->lag_lock);
    m->recoveries[partition] = (struct partition_recovery){1, ms, records};
    pthread_mutex_unlock(&m->lag_lock);
}

static long long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long long)st.st_size : 0;
}

static void render_counters_and_gauges(tly_metrics *m, FILE *out)
{
    const char *p = m->pipeline;
    for (int c = 0; c < TLY_C_COUNT; c++)
        fprintf(out, "# HELP %s %s\n# TYPE %s counter\n%s{pipeline=\"%s\"} %lld\n",
                counter_info[c].name, counter_info[c].help, counter_info[c].name,
                counter_info[c].name, p,
                (long long)atomic_load_explicit(&m->counters[c], memory_order_relaxed));
    for (int g = 0; g < TLY_G_COUNT; g++) {
        long long v = atomic_load_explicit(&m->gauges[g], memory_order_relaxed);
        fprintf(out, "# HELP %s %s\n# TYPE %s gauge\n%s{pipeline=\"%s\"} ", gauge_info[g].name,
                gauge_info[g].help, gauge_info[g].name, gauge_info[g].name, p);
        if (gauge_info[g].scale == 1)
            fprintf(out, "%lld\n", v);
        else
            fprintf(out, "%.6f\n", (double)v * gauge_info[g].scale);
    }
}

static void render_histograms(tly_metrics *m, FILE *out)
{
    const char *p = m->pipeline;
    for (int h = 0; h < TLY_H_COUNT; h++) {
        struct histogram *hist = &m->histograms[h];
        long long cumulative = 0;
        fprintf(out, "# HELP %s %s\n# TYPE %s histogram\n", histogram_info[h].name,
                histogram_info[h].help, histogram_info[h].name);
        for (size_t b = 0; b <= BUCKETS; b++) {
            cumulative += atomic_load_explicit(&hist->buckets[b], memory_order_relaxed);
            if (b < BUCKETS)
                fprintf(out, "%s_bucket{pipeline=\"%s\",le=\"%g\"} %lld\n", histogram_info[h].name,
                        p, bucket_bounds[b], cumulative);
            else
                fprintf(out, "%s_bucket{pipeline=\"%s\",le=\"+Inf\"} %lld\n",
                        histogram_info[h].name, p, cumulative);
        }
        /* count = the +Inf bucket, read once, so the two always agree */
        fprintf(out, "%s_sum{pipeline=\"%s\"} %.6f\n%s_count{pipeline=\"%s\"} %lld\n",
                histogram_info[h].name, p,
                (double)atomic_load_explicit(&hist->sum_us, memory_order_relaxed) / 1e6,
                histogram_info[h].name, p, cumulative);
    }
}

/* The per-partition families are written only once they have a sample (no
 * partition assigned yet, none taken over yet): a # TYPE line with no samples
 * tells a scraper nothing. Called with lag_lock held. */
static void render_partitions(tly_metrics *m, FILE *out)
{
    const char *p = m->pipeline;
    bool recovered = false;

    if (m->lag_count > 0)
        fprintf(out, "# HELP tally_consumer_lag_records Input records behind the high watermark, "
                     "per assigned partition.\n# TYPE tally_consumer_lag_records gauge\n");
    for (int i = 0; i < m->lag_count; i++)
        fprintf(out,
                "tally_consumer_lag_records{pipeline=\"%s\",topic=\"%s\",partition=\"%d\"} %lld\n",
                p, m->lags[i].topic, m->lags[i].partition, (long long)m->lags[i].lag);
    for (int i = 0; i < MAX_PARTITIONS && !recovered; i++)
        recovered = m->recoveries[i].set;
    if (!recovered)
        return;
    fprintf(out, "# HELP tally_partition_recovery_seconds Time bringing the input partition's "
                 "state up to date took when this instance last took it over.\n"
                 "# TYPE tally_partition_recovery_seconds gauge\n");
    for (int i = 0; i < MAX_PARTITIONS; i++)
        if (m->recoveries[i].set)
            fprintf(out,
                    "tally_partition_recovery_seconds{pipeline=\"%s\",partition=\"%d\"} %.6f\n", p,
                    i, (double)m->recoveries[i].ms / 1000.0);
    fprintf(out, "# HELP tally_partition_recovery_records Changelog records replayed when this "
                 "instance last took the input partition over.\n"
                 "# TYPE tally_partition_recovery_records gauge\n");
    for (int i = 0; i < MAX_PARTITIONS; i++)
        if (m->recoveries[i].set)
            fprintf(out,
                    "tally_partition_recovery_records{pipeline=\"%s\",partition=\"%d\"} %lld\n", p,
                    i, (long long)m->recoveries[i].records);
}

char *tly_metrics_render(tly_metrics *m, const char *db_path)
{
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    const char *p = m->pipeline;

    if (!out)
        return NULL;
    render_counters_and_gauges(m, out);
    render_histograms(m, out);
    pthread_mutex_lock(&m->lag_lock);
    render_partitions(m, out);
    pthread_mutex_unlock(&m->lag_lock);
    if (db_path) {
        char wal[4200];
        snprintf(wal, sizeof(wal), "%s-wal", db_path);
        fprintf(out,
                "# HELP tally_database_bytes Size of the state database file.\n"
                "# TYPE tally_database_bytes gauge\ntally_database_bytes{pipeline=\"%s\"} %lld\n"
                "# HELP tally_wal_bytes Size of the database's write-ahead log.\n"
                "# TYPE tally_wal_bytes gauge\ntally_wal_bytes{pipeline=\"%s\"} %lld\n",
                p, file_size(db_path), p, file_size(wal));
    }
    if (fclose(out) != 0) {
        free(text);
        return NULL;
    }
    return text;
}
