/* adapters/influx/ingest.c - the InfluxDB ingest cycle; ingest.h has the
 * contract (what is delivered when, and what a failure or a stop costs).
 *
 * Reading: one statement per (chunk, pod), each answer folded into the
 * cycle's latest set. Producing: one record per VIN, queued with a copy so a
 * failed record can be queued again while librdkafka still holds the first;
 * delivery reports mark the records, and a retry sends only those not
 * marked. The loop: one cycle per interval when caught up, back to back when
 * behind, the checkpoint written after every delivered cycle. */
#include "ingest.h"

#include "checkpoint.h"
#include "clock.h"
#include "error.h"
#include "kconf.h"
#include "log.h"

#include <inttypes.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define STATEMENT_MAX 4096
#define METADATA_TIMEOUT_MS 10000

/* One record of the cycle being produced. */
struct outgoing {
    char *json;
    size_t len;
    const char *vin; /* borrowed from the latest set */
    int delivered;
};

struct tly_influx_ingest {
    tly_influx_ingest_config cfg; /* its strings and arrays borrowed */
    tly_influx *influx;
    tly_latest *latest;
    int resumed; /* a checkpoint was read: start at checkpoint_ms */
    int64_t checkpoint_ms;
    rd_kafka_t *rk;
    rd_kafka_topic_t *rkt;
    int fatal; /* the producer hit a fatal error: make a new one */
    /* The cycle's records and their delivery reports. */
    struct outgoing *out;
    size_t out_count;
    int64_t delivery_failures;
    char delivery_error[256];
    /* The cycle's counts. */
    int64_t readings, skipped, queries;
};

/* --------------------------------------------------------------- waiting --- */

/* Sleeps ms milliseconds or until a stop. Returns 1 if a stop was asked. */
static int sleep_ms(const tly_influx_ingest *ing, int64_t ms)
{
    int64_t deadline = tly_clock_mono_ms() + ms;
    while (!*ing->cfg.stop) {
        int64_t left = deadline - tly_clock_mono_ms();
        struct timespec ts;
        if (left <= 0)
            break;
        if (left > 200) /* a signal interrupts nanosleep anyway; this is a fallback */
            left = 200;
        ts.tv_sec = left / 1000;
        ts.tv_nsec = (long)(left % 1000) * 1000000;
        nanosleep(&ts, NULL);
    }
    return *ing->cfg.stop != 0;
}

int64_t tly_influx_ingest_backoff_ms(int attempt, int64_t initial_ms, int64_t max_ms)
{
    int64_t delay = initial_ms > 0 ? initial_ms : 0;
    for (int i = 1; i < attempt && delay < max_ms; i++)
        delay = delay > INT64_MAX / 2 ? INT64_MAX : delay * 2;
    return delay < max_ms ? delay : max_ms;
}

/* After failed attempt `attempt` of `stage` (why in reason): returns -1 when
 * it was the last, TLY_INFLUX_CANCELLED when a stop came during the backoff
 * wait, and 0 after the wait, for the next attempt. The wait is logged. */
static int wait_to_retry(const tly_influx_ingest *ing, const char *stage, const char *pod,
                         int64_t from_ms, int64_t to_ms, int attempt, const char *reason)
{
    const tly_influx_ingest_config *cfg = &ing->cfg;
    char quoted_reason[700], quoted_pod[300];
    int64_t delay_ms;

    if (attempt >= cfg->retry_attempts)
        return -1;
    delay_ms = tly_influx_ingest_backoff_ms(attempt, cfg->retry_initial_ms, cfg->retry_max_ms);
    tly_log("warn", "ingest_retry",
            "stage=%s%s%s from_ms=%" PRId64 " to_ms=%" PRId64
            " attempt=%d max_attempts=%d delay_ms=%" PRId64 " reason=%s",
            stage, pod ? " pod=" : "",
            pod ? tly_log_quote(pod, quoted_pod, sizeof(quoted_pod)) : "", from_ms, to_ms, attempt,
            (int)cfg->retry_attempts, delay_ms,
            tly_log_quote(reason, quoted_reason, sizeof(quoted_reason)));
    return sleep_ms(ing, delay_ms) ? TLY_INFLUX_CANCELLED : 0;
}

