/* adapters/kafka/runner.c - the daemon: start, the loop, shutdown.
 *
 * tly_runner_run, in order:
 *   start    the HTTP server (so /healthz answers while recovering), a check
 *            that the cluster accepts our settings, the topics, recovery
 *            (recovery.c: the database checked, replaced by a snapshot when
 *            lost, brought up to the changelog's end), the pipeline, the
 *            transactional producer (which fences a previous self first)
 *   loop     collect a batch and process it (batch.c: the commit protocol),
 *            then what is due between batches: a snapshot, a log_compacted
 *            flush (emit.c), changelog pruning, standby rows, the consumer
 *            watchdog, gauges (assignment.c, housekeeping.c)
 *   stop     a last flush and snapshot, the consumer closed (its partitions
 *            kept: a restart gets them back), the producer flushed
 *
 * runner_int.h says which file holds which part. */
#include "runner_int.h"

#include "clock.h"
#include "error.h"
#include "http.h"
#include "kconf.h"
#include "log.h"
#include "partitions.h"
#include "snapshot.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define WATCHDOG_MS 60000 /* see runner_watch_consumer() */

void tly_runner_config_init(tly_runner_config *cfg, const char *pipeline)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->pipeline = pipeline;
    cfg->topic_prefix = "opb";
    cfg->group_id = "opb";
    cfg->instance_id = NULL;
    cfg->state_dir = "state";
    cfg->commit_interval_ms = 100;
    /* Measured draining 2 M orders (../peer-kstreams/compare.sh): 20000
     * against 5000 took 11% less CPU per order and 30% less of the broker's
     * (fewer transactions); a batch still closes after commit_interval_ms,
     * so at a moderate rate it stays small and latency does not change. */
    cfg->max_batch = 20000;
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
    cfg->query_max_bytes = 16 << 20;
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

/* Paths, buffers and clients that need no cluster; the HTTP server. */
static int runner_open(struct runner *r, const tly_runner_config *cfg, tly_http **http,
                       char *errbuf, size_t errlen)
{
    char err[1024];
    const char *env;

    r->cfg = cfg;
    for (int p = 0; p < TLY_MAX_PARTITIONS; p++)
        r->changelog_offsets[p] = -1;
    r->crash_at = getenv("TALLY_CRASH_AT");
    r->crash_batch = getenv("TALLY_CRASH_BATCH") ? atol(getenv("TALLY_CRASH_BATCH")) : 1;
    r->stall_at = getenv("TALLY_STALL_AT");
    r->stall_ms = getenv("TALLY_STALL_MS") ? atol(getenv("TALLY_STALL_MS")) : 0;
    /* tests shorten the watchdog to see it act */
    r->assign.watchdog_ms =
        (env = getenv("TALLY_WATCHDOG_MS")) && atol(env) > 0 ? atol(env) : WATCHDOG_MS;
    if (tly_topics_layout(cfg->pipeline_file ? cfg->pipeline_file : cfg->pipeline,
                          cfg->topic_prefix, cfg->input_topic, cfg->output_topic, &r->topics,
                          errbuf, errlen) < 0)
        return -1;
    if (mkdir(cfg->state_dir, 0755) != 0 && errno != EEXIST)
        return tly_error(errbuf, errlen, "cannot create state directory %s: %s", cfg->state_dir,
                         strerror(errno));
    snprintf(r->db_path, sizeof(r->db_path), "%s/%s.db", cfg->state_dir, cfg->pipeline);
    if (cfg->snapshot_dir)
        snprintf(r->snapshot_dir, sizeof(r->snapshot_dir), "%s", cfg->snapshot_dir);
    else
        snprintf(r->snapshot_dir, sizeof(r->snapshot_dir), "%s/snapshots", cfg->state_dir);
    r->next_snapshot_ms = tly_clock_mono_ms() + cfg->snapshot_interval_ms;
    r->batch.messages = calloc((size_t)cfg->max_batch, sizeof(*r->batch.messages));
    r->batch.events = calloc((size_t)cfg->max_batch, sizeof(*r->batch.events));
    r->batch.results = calloc((size_t)cfg->max_batch, sizeof(*r->batch.results));
    r->assign.owned = tly_ownership_new();
    r->metrics = tly_metrics_new(cfg->pipeline);
    if (!r->batch.messages || !r->batch.events || !r->batch.results || !r->assign.owned ||
        !r->metrics || runner_housekeeping_init(r) < 0)
        return tly_error(errbuf, errlen, "out of memory");
    /* The HTTP server comes up first: /healthz answers and /readyz says
     * "recovering" while the state is brought back. */
    if (cfg->http_listen) {
        tly_http_config hc = {cfg->http_listen,      cfg->http_token,     r->db_path, cfg->pipeline,
                              cfg->query_timeout_ms, cfg->query_max_rows, r->metrics, NULL,
                              cfg->query_max_bytes};
        tly_pipeline_info info;
        if (cfg->pipeline_file &&
            tly_pipeline_describe(cfg->pipeline_file, &info, errbuf, errlen) == 0 &&
            info.state_table[0])
            hc.table = info.state_table;
        if (tly_http_start(&hc, http, err, sizeof(err)) < 0) {
            if (cfg->http_required)
                return tly_error(errbuf, errlen, "%s", err);
            tly_log("warn", "http_off", "error=%s", tly_log_quote(err, (char[1100]){0}, 1100));
        } else {
            tly_log("info", "http_listening", "address=%s port=%d token=%s", cfg->http_listen,
                    tly_http_port(*http), cfg->http_token ? "required" : "none");
            if (!cfg->http_token && !tly_http_loopback(cfg->http_listen))
                tly_log("warn", "http_unauthenticated",
                        "address=%s reason=\"/query and /metrics answer anyone who can reach "
                        "this address\" fix=\"set --http-token (or TALLY_HTTP_TOKEN), or bind "
                        "127.0.0.1\"",
                        cfg->http_listen);
        }
    }
    return 0;
}

