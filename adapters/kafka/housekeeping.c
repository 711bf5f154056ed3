/* adapters/kafka/housekeeping.c - what the daemon does between batches
 * besides consuming: snapshots, changelog table pruning, gauges. */
#include "runner_int.h"

#include "changelog.h"
#include "clock.h"
#include "error.h"
#include "log.h"
#include "meta.h"
#include "partitions.h"
#include "snapshot.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The changelog table is pruned up to the newest snapshot (recovery never needs
 * the rows inside one: the changelog topic has them; and snapshot + an export
 * of the rows after it rebuild the state offline), but rows younger than
 * changelog_retention_ms stay for `tally changelog export`. Without snapshots,
 * only the retention bounds it. Sets the bound; prune_some() deletes in small
 * steps between batches. */
static void plan_pruning(struct runner *r)
{
    int64_t upto =
        r->cfg->snapshot_interval_ms > 0 ? r->snapshot_seq : tly_store_last_seq(r->store);
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

static int fill_manifest(struct runner *r, void *ctx, char *why, size_t whylen)
{
    const char *manifest = ctx;
    rd_kafka_resp_err_t err =
        runner_produce(r, r->topics.snapshots.name, r->cfg->pipeline, strlen(r->cfg->pipeline),
                       manifest, strlen(manifest), NULL);
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

    pthread_join(job->thread, NULL);
    job->running = false;
    if (job->rc < 0 ||
        tly_snapshot_record(r->store, job->keep, m, job->why, sizeof(job->why)) < 0) {
        tly_metrics_add(r->metrics, TLY_C_SNAPSHOT_ERRORS, 1);
        tly_log("error", "snapshot_error", "error=%s",
                tly_log_quote(job->why, (char[1100]){0}, 1100));
        return 0;
    }
    if (tly_snapshot_manifest_json(m, manifest, sizeof(manifest)) < 0) {
        tly_log("error", "snapshot_error", "error=\"manifest of %s is too large\"", m->path);
        return 0;
    }
    switch (runner_own_transaction(r, "snapshot manifest", NULL, fill_manifest, manifest, errbuf,
                                   errlen)) {
    case BATCH_FATAL: return -1;
    case BATCH_ABORTED: return 0; /* the snapshot stays; the next one is published */
    case BATCH_COMMITTED: break;
    }
    r->snapshots++;
    r->snapshot_seq = m->last_seq;
    tly_metrics_add(r->metrics, TLY_C_SNAPSHOTS, 1);
    tly_metrics_set(r->metrics, TLY_G_SNAPSHOT_WRITE_MS, job->written_ms - job->started_ms);
    tly_metrics_set(r->metrics, TLY_G_SNAPSHOT_BYTES, m->bytes);
    tly_metrics_set(r->metrics, TLY_G_SNAPSHOT_LAST_SEQ, m->last_seq);
    plan_pruning(r);
    /* write_ms: the copy, beside the daemon; publish_ms: the manifest's
     * transaction, which ingestion waits for. */
    tly_log("info", "snapshot",
            "snapshot=%s last_seq=%lld bytes=%lld write_ms=%lld publish_ms=%lld path=%s",
            m->snapshot_id, (long long)m->last_seq, (long long)m->bytes,
            (long long)(job->written_ms - job->started_ms),
            (long long)(tly_clock_mono_ms() - publishing), m->path);
    return 0;
}

int runner_maybe_snapshot(struct runner *r, char *errbuf, size_t errlen)
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

int runner_housekeeping_init(struct runner *r)
{
    return (r->snapshot_job = calloc(1, sizeof(*r->snapshot_job))) ? 0 : -1;
}

void runner_housekeeping_free(struct runner *r)
{
    if (r->snapshot_job && r->snapshot_job->running)
        pthread_join(r->snapshot_job->thread, NULL);
    free(r->snapshot_job);
    r->snapshot_job = NULL;
}

/* At shutdown: a snapshot under way is waited for and published. */
int runner_finish_snapshot(struct runner *r, char *errbuf, size_t errlen)
{
    return r->snapshot_job->running ? publish_snapshot(r, errbuf, errlen) : 0;
}

/* Between batches: with snapshots the bound moves when one is published;
 * without, every 10 s. Then one step of deleting. */
void runner_prune(struct runner *r)
{
    if (r->cfg->snapshot_interval_ms <= 0 && tly_clock_mono_ms() >= r->next_prune_plan) {
        r->next_prune_plan = tly_clock_mono_ms() + 10000;
        plan_pruning(r);
    }
    prune_some(r);
}

/* Every second between batches: consumer lag per assigned partition (the
 * high watermark librdkafka last saw minus our position: no broker round
 * trip), and every ten seconds the changelog table's row count. */
/* The cluster answered: /readyz and tally_broker_last_contact_* see it. */
void runner_broker_answered(struct runner *r)
{
    r->broker_ok_ms = tly_clock_mono_ms();
    tly_metrics_set(r->metrics, TLY_G_BROKER_CONTACT_MS, tly_clock_wall_ms());
}

/* One metadata request through the producer, waiting at most timeout_ms:
 * does the cluster answer? An answer counts as contact. */
rd_kafka_resp_err_t runner_probe_cluster(struct runner *r, int timeout_ms)
{
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t err = rd_kafka_metadata(r->producer, 0, NULL, &md, timeout_ms);

    if (md)
        rd_kafka_metadata_destroy(md);
    if (!err)
        runner_broker_answered(r);
    return err;
}

/* Without committed batches (an idle input, a broker away) nothing says
 * whether the cluster answers: a probe every PROBE_MS does. It blocks the
 * loop for at most a second, and only when the loop has had no answer for
 * PROBE_MS anyway. */
static void probe_broker(struct runner *r, int64_t now)
{
    static const int64_t probe_ms = 2000;

    if (!r->producer || now - r->broker_ok_ms < probe_ms || now - r->last_probe < probe_ms)
        return;
    r->last_probe = now;
    runner_probe_cluster(r, 1000);
}

void runner_update_gauges(struct runner *r)
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
                    "instances\"",
                    (long long)moved);
            tly_metrics_set(r->metrics, TLY_G_ROWS_MOVED, moved);
        }
    }
    r->last_gauges = now;
    probe_broker(r, now);
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