/* ----------------------------------------------------------------- reading --- */

/* One answer being folded: its pod, a one-entry device -> VIN cache (the
 * readings of a series share one device string, which lives in the answer:
 * the cache must not outlive the fold) and its counts. */
struct fold {
    tly_latest *latest;
    const tly_influx_map *map;
    const char *pod, *cached_device, *cached_vin;
    tly_influx_fold_counts counts;
};

static int on_reading(void *opaque, const char *device, const char *sensor, int64_t time_ms,
                      json_object *value, char *errbuf, size_t errlen)
{
    struct fold *f = opaque;
    const char *vin;

    if (device == f->cached_device) {
        vin = f->cached_vin;
    } else {
        vin = f->map ? tly_influx_map_vin(f->map, f->pod, device) : device;
        f->cached_device = device;
        f->cached_vin = vin;
    }
    /* No VIN tag, or a device the map does not list: nothing to key it by. */
    if (!vin || !*vin) {
        f->counts.skipped++;
        return 0;
    }
    if (tly_latest_add(f->latest, vin, sensor, time_ms, value) < 0)
        return tly_error(errbuf, errlen, "out of memory");
    f->counts.readings++;
    return 0;
}

int tly_influx_ingest_fold(tly_latest *latest, const tly_influx_map *map, const char *pod,
                           const char *device_tag, const char *body, size_t len,
                           tly_influx_fold_counts *counts, char *errbuf, size_t errlen)
{
    struct fold f = {.latest = latest, .map = map, .pod = pod};
    int rc = tly_influx_parse(body, len, device_tag, on_reading, &f, errbuf, errlen);

    counts->readings = rc == 0 ? f.counts.readings : 0;
    counts->skipped = rc == 0 ? f.counts.skipped : 0;
    return rc;
}

/* Reads one pod's [from_ms, to_ms) into ing->latest, retrying with backoff.
 * Returns 0, TLY_INFLUX_CANCELLED on a stop, or -1 with err after the last
 * attempt. */
static int read_range(tly_influx_ingest *ing, const char *pod, int64_t from_ms, int64_t to_ms,
                      char *err, size_t errlen)
{
    char statement[STATEMENT_MAX];
    tly_influx_fold_counts counts;
    const char *body;
    size_t len;
    int rc;

    if (tly_influx_build_select(&ing->cfg.model, pod, from_ms, to_ms, statement, sizeof(statement),
                                err, errlen) < 0)
        return -1;
    for (int attempt = 1;; attempt++) {
        ing->queries++;
        rc = tly_influx_query(ing->influx, statement, &body, &len, err, errlen);
        if (rc == 0)
            rc = tly_influx_ingest_fold(ing->latest, ing->cfg.map, pod, ing->cfg.model.device_tag,
                                        body, len, &counts, err, errlen);
        if (rc == 0) {
            ing->readings += counts.readings;
            ing->skipped += counts.skipped;
            return 0;
        }
        if (rc == TLY_INFLUX_CANCELLED || *ing->cfg.stop)
            return TLY_INFLUX_CANCELLED;
        if ((rc = wait_to_retry(ing, "query", pod, from_ms, to_ms, attempt, err)) != 0)
            return rc;
    }
}

/* ---------------------------------------------------------------- producing --- */

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque)
{
    tly_influx_ingest *ing = opaque;
    struct outgoing *record = msg->_private;
    (void)rk;
    if (msg->err) {
        if (ing->delivery_failures++ == 0)
            snprintf(ing->delivery_error, sizeof(ing->delivery_error), "%s",
                     rd_kafka_err2str(msg->err));
        return;
    }
    record->delivered = 1;
}