/* The pipeline on the recovered database, with the settings of the flags. */
static int open_pipeline(struct runner *r, char *errbuf, size_t errlen)
{
    const tly_runner_config *cfg = r->cfg;
    const char *settings[18] = {NULL};
    char window_setting[64];
    int n = 0;

    if (cfg->window_ms > 0) {
        snprintf(window_setting, sizeof(window_setting), "window_ms=%lld",
                 (long long)cfg->window_ms);
        settings[n++] = window_setting;
    }
    for (const char *const *extra = cfg->pipeline_settings; extra && *extra && n < 17; extra++)
        settings[n++] = *extra;
    if (tly_pipeline_open(r->store, cfg->pipeline_file ? cfg->pipeline_file : cfg->pipeline,
                          settings, 0, &r->pipeline, errbuf, errlen) < 0)
        return -1;
    if (cfg->strategy != TLY_EMIT_INLINE && !tly_pipeline_has_flush(r->pipeline))
        return tly_error(errbuf, errlen,
                         "--strategy %s needs a pipeline that keeps what it has "
                         "to emit (a @flush section, like telemetry's); %s emits each batch's "
                         "changes: use --strategy inline",
                         tly_emit_strategy_name(cfg->strategy), cfg->pipeline);
    if (cfg->strategy == TLY_EMIT_WINDOW_STREAM &&
        tly_pipeline_set_windowed(r->pipeline, true, cfg->allowed_lateness_ms, errbuf, errlen) < 0)
        return -1;
    if (!(r->pack = tly_pack_new(cfg->batch_size, runner_output_message, NULL)))
        return tly_error(errbuf, errlen, "out of memory");
    return 0;
}

/* The cluster, the topics, recovery, the pipeline, the producer: everything
 * before the first poll. rcfg and recovery are the caller's (they outlive
 * this: take-overs use rcfg). */
static int runner_recover(struct runner *r, tly_recovery_config *rcfg,
                          tly_recovery_report *recovery, char *errbuf, size_t errlen)
{
    const tly_runner_config *cfg = r->cfg;
    char summary[2048], quoted[2100];
    tly_store_options opts;

    /* Settings that cannot work (credentials, TLS, the wrong listener) end
     * the start here, with librdkafka's reason, instead of in a timeout of
     * the first request that needs the cluster. */
    if (*tly_kconf_summary(summary, sizeof(summary)))
        tly_log("info", "kafka_settings", "settings=%s",
                tly_log_quote(summary, quoted, sizeof(quoted)));
    if (tly_kconf_check_cluster(cfg->brokers, KAFKA_TIMEOUT_MS, errbuf, errlen) < 0)
        return -1;
    /* Internal and output topics are created if missing; the input must exist. */
    if (cfg->manage_topics &&
        tly_topics_ensure(cfg->brokers, &r->topics, TLY_TOPIC_INTERNAL | TLY_TOPIC_OUTPUT, 0,
                          KAFKA_TIMEOUT_MS, NULL, errbuf, errlen) < 0)
        return -1;
    *rcfg = (tly_recovery_config){0};
    rcfg->brokers = cfg->brokers;
    rcfg->pipeline = cfg->pipeline;
    rcfg->pipeline_file = cfg->pipeline_file;
    rcfg->topics = &r->topics;
    rcfg->group_id = cfg->group_id;
    rcfg->db_path = r->db_path;
    rcfg->snapshot_dir = r->snapshot_dir;
    rcfg->changelog = cfg->changelog;
    rcfg->allow_empty = cfg->allow_empty;
    rcfg->stop = cfg->stop;
    rcfg->by_partition = cfg->changelog && !cfg->recover_only;
    rcfg->instance = cfg->instance_id;
    /* Before the database is opened: a missing or failing one is replaced by
     * the newest snapshot that verifies. */
    tly_store_options_init(&opts);
    opts.background_checkpoint = 1; /* the batch loop never waits for one */
    if (tly_recovery_prepare(rcfg, recovery, errbuf, errlen) < 0 ||
        tly_store_open(r->db_path, &opts, &r->store, errbuf, errlen) < 0 ||
        open_pipeline(r, errbuf, errlen) < 0)
        return -1;
    /* init_transactions first: it fences any previous instance with our
     * transactional.id and waits until that instance's last transaction is
     * committed or aborted. Only then is the end of the changelog final - a
     * replay before it could stop short of a batch whose commit was already
     * decided, while the input offsets it committed skip that batch for good. */
    if (!(r->producer = runner_new_producer(r, errbuf, errlen)))
        return -1;
    /* The replay writes through a connection of its own; the store sees the
     * result from its first transaction on. */
    if (tly_recovery_replay(rcfg, tly_pipeline_entity(r->pipeline), recovery, r->changelog_offsets,
                            errbuf, errlen) < 0 ||
        tly_recovery_finish(rcfg, recovery, errbuf, errlen) < 0)
        return -1;
    r->snapshot_seq = tly_snapshot_newest_recorded(r->store);
    r->rcfg = rcfg;
    /* Snapshots name their instance: several share a snapshot directory. */
    if (tly_store_meta_set_text(r->store, TLY_META_INSTANCE, cfg->instance_id) < 0)
        return tly_error(errbuf, errlen, "cannot record the instance: %s",
                         sqlite3_errmsg(tly_store_db(r->store)));
    if (runner_sum_counters(r, errbuf, errlen) < 0 || runner_forget_emitted(r, errbuf, errlen) < 0)
        return -1;
    /* The partitions table said which partitions the replay above had to
     * bring up to date (tly_recovery_replay); from here on it lists what
     * this instance was assigned and took over, and it has taken nothing
     * yet (a restored snapshot's table lists another instance's). What the
     * database holds is STANDBY until assigned. */
    if (!cfg->recover_only && cfg->changelog &&
        (tly_partitions_reset(r->store, errbuf, errlen) < 0 ||
         runner_restore_standby(r, errbuf, errlen) < 0))
        return -1;
    runner_count_held(r);
    r->next_flush_ms = tly_clock_mono_ms() + cfg->flush_interval_ms;
    tly_metrics_set(r->metrics, TLY_G_RECOVERY_MS, recovery->ttr_ms);
    tly_metrics_set(r->metrics, TLY_G_RECOVERY_RECORDS, recovery->records_replayed);
    tly_metrics_set(r->metrics, TLY_G_RECOVERY_BYTES, recovery->bytes_replayed);
    tly_metrics_set(r->metrics, TLY_G_LAST_SEQ, tly_store_last_seq(r->store));
    return 0;
}