static void on_kafka_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    tly_influx_ingest *ing = opaque;
    char quoted[600], fatal_reason[512];
    /* An idempotent producer after a fatal error (a sequence gap, say) cannot
     * go on without risking duplicates or reordering: it is replaced. */
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        rd_kafka_fatal_error(rk, fatal_reason, sizeof(fatal_reason));
        ing->fatal = 1;
        reason = fatal_reason;
    }
    tly_log(ing->fatal ? "error" : "warn", "kafka", "error=%s",
            tly_log_quote(reason, quoted, sizeof(quoted)));
}

static void close_producer(tly_influx_ingest *ing)
{
    if (ing->rkt)
        rd_kafka_topic_destroy(ing->rkt);
    if (ing->rk)
        rd_kafka_destroy(ing->rk);
    ing->rkt = NULL;
    ing->rk = NULL;
    ing->fatal = 0;
}

static int open_producer(tly_influx_ingest *ing, char *err, size_t errlen)
{
    char timeout[32];

    snprintf(timeout, sizeof(timeout), "%" PRId64, ing->cfg.delivery_timeout_ms);
    {
        /* murmur2_random: the same key -> partition mapping as the Java
         * producer, so a VIN lands where the upstream services put it. */
        /* clang-format off */
        const char *const defaults[] = {"client.id", "tally-ingest-influxdb", "linger.ms", "5",
                                        "message.timeout.ms", timeout,
                                        "partitioner", "murmur2_random", NULL};
        /* clang-format on */
        if (!(ing->rk =
                  tly_kconf_idempotent_producer(ing->cfg.brokers, defaults, ing, on_delivery,
                                                on_kafka_error, tly_kconf_drop_log, err, errlen)))
            return -1;
    }
    if (!(ing->rkt = rd_kafka_topic_new(ing->rk, ing->cfg.topic, NULL))) {
        snprintf(err, errlen, "topic %s: %s", ing->cfg.topic,
                 rd_kafka_err2str(rd_kafka_last_error()));
        close_producer(ing);
        return -1;
    }
    return 0;
}

static void free_outgoing(tly_influx_ingest *ing)
{
    for (size_t i = 0; i < ing->out_count; i++)
        free(ing->out[i].json);
    free(ing->out);
    ing->out = NULL;
    ing->out_count = 0;
}

/* Queues every record not yet delivered. Returns 0, or -1 with err when a
 * record cannot even be queued (after waiting for those queued already). */
static int queue_pending(tly_influx_ingest *ing, char *err, size_t errlen)
{
    rd_kafka_resp_err_t kerr;

    for (size_t i = 0; i < ing->out_count; i++) {
        struct outgoing *r = &ing->out[i];
        if (r->delivered)
            continue;
        /* Copied: a failed record may be sent again by the next attempt
         * while librdkafka still holds this one. */
        kerr = tly_kconf_produce(ing->rk, ing->rkt, NULL, RD_KAFKA_PARTITION_UA, r->vin,
                                 strlen(r->vin), r->json, r->len, NULL, r, NULL);
        if (kerr) {
            snprintf(err, errlen, "cannot queue a record for %s: %s", ing->cfg.topic,
                     rd_kafka_err2str(kerr));
            rd_kafka_flush(ing->rk, (int)ing->cfg.delivery_timeout_ms); /* those queued already */
            return -1;
        }
    }
    return 0;
}

/* Queues every record not yet delivered and waits for all delivery reports.
 * Returns the number still undelivered (0: all acknowledged), or -1 with err
 * when a record cannot even be queued. */
static int64_t send_pending(tly_influx_ingest *ing, char *err, size_t errlen)
{
    int64_t undelivered = 0;

    ing->delivery_failures = 0;
    ing->delivery_error[0] = '\0';
    if (queue_pending(ing, err, errlen) < 0)
        return -1;
    /* message.timeout.ms bounds this: every record gets its report by then.
     * A stop request does not cut it short, so a record is never left
     * undecided (the checkpoint could not tell). */
    while (rd_kafka_outq_len(ing->rk) > 0 && !ing->fatal)
        rd_kafka_flush(ing->rk, 100);
    if (ing->fatal) {
        rd_kafka_purge(ing->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
        rd_kafka_poll(ing->rk, 0);
    }
    for (size_t i = 0; i < ing->out_count; i++)
        undelivered += !ing->out[i].delivered;
    if (undelivered)
        snprintf(err, errlen, "%" PRId64 " of %zu record(s) not delivered: %s", undelivered,
                 ing->out_count,
                 ing->fatal               ? "fatal producer error"
                 : ing->delivery_error[0] ? ing->delivery_error
                                          : "no delivery report");
    return undelivered;
}

/* Produces the records of ing->latest and waits until the broker has every
 * one, retrying what failed with backoff. Returns 0, TLY_INFLUX_CANCELLED on a
 * stop between attempts, or -1 with err after the last attempt. */
static int produce_cycle(tly_influx_ingest *ing, int64_t from_ms, int64_t to_ms, int64_t *messages,
                         char *err, size_t errlen)
{
    size_t count = tly_latest_count(ing->latest);
    int64_t produced_at = tly_clock_wall_ms(), undelivered;
    int rc;

    *messages = 0;
    if (count == 0)
        return 0;
    if (!(ing->out = calloc(count, sizeof(*ing->out))))
        return tly_error(err, errlen, "out of memory");
    ing->out_count = count;
    for (size_t i = 0; i < count; i++) {
        ing->out[i].vin = tly_latest_vin(ing->latest, i);
        if (!(ing->out[i].json = tly_latest_record(ing->latest, i, produced_at, &ing->out[i].len)))
            return tly_error(err, errlen, "out of memory");
    }
    for (int attempt = 1;; attempt++) {
        if (!ing->rk && open_producer(ing, err, errlen) < 0)
            undelivered = -1;
        else
            undelivered = send_pending(ing, err, errlen);
        if (undelivered == 0) {
            *messages = (int64_t)count;
            return 0;
        }
        if (ing->fatal)
            close_producer(ing);
        if ((rc = wait_to_retry(ing, "produce", NULL, from_ms, to_ms, attempt, err)) != 0)
            return rc;
    }
}

/* -------------------------------------------------------------------- cycle --- */

/* Reads [from_ms, to_ms) chunk by chunk and pod by pod, and produces the
 * latest record of each VIN. Returns 0 when the broker has all of them,
 * TLY_INFLUX_CANCELLED on a stop, -1 with err when the cycle is given up. */
static int run_cycle(tly_influx_ingest *ing, int64_t from_ms, int64_t to_ms, int64_t behind_ms,
                     char *err, size_t errlen)
{
    const tly_influx_ingest_config *cfg = &ing->cfg;
    int64_t started = tly_clock_mono_ms(), read_ms, messages = 0, chunks = 0;
    int rc = 0;

    tly_latest_clear(ing->latest);
    ing->readings = ing->skipped = ing->queries = 0;
    for (int64_t chunk_from = from_ms; rc == 0 && chunk_from < to_ms; chunk_from += cfg->chunk_ms) {
        int64_t chunk_to = to_ms - chunk_from > cfg->chunk_ms ? chunk_from + cfg->chunk_ms : to_ms;
        chunks++;
        for (size_t p = 0; rc == 0 && p < cfg->pod_count; p++) {
            rc = read_range(ing, cfg->pods[p], chunk_from, chunk_to, err, errlen);
            if (rc == -1) {
                /* Say which piece failed; the whole cycle is given up. */
                char reason[1024];
                snprintf(reason, sizeof(reason), "%s", err);
                snprintf(err, errlen, "pod %.200s [%" PRId64 ", %" PRId64 "): %.700s", cfg->pods[p],
                         chunk_from, chunk_to, reason);
            }
        }
    }
    read_ms = tly_clock_mono_ms() - started;
    if (rc == 0)
        rc = produce_cycle(ing, from_ms, to_ms, &messages, err, errlen);
    free_outgoing(ing);
    if (rc != 0)
        return rc;
    tly_log("info", "ingest_cycle",
            "from_ms=%" PRId64 " to_ms=%" PRId64 " pods=%zu chunks=%" PRId64 " queries=%" PRId64
            " readings=%" PRId64 " skipped=%" PRId64 " vins=%zu messages=%" PRId64
            " read_ms=%" PRId64 " duration_ms=%" PRId64 " behind_ms=%" PRId64,
            from_ms, to_ms, cfg->pod_count, chunks, ing->queries, ing->readings, ing->skipped,
            tly_latest_count(ing->latest), messages, read_ms, tly_clock_mono_ms() - started,
            behind_ms);
    return 0;
}

int tly_influx_ingest_next_range(int64_t from_ms, int64_t now_ms, int64_t settle_ms,
                                 int64_t max_span_ms, int64_t *to_ms, int64_t *end_ms)
{
    *end_ms = now_ms - settle_ms;
    *to_ms = *end_ms - from_ms > max_span_ms ? from_ms + max_span_ms : *end_ms;
    return *to_ms > from_ms;
}

/* --------------------------------------------------------------- lifetime --- */

/* The InfluxDB side: statements, client, checkpoint, the latest set. */
static int open_source(tly_influx_ingest *ing, char *errbuf, size_t errlen)
{
    const tly_influx_ingest_config *cfg = &ing->cfg;
    char statement[STATEMENT_MAX];
    int rc;

    /* A pod whose statement cannot fit fails now, not in every cycle. */
    for (size_t p = 0; p < cfg->pod_count; p++)
        if (tly_influx_build_select(&cfg->model, cfg->pods[p], 0, 1, statement, sizeof(statement),
                                    errbuf, errlen) < 0)
            return TLY_INFLUX_INGEST_BAD_CONFIG;
    if (tly_influx_open(&cfg->influx, &ing->influx, errbuf, errlen) < 0)
        return TLY_INFLUX_INGEST_BAD_CONFIG;
    tly_influx_set_cancel(ing->influx, cfg->stop);
    if (cfg->checkpoint_path) {
        rc = tly_checkpoint_read(cfg->checkpoint_path, &ing->checkpoint_ms, errbuf, errlen);
        if (rc < 0)
            return -1;
        ing->resumed = rc == 1;
    }
    if (!(ing->latest = tly_latest_new()))
        return tly_error(errbuf, errlen, "out of memory");
    return 0;
}

/* The Kafka side: settings that cannot work end the start; a broker that is
 * down does not (producing retries, and says so). */
static int open_sink(tly_influx_ingest *ing, char *errbuf, size_t errlen)
{
    const tly_influx_ingest_config *cfg = &ing->cfg;
    char quoted[1100];

    switch (tly_kconf_check_cluster(cfg->brokers, (int)cfg->delivery_timeout_ms, errbuf, errlen)) {
    case -1: return -1;
    case -2:
        tly_log("warn", "kafka", "error=%s", tly_log_quote(errbuf, quoted, sizeof(quoted)));
        break;
    }
    if (open_producer(ing, errbuf, errlen) < 0)
        return -1;
    switch (tly_kconf_topic_exists(ing->rk, ing->cfg.brokers, ing->cfg.topic, METADATA_TIMEOUT_MS,
                                   errbuf, errlen)) {
    case -1: /* the broker may come back: producing retries, and says so */
        tly_log("warn", "kafka", "error=%s", tly_log_quote(errbuf, quoted, sizeof(quoted)));
        break;
    case 0:
        tly_error(errbuf, errlen, "topic %s does not exist on %s", cfg->topic, cfg->brokers);
        return TLY_INFLUX_INGEST_NO_TOPIC;
    }
    return 0;
}

int tly_influx_ingest_open(const tly_influx_ingest_config *config, tly_influx_ingest **ingest,
                           char *errbuf, size_t errlen)
{
    tly_influx_ingest *ing = calloc(1, sizeof(*ing));
    int rc;

    *ingest = NULL;
    if (!ing)
        return tly_error(errbuf, errlen, "out of memory");
    ing->cfg = *config;
    if ((rc = open_source(ing, errbuf, errlen)) == 0 &&
        (rc = open_sink(ing, errbuf, errlen)) == 0) {
        *ingest = ing;
        return 0;
    }
    tly_influx_ingest_free(ing);
    return rc;
}

void tly_influx_ingest_free(tly_influx_ingest *ing)
{
    if (!ing)
        return;
    close_producer(ing);
    free_outgoing(ing);
    tly_latest_free(ing->latest);
    tly_influx_close(ing->influx);
    free(ing);
}

/* --------------------------------------------------------------------- run --- */

static void log_started(const tly_influx_ingest *ing, int64_t from_ms)
{
    const tly_influx_ingest_config *cfg = &ing->cfg;
    char quoted_url[1100], quoted_db[300], quoted_measurement[600], quoted_path[4200];

    tly_log("info", "started",
            "source=influxdb url=%s database=%s measurement=%s pods=%zu topic=%s from_ms=%" PRId64
            " resumed=%s checkpoint=%s",
            tly_log_quote(cfg->influx.url, quoted_url, sizeof(quoted_url)),
            tly_log_quote(cfg->influx.database, quoted_db, sizeof(quoted_db)),
            tly_log_quote(cfg->model.measurement, quoted_measurement, sizeof(quoted_measurement)),
            cfg->pod_count, cfg->topic, from_ms, ing->resumed ? "true" : "false",
            cfg->checkpoint_path
                ? tly_log_quote(cfg->checkpoint_path, quoted_path, sizeof(quoted_path))
                : "none");
}

int tly_influx_ingest_run(tly_influx_ingest *ing)
{
    const tly_influx_ingest_config *cfg = &ing->cfg;
    int64_t from_ms, to_ms, end_ms, next_cycle_ms;
    char err[1024], quoted[1100];
    int rc, status = 0;

    from_ms = ing->resumed ? ing->checkpoint_ms : tly_clock_wall_ms() - cfg->lookback_ms;
    log_started(ing, from_ms);
    next_cycle_ms = tly_clock_mono_ms();
    while (!*cfg->stop) {
        if (next_cycle_ms > tly_clock_mono_ms() &&
            sleep_ms(ing, next_cycle_ms - tly_clock_mono_ms()))
            break;
        next_cycle_ms = tly_clock_mono_ms() + cfg->interval_ms;
        if (!tly_influx_ingest_next_range(from_ms, tly_clock_wall_ms(), cfg->settle_ms,
                                          cfg->max_span_ms, &to_ms, &end_ms)) {
            if (cfg->once)
                break;
            continue; /* nothing new yet (a clock that stepped back, or the settle time) */
        }
        rc = run_cycle(ing, from_ms, to_ms, end_ms - to_ms, err, sizeof(err));
        if (rc == TLY_INFLUX_CANCELLED)
            break;
        if (rc < 0) {
            tly_log("error", "ingest_error",
                    "from_ms=%" PRId64 " to_ms=%" PRId64 " attempts=%" PRId64 " reason=%s", from_ms,
                    to_ms, cfg->retry_attempts, tly_log_quote(err, quoted, sizeof(quoted)));
            if (cfg->once) {
                status = -1;
                break;
            }
            continue;
        }
        from_ms = to_ms;
        /* The records are acknowledged; a checkpoint that cannot be written
         * costs a repeat after a restart, not a gap: go on and say so. */
        if (cfg->checkpoint_path &&
            tly_checkpoint_write(cfg->checkpoint_path, to_ms, err, sizeof(err)) < 0)
            tly_log("error", "ingest_error", "checkpoint_ms=%" PRId64 " reason=%s", to_ms,
                    tly_log_quote(err, quoted, sizeof(quoted)));
        if (to_ms < end_ms)
            next_cycle_ms = tly_clock_mono_ms(); /* behind: the next range at once */
        else if (cfg->once)
            break;
    }
    tly_log("info", "shutdown", "checkpoint_ms=%" PRId64 " reason=%s", from_ms,
            *cfg->stop    ? "signal"
            : status == 0 ? "caught_up"
                          : "error");
    return status;
}