static void log_totals(const struct runner *r, const char *event)
{
    tly_log("info", event,
            "applied=%lld rejected=%lld late=%lld skipped=%lld changes=%lld outputs=%lld "
            "batches=%ld aborted=%lld",
            (long long)r->applied, (long long)r->rejected, (long long)r->late,
            (long long)r->skipped, (long long)r->changes, (long long)r->outputs, r->batches,
            (long long)r->aborted);
}

/* Batches until *cfg->stop, then a last flush and snapshot. */
static int runner_loop(struct runner *r, const tly_recovery_report *recovery, char *errbuf,
                       size_t errlen)
{
    const tly_runner_config *cfg = r->cfg;
    int64_t last_report = tly_clock_mono_ms();
    bool first_commit = false;

    while (!(cfg->stop && *cfg->stop)) {
        if (runner_collect(r, errbuf, errlen) < 0 || runner_watch_consumer(r, errbuf, errlen) < 0)
            return -1;
        if (r->batch.count > 0) {
            enum batch_result result = runner_process_batch(r, errbuf, errlen);
            runner_release_collected(r);
            if (result == BATCH_FATAL)
                return -1;
            if (result == BATCH_COMMITTED && !first_commit) {
                /* restart -> first committed output: the time to recover as
                 * the outside world sees it (less the consumer's own lag) */
                first_commit = true;
                tly_log("info", "first_commit", "since_start_ms=%lld recovery_ms=%lld",
                        (long long)(tly_clock_mono_ms() - recovery->started_ms),
                        (long long)recovery->ttr_ms);
            }
        }
        if (runner_maybe_snapshot(r, errbuf, errlen) < 0 ||
            runner_maybe_flush(r, errbuf, errlen) < 0)
            return -1;
        runner_prune(r);
        runner_drop_standby(r);
        runner_update_gauges(r);
        if (tly_clock_mono_ms() - last_report >= 10000) {
            last_report = tly_clock_mono_ms();
            log_totals(r, "progress");
        }
    }
    tly_metrics_set(r->metrics, TLY_G_READY, 0);
    if (cfg->strategy == TLY_EMIT_LOG_COMPACTED &&
        runner_flush_outputs(r, "shutdown_flush", errbuf, errlen) < 0)
        return -1;
    /* A snapshot under way is finished and published: it is a good one. */
    if (runner_finish_snapshot(r, errbuf, errlen) < 0)
        return -1;
    log_totals(r, "shutdown");
    return 0;
}

static void runner_close(struct runner *r, const tly_recovery_config *rcfg,
                         const tly_recovery_report *recovery)
{
    runner_housekeeping_free(r);
    runner_release_collected(r);
    r->assign.closing = true; /* the rows stay: a restart gets the partitions back */
    if (r->consumer) {
        rd_kafka_consumer_close(r->consumer);
        rd_kafka_destroy(r->consumer);
    }
    if (r->producer) {
        rd_kafka_flush(r->producer, 10000);
        rd_kafka_destroy(r->producer);
    }
    tly_pipeline_close(r->pipeline);
    tly_pack_free(r->pack);
    tly_store_close(r->store);
    if (rcfg->db_path)
        tly_recovery_discard(rcfg, recovery);
    free(r->batch.messages);
    free(r->batch.events);
    free(r->batch.results);
    tly_ownership_free(r->assign.owned);
    tly_metrics_free(r->metrics);
}

/* After a transaction expired in a stall (batch.c, fatal_or_restart): what
 * a restart of the process would do, without dropping the HTTP server and
 * the metrics. The clients, the pipeline and the store are closed as they
 * are - the open batch is rolled back, what Kafka has not committed is
 * purged - and the start is run again: init_transactions fences the old
 * epoch, recovery brings the database to what Kafka committed, the
 * consumer rejoins the group and takes its partitions over again. */
static int runner_start_over(struct runner *r, tly_recovery_config *rcfg,
                             tly_recovery_report *recovery, char *errbuf, size_t errlen)
{
    char quoted[1100];

    r->restarts++;
    tly_log("warn", "restart", "count=%ld reason=%s", r->restarts,
            tly_log_quote(errbuf, quoted, sizeof(quoted)));
    tly_metrics_set(r->metrics, TLY_G_READY, 0);
    r->restart = false;
    runner_release_collected(r);
    runner_housekeeping_free(r); /* a snapshot under way is finished, not published */
    if (runner_housekeeping_init(r) < 0)
        return tly_error(errbuf, errlen, "out of memory");
    if (r->consumer) {
        /* no leave: the new consumer, same group.instance.id, takes the place */
        rd_kafka_destroy_flags(r->consumer, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
        r->consumer = NULL;
    }
    if (r->producer) {
        rd_kafka_purge(r->producer, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
        rd_kafka_destroy(r->producer);
        r->producer = NULL;
    }
    tly_pipeline_close(r->pipeline);
    r->pipeline = NULL;
    tly_pack_free(r->pack);
    r->pack = NULL;
    tly_store_close(r->store);
    r->store = NULL;
    tly_ownership_free(r->assign.owned);
    if (!(r->assign.owned = tly_ownership_new()))
        return tly_error(errbuf, errlen, "out of memory");
    r->assign.unassigned_since = r->assign.lost_ms = 0;
    r->assign.error[0] = '\0';
    for (int p = 0; p < TLY_MAX_PARTITIONS; p++)
        r->changelog_offsets[p] = -1;
    r->delivery_failed = false;
    memset(recovery, 0, sizeof(*recovery));
    if (runner_recover(r, rcfg, recovery, errbuf, errlen) < 0 ||
        !(r->consumer = runner_new_consumer(r, errbuf, errlen)))
        return -1;
    runner_broker_answered(r);
    tly_metrics_set(r->metrics, TLY_G_READY, 1);
    tly_log("info", "restarted", "count=%ld source=%s ttr_ms=%lld records_replayed=%lld",
            r->restarts, recovery->source, (long long)recovery->ttr_ms,
            (long long)recovery->records_replayed);
    return 0;
}

int tly_runner_run(const tly_runner_config *cfg, char *errbuf, size_t errlen)
{
    struct runner r = {0};
    tly_recovery_config rcfg = {0};
    tly_recovery_report recovery;
    tly_http *http = NULL;
    int rc = -1;

    memset(&recovery, 0, sizeof(recovery));
    if (runner_open(&r, cfg, &http, errbuf, errlen) < 0 ||
        runner_recover(&r, &rcfg, &recovery, errbuf, errlen) < 0)
        goto done;
    if (cfg->recover_only) {
        rc = 0;
        goto done;
    }
    if (!(r.consumer = runner_new_consumer(&r, errbuf, errlen)))
        goto done;
    runner_broker_answered(&r);
    tly_metrics_set(r.metrics, TLY_G_READY, 1);
    tly_log("info", "started",
            "pipeline=%s input=%s output=%s changelog=%s group=%s instance=%s strategy=%s db=%s",
            cfg->pipeline, r.topics.input.name, r.topics.output.name,
            cfg->changelog ? r.topics.changelog.name : "off", cfg->group_id, cfg->instance_id,
            tly_emit_strategy_name(cfg->strategy), r.db_path);
    while ((rc = runner_loop(&r, &recovery, errbuf, errlen)) < 0 && r.restart &&
           !(cfg->stop && *cfg->stop))
        if (runner_start_over(&r, &rcfg, &recovery, errbuf, errlen) < 0)
            break;
done:
    tly_http_stop(http);
    runner_close(&r, &rcfg, &recovery);
    return rc;
}
