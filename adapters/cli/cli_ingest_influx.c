/* adapters/cli/cli_ingest_influx.c - tally ingest influxdb: telemetry from
 * InfluxDB into Kafka, as the latest values per vehicle.
 *
 * A cycle reads one time range [from, to): for every chunk of it and every
 * pod, one InfluxQL statement (adapters/influx/influxql.h has the data model); the
 * readings are folded into the latest value per (VIN, sensor)
 * (adapters/influx/latest.h), and one record per VIN is produced, keyed by VIN,
 * through an idempotent producer. The cycle is done only when the broker has
 * acknowledged every record; only then does `from` move to `to`, and the
 * checkpoint file (adapters/influx/checkpoint.h) records it. So nothing is skipped:
 *
 *   - a failed query or produce is retried with exponential backoff; after
 *     the last attempt the cycle is abandoned (event=ingest_error) and the
 *     next cycle reads the same range again, extended to the new now;
 *   - a restart resumes from the checkpoint; records of a cycle that was
 *     produced but not yet checkpointed are produced again (at least once:
 *     the output is keyed by VIN and compacted, and the telemetry pipeline
 *     keeps the newest reading, so a repeat changes nothing);
 *   - behind (after an outage, or a checkpoint from long ago), cycles of at
 *     most --max-cycle-span follow one another without waiting until the
 *     range reaches now again.
 *
 * A range ends --settle before now, so points that are still on their way
 * (stamped by the device a moment before InfluxDB stores them) are not
 * passed over. */
#include "cli_common.h"
#include "clock.h"
#include "commands.h"

#include "checkpoint.h"
#include "error.h"
#include "influx.h"
#include "influxql.h"
#include "kconf.h"
#include "latest.h"
#include "log.h"
#include "resource_map.h"

#include <getopt.h>
#include <inttypes.h>
#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DEFAULT_URL "http://127.0.0.1:8086"
#define DEFAULT_TOPIC "sensor-service.dispatch.telemetry-aggregated"
#define STATEMENT_MAX 4096
#define METADATA_TIMEOUT_MS 10000
#define MAX_PODS 10000

static const char ingest_influx_usage[] =
    "usage: tally ingest influxdb --database DB (--pods A,B,... | --resource-map FILE)\n"
    "                             [--brokers B] [OPTIONS]\n"
    "\n"
    "Every --interval, reads the readings of each pod from InfluxDB (InfluxQL over HTTP:\n"
    "1.x, or the v1 API of 2.x), keeps the newest value of every sensor of every vehicle\n"
    "and produces one record per VIN, keyed by VIN, to Kafka:\n"
    "  {\"data\":{\"id\":VIN,<sensor>:<value>,...},\"received_at\":<newest reading ms>,\n"
    "   \"produced_at\":<ms>}\n"
    "InfluxDB data model: measurement --measurement, tags --pod-tag (the pod) and\n"
    "--device-tag (the VIN, or a device id the resource map translates), one field per\n"
    "sensor: telemetry,pod=a,vin=WVW123 speed=12.5,rpm=3000i 1732170000000\n"
    "\n"
    "InfluxDB:\n"
    "  --url URL                   http://HOST:PORT[/PATH] (default " DEFAULT_URL ")\n"
    "  --database DB               database (2.x: one mapped to the bucket)\n"
    "  --retention-policy RP       (default: the database's default)\n"
    "  --username U, --password P  HTTP Basic auth (default: $INFLUX_USERNAME,\n"
    "                              $INFLUX_PASSWORD)\n"
    "  --token T                   sent as \"Authorization: Token T\" (default:\n"
    "                              $INFLUX_TOKEN); not with --username\n"
    "  --timeout DUR               per HTTP request (default 30s)\n"
    "  --measurement M             (default telemetry)\n"
    "  --pod-tag NAME              (default pod)\n"
    "  --device-tag NAME           (default vin; device with --resource-map)\n"
    "  --pods A,B,...              the pods to read (default: those of --resource-map)\n"
    "  --resource-map FILE         lines \"POD DEVICE VIN\": the VIN of each device\n"
    "\n"
    "Time:\n"
    "  --interval DUR              time between cycles (default 10s)\n"
    "  --lookback DUR              without a checkpoint, start this long before now\n"
    "                              (default 10s)\n"
    "  --chunk DUR                 one query reads this much of a pod (default 2s)\n"
    "  --settle DUR                ranges end this long before now, for points still on\n"
    "                              their way to InfluxDB (default 1s)\n"
    "  --max-cycle-span DUR        longest range of one cycle when catching up\n"
    "                              (default 60s)\n"
    "  --checkpoint-path FILE      the end of the last delivered range, kept durably;\n"
    "                              a restart resumes there (default: none)\n"
    "  --once                      run cycles until caught up with now, then exit\n"
    "\n"
    "Kafka:\n"
    "  --brokers B                 bootstrap servers (default: $KAFKA_BROKERS)\n"
    CLI_KAFKA_USAGE
    "  --output-topic T            (default " DEFAULT_TOPIC ")\n"
    "  --delivery-timeout DUR      a record not acknowledged by then failed, and the\n"
    "                              cycle's produce is retried (default 30s)\n"
    "\n"
    "Retries (a query, or a cycle's produce):\n"
    "  --retry-max-attempts N      (default 5)\n"
    "  --retry-initial-interval DUR  first wait, doubled after each failure (default 1s)\n"
    "  --retry-max-interval DUR    longest wait (default 30s)\n"
    "After the last attempt the cycle is given up (event=ingest_error) and its range is\n"
    "read again by the next cycle: nothing is skipped. SIGINT/SIGTERM abandon a cycle\n"
    "that is reading, or let one that is producing finish (--delivery-timeout at\n"
    "most); the checkpoint never moves past what the broker acknowledged. Exit status 0 after a "
    "signal (or with --once,\n"
    "when caught up), 1 on an error that stops it (a missing topic, an unreadable\n"
    "checkpoint; with --once, a failed cycle), 2 on a bad option.\n";

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

struct options {
    tly_influx_options influx;
    tly_influx_model model;
    const char *brokers, *topic, *checkpoint_path, *pods_arg, *map_path;
    int64_t interval_ms, lookback_ms, chunk_ms, settle_ms, max_span_ms, timeout_ms;
    int64_t delivery_timeout_ms; /* message.timeout.ms: one record's whole delivery */
    int64_t retry_attempts, retry_initial_ms, retry_max_ms;
    int once;
};

/* One record of the cycle being produced. */
struct outgoing {
    char *json;
    size_t len;
    const char *vin; /* borrowed from the latest set */
    int delivered;
};

struct ingest {
    struct options o;
    tly_influx *influx;
    tly_influx_map *map;
    tly_latest *latest;
    char **pods;
    size_t pod_count;
    rd_kafka_t *rk;
    rd_kafka_topic_t *rkt;
    int fatal; /* the producer hit a fatal error: make a new one */
    /* The cycle's records and their delivery reports. */
    struct outgoing *out;
    size_t out_count;
    int64_t delivery_failures;
    char delivery_error[256];
    /* The query being parsed: its pod, a one-entry device -> VIN cache
     * (readings of a series share one device string) and its counts, added
     * to the cycle's only when the whole answer was read. */
    const char *pod, *cached_device, *cached_vin;
    int64_t query_readings, query_skipped;
    /* The cycle's counts. */
    int64_t readings, skipped, queries;
};

/* ------------------------------------------------------------------ time --- */

/* Sleeps ms milliseconds or until a signal. Returns 1 if a stop was asked. */
static int sleep_ms(int64_t ms)
{
    int64_t deadline = tly_clock_mono_ms() + ms;
    while (!stop_requested) {
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
    return stop_requested != 0;
}

static void log_retry(const char *stage, const char *pod, int64_t from_ms, int64_t to_ms,
                      int attempt, int max_attempts, int64_t delay_ms, const char *reason)
{
    char quoted_reason[700], quoted_pod[300];
    tly_log("warn", "ingest_retry",
            "stage=%s%s%s from_ms=%" PRId64 " to_ms=%" PRId64
            " attempt=%d max_attempts=%d delay_ms=%" PRId64 " reason=%s",
            stage, pod ? " pod=" : "",
            pod ? tly_log_quote(pod, quoted_pod, sizeof(quoted_pod)) : "", from_ms, to_ms, attempt,
            max_attempts, delay_ms, tly_log_quote(reason, quoted_reason, sizeof(quoted_reason)));
}

/* ----------------------------------------------------------------- reading --- */

static int on_reading(void *opaque, const char *device, const char *sensor, int64_t time_ms,
                      json_object *value, char *errbuf, size_t errlen)
{
    struct ingest *in = opaque;
    const char *vin;

    if (device == in->cached_device) {
        vin = in->cached_vin;
    } else {
        vin = in->map ? tly_influx_map_vin(in->map, in->pod, device) : device;
        in->cached_device = device;
        in->cached_vin = vin;
    }
    /* No VIN tag, or a device the map does not list: nothing to key it by. */
    if (!vin || !*vin) {
        in->query_skipped++;
        return 0;
    }
    if (tly_latest_add(in->latest, vin, sensor, time_ms, value) < 0)
        return tly_error(errbuf, errlen, "out of memory");
    in->query_readings++;
    return 0;
}

/* Reads one pod's [from_ms, to_ms) into in->latest, retrying with backoff.
 * Returns 0, TLY_INFLUX_CANCELLED on a stop, or -1 with err after the last
 * attempt. */
static int read_range(struct ingest *in, const char *pod, int64_t from_ms, int64_t to_ms, char *err,
                      size_t errlen)
{
    char statement[STATEMENT_MAX];
    const char *body;
    size_t len;
    int rc;

    if (tly_influx_build_select(&in->o.model, pod, from_ms, to_ms, statement, sizeof(statement),
                                err, errlen) < 0)
        return -1;
    for (int attempt = 1;; attempt++) {
        in->pod = pod;
        in->cached_device = NULL;
        in->query_readings = in->query_skipped = 0;
        in->queries++;
        rc = tly_influx_query(in->influx, statement, &body, &len, err, errlen);
        if (rc == 0)
            rc = tly_influx_parse(body, len, in->o.model.device_tag, on_reading, in, err, errlen);
        /* The answer is gone with the next query: no reference into it stays. */
        in->cached_device = NULL;
        if (rc == 0) {
            in->readings += in->query_readings;
            in->skipped += in->query_skipped;
            return 0;
        }
        if (rc == TLY_INFLUX_CANCELLED || stop_requested)
            return TLY_INFLUX_CANCELLED;
        if (attempt >= in->o.retry_attempts)
            return -1;
        {
            int64_t delay =
                tly_influx_backoff_ms(attempt, in->o.retry_initial_ms, in->o.retry_max_ms);
            log_retry("query", pod, from_ms, to_ms, attempt, (int)in->o.retry_attempts, delay, err);
            if (sleep_ms(delay))
                return TLY_INFLUX_CANCELLED;
        }
    }
}

/* ---------------------------------------------------------------- producing --- */

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque)
{
    struct ingest *in = opaque;
    struct outgoing *record = msg->_private;
    (void)rk;
    if (msg->err) {
        if (in->delivery_failures++ == 0)
            snprintf(in->delivery_error, sizeof(in->delivery_error), "%s",
                     rd_kafka_err2str(msg->err));
        return;
    }
    record->delivered = 1;
}

static void on_kafka_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    struct ingest *in = opaque;
    char quoted[600], fatal_reason[512];
    /* An idempotent producer after a fatal error (a sequence gap, say) cannot
     * go on without risking duplicates or reordering: it is replaced. */
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        rd_kafka_fatal_error(rk, fatal_reason, sizeof(fatal_reason));
        in->fatal = 1;
        reason = fatal_reason;
    }
    tly_log(in->fatal ? "error" : "warn", "kafka", "error=%s",
            tly_log_quote(reason, quoted, sizeof(quoted)));
}

/* librdkafka's own log lines repeat what on_kafka_error reports. */
static void drop_log(const rd_kafka_t *rk, int level, const char *facility, const char *message)
{
    (void)rk;
    (void)level;
    (void)facility;
    (void)message;
}

static void close_producer(struct ingest *in)
{
    if (in->rkt)
        rd_kafka_topic_destroy(in->rkt);
    if (in->rk)
        rd_kafka_destroy(in->rk);
    in->rkt = NULL;
    in->rk = NULL;
    in->fatal = 0;
}

static int open_producer(struct ingest *in, char *err, size_t errlen)
{
    char timeout[32];
    rd_kafka_conf_t *conf;

    snprintf(timeout, sizeof(timeout), "%" PRId64, in->o.delivery_timeout_ms);
    {
        /* murmur2_random: the same key -> partition mapping as the Java
         * producer, so a VIN lands where the upstream services put it. */
        const char *const defaults[] = {"client.id", "tally-ingest-influxdb", "linger.ms", "5",
                                        "message.timeout.ms", timeout,
                                        "partitioner", "murmur2_random", NULL};
        static const char *const required[] = {"enable.idempotence", "true", NULL};
        if (!(conf = tly_kconf_new(in->o.brokers, defaults, required, err, errlen)))
            return -1;
    }
    rd_kafka_conf_set_opaque(conf, in);
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rd_kafka_conf_set_error_cb(conf, on_kafka_error);
    rd_kafka_conf_set_log_cb(conf, drop_log);
    if (!(in->rk = tly_kconf_client(RD_KAFKA_PRODUCER, conf, "the producer", err, errlen)))
        return -1;
    if (!(in->rkt = rd_kafka_topic_new(in->rk, in->o.topic, NULL))) {
        snprintf(err, errlen, "topic %s: %s", in->o.topic, rd_kafka_err2str(rd_kafka_last_error()));
        close_producer(in);
        return -1;
    }
    return 0;
}

/* Returns 1 if the topic exists, 0 if not, -1 when the broker cannot say. */
static int topic_exists(struct ingest *in, char *err, size_t errlen)
{
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t kerr;
    int found = 0;

    /* All topics: asking for this one by name could make a broker with
     * auto.create.topics.enable create it with the wrong settings. */
    if ((kerr = rd_kafka_metadata(in->rk, 1, NULL, &md, METADATA_TIMEOUT_MS))) {
        snprintf(err, errlen, "cannot read the topic list from %s: %s", in->o.brokers,
                 rd_kafka_err2str(kerr));
        return -1;
    }
    for (int i = 0; i < md->topic_cnt; i++)
        if (strcmp(md->topics[i].topic, in->o.topic) == 0 &&
            md->topics[i].err != RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
            found = 1;
    rd_kafka_metadata_destroy(md);
    return found;
}

static void free_outgoing(struct ingest *in)
{
    for (size_t i = 0; i < in->out_count; i++)
        free(in->out[i].json);
    free(in->out);
    in->out = NULL;
    in->out_count = 0;
}

/* Queues every record not yet delivered and waits for all delivery reports.
 * Returns the number still undelivered (0: all acknowledged), or -1 with err
 * when a record cannot even be queued. */
static int64_t send_pending(struct ingest *in, char *err, size_t errlen)
{
    int64_t undelivered = 0;
    rd_kafka_resp_err_t kerr;

    in->delivery_failures = 0;
    in->delivery_error[0] = '\0';
    for (size_t i = 0; i < in->out_count; i++) {
        struct outgoing *r = &in->out[i];
        if (r->delivered)
            continue;
        for (;;) {
            /* F_COPY: a failed record may be sent again by the next attempt
             * while librdkafka still holds this one. */
            kerr = rd_kafka_producev(
                in->rk, RD_KAFKA_V_RKT(in->rkt), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                RD_KAFKA_V_KEY(r->vin, strlen(r->vin)), RD_KAFKA_V_VALUE(r->json, r->len),
                RD_KAFKA_V_OPAQUE(r), RD_KAFKA_V_END);
            if (kerr != RD_KAFKA_RESP_ERR__QUEUE_FULL)
                break;
            rd_kafka_poll(in->rk, 100); /* the local queue is full: let deliveries drain it */
        }
        if (kerr) {
            snprintf(err, errlen, "cannot queue a record for %s: %s", in->o.topic,
                     rd_kafka_err2str(kerr));
            rd_kafka_flush(in->rk, (int)in->o.delivery_timeout_ms); /* those queued already */
            return -1;
        }
    }
    /* message.timeout.ms bounds this: every record gets its report by then.
     * A stop request does not cut it short, so a record is never left
     * undecided (the checkpoint could not tell). */
    while (rd_kafka_outq_len(in->rk) > 0 && !in->fatal)
        rd_kafka_flush(in->rk, 100);
    if (in->fatal) {
        rd_kafka_purge(in->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
        rd_kafka_poll(in->rk, 0);
    }
    for (size_t i = 0; i < in->out_count; i++)
        undelivered += !in->out[i].delivered;
    if (undelivered)
        snprintf(err, errlen, "%" PRId64 " of %zu record(s) not delivered: %s", undelivered,
                 in->out_count,
                 in->fatal               ? "fatal producer error"
                 : in->delivery_error[0] ? in->delivery_error
                                         : "no delivery report");
    return undelivered;
}

/* Produces the records of in->latest and waits until the broker has every
 * one, retrying what failed with backoff. Returns 0, TLY_INFLUX_CANCELLED on a
 * stop between attempts, or -1 with err after the last attempt. */
static int produce_cycle(struct ingest *in, int64_t from_ms, int64_t to_ms, int64_t *messages,
                         char *err, size_t errlen)
{
    size_t count = tly_latest_count(in->latest);
    int64_t produced_at = tly_clock_wall_ms(), undelivered;

    *messages = 0;
    if (count == 0)
        return 0;
    if (!(in->out = calloc(count, sizeof(*in->out))))
        return tly_error(err, errlen, "out of memory");
    in->out_count = count;
    for (size_t i = 0; i < count; i++) {
        in->out[i].vin = tly_latest_vin(in->latest, i);
        if (!(in->out[i].json = tly_latest_record(in->latest, i, produced_at, &in->out[i].len)))
            return tly_error(err, errlen, "out of memory");
    }
    for (int attempt = 1;; attempt++) {
        if (!in->rk && open_producer(in, err, errlen) < 0)
            undelivered = -1;
        else
            undelivered = send_pending(in, err, errlen);
        if (undelivered == 0) {
            *messages = (int64_t)count;
            return 0;
        }
        if (in->fatal)
            close_producer(in);
        if (attempt >= in->o.retry_attempts)
            return -1;
        {
            int64_t delay =
                tly_influx_backoff_ms(attempt, in->o.retry_initial_ms, in->o.retry_max_ms);
            log_retry("produce", NULL, from_ms, to_ms, attempt, (int)in->o.retry_attempts, delay,
                      err);
            if (sleep_ms(delay))
                return TLY_INFLUX_CANCELLED;
        }
    }
}

/* -------------------------------------------------------------------- cycle --- */

/* Reads [from_ms, to_ms) chunk by chunk and pod by pod, and produces the
 * latest record of each VIN. Returns 0 when the broker has all of them,
 * TLY_INFLUX_CANCELLED on a stop, -1 with err when the cycle is given up. */
static int run_cycle(struct ingest *in, int64_t from_ms, int64_t to_ms, int64_t behind_ms,
                     char *err, size_t errlen)
{
    int64_t started = tly_clock_mono_ms(), read_ms, messages = 0, chunks = 0;
    int rc = 0;

    tly_latest_clear(in->latest);
    in->readings = in->skipped = in->queries = 0;
    for (int64_t chunk_from = from_ms; rc == 0 && chunk_from < to_ms;
         chunk_from += in->o.chunk_ms) {
        int64_t chunk_to =
            to_ms - chunk_from > in->o.chunk_ms ? chunk_from + in->o.chunk_ms : to_ms;
        chunks++;
        for (size_t p = 0; rc == 0 && p < in->pod_count; p++) {
            rc = read_range(in, in->pods[p], chunk_from, chunk_to, err, errlen);
            if (rc == -1) {
                /* Say which piece failed; the whole cycle is given up. */
                char reason[1024];
                snprintf(reason, sizeof(reason), "%s", err);
                snprintf(err, errlen, "pod %.200s [%" PRId64 ", %" PRId64 "): %.700s", in->pods[p],
                         chunk_from, chunk_to, reason);
            }
        }
    }
    read_ms = tly_clock_mono_ms() - started;
    if (rc == 0)
        rc = produce_cycle(in, from_ms, to_ms, &messages, err, errlen);
    free_outgoing(in);
    if (rc != 0)
        return rc;
    tly_log("info", "ingest_cycle",
            "from_ms=%" PRId64 " to_ms=%" PRId64 " pods=%zu chunks=%" PRId64 " queries=%" PRId64
            " readings=%" PRId64 " skipped=%" PRId64 " vins=%zu messages=%" PRId64
            " read_ms=%" PRId64 " duration_ms=%" PRId64 " behind_ms=%" PRId64,
            from_ms, to_ms, in->pod_count, chunks, in->queries, in->readings, in->skipped,
            tly_latest_count(in->latest), messages, read_ms, tly_clock_mono_ms() - started, behind_ms);
    return 0;
}

/* ------------------------------------------------------------------ options --- */

/* Splits "a,b,c" into in->pods. Returns 0, or -1 after a usage message. */
static int split_pods(struct ingest *in, const char *list)
{
    char *copy = strdup(list), *save = NULL;
    int rc = -1;
    if (!copy)
        return -1;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ')
            tok++;
        for (char *end = tok + strlen(tok); end > tok && end[-1] == ' ';)
            *--end = '\0';
        if (!*tok)
            continue;
        for (size_t i = 0; i < in->pod_count; i++)
            if (strcmp(in->pods[i], tok) == 0) {
                cli_usage_error("ingest influxdb", "--pods lists \"%s\" twice", tok);
                goto done;
            }
        if (in->pod_count == MAX_PODS) {
            cli_usage_error("ingest influxdb", "--pods: at most %d pods", MAX_PODS);
            goto done;
        }
        {
            char **grown = realloc(in->pods, (in->pod_count + 1) * sizeof(*grown));
            if (!grown) {
                fprintf(stderr, "tally ingest influxdb: out of memory\n");
                goto done;
            }
            in->pods = grown;
            if (!(in->pods[in->pod_count] = strdup(tok))) {
                fprintf(stderr, "tally ingest influxdb: out of memory\n");
                goto done;
            }
            in->pod_count++;
        }
    }
    if (in->pod_count == 0) {
        cli_usage_error("ingest influxdb",
                        "--pods names no pod (give a comma-separated list: --pods a,b,c)");
        goto done;
    }
    rc = 0;
done:
    free(copy);
    return rc;
}

static int parse_duration(const char *flag, const char *value, int64_t min_ms, int64_t *out)
{
    if (cli_parse_duration_ms("ingest influxdb", flag, value, out) < 0)
        return -1;
    if (*out < min_ms) {
        cli_usage_error("ingest influxdb", "%s must be at least %" PRId64 "ms, not \"%s\"", flag,
                        min_ms, value);
        return -1;
    }
    return 0;
}

static const char *env_or_null(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

/* Parses argv into in->o. Returns -1 to go on, or the exit status. */
static int parse_options(struct ingest *in, int argc, char **argv)
{
    enum {
        OPT_URL = 256,
        OPT_DATABASE,
        OPT_RP,
        OPT_USERNAME,
        OPT_PASSWORD,
        OPT_TOKEN,
        OPT_TIMEOUT,
        OPT_MEASUREMENT,
        OPT_POD_TAG,
        OPT_DEVICE_TAG,
        OPT_PODS,
        OPT_MAP,
        OPT_INTERVAL,
        OPT_LOOKBACK,
        OPT_CHUNK,
        OPT_SETTLE,
        OPT_MAX_SPAN,
        OPT_CHECKPOINT,
        OPT_ONCE,
        OPT_BROKERS,
        OPT_TOPIC,
        OPT_ATTEMPTS,
        OPT_INITIAL,
        OPT_MAX_INTERVAL,
        OPT_DELIVERY_TIMEOUT,
    };
    static const struct option options[] = {
        {"url", required_argument, NULL, OPT_URL},
        {"database", required_argument, NULL, OPT_DATABASE},
        {"retention-policy", required_argument, NULL, OPT_RP},
        {"username", required_argument, NULL, OPT_USERNAME},
        {"password", required_argument, NULL, OPT_PASSWORD},
        {"token", required_argument, NULL, OPT_TOKEN},
        {"timeout", required_argument, NULL, OPT_TIMEOUT},
        {"measurement", required_argument, NULL, OPT_MEASUREMENT},
        {"pod-tag", required_argument, NULL, OPT_POD_TAG},
        {"device-tag", required_argument, NULL, OPT_DEVICE_TAG},
        {"pods", required_argument, NULL, OPT_PODS},
        {"resource-map", required_argument, NULL, OPT_MAP},
        {"interval", required_argument, NULL, OPT_INTERVAL},
        {"lookback", required_argument, NULL, OPT_LOOKBACK},
        {"chunk", required_argument, NULL, OPT_CHUNK},
        {"settle", required_argument, NULL, OPT_SETTLE},
        {"max-cycle-span", required_argument, NULL, OPT_MAX_SPAN},
        {"checkpoint-path", required_argument, NULL, OPT_CHECKPOINT},
        {"once", no_argument, NULL, OPT_ONCE},
        {"brokers", required_argument, NULL, OPT_BROKERS},
        {"output-topic", required_argument, NULL, OPT_TOPIC},
        {"delivery-timeout", required_argument, NULL, OPT_DELIVERY_TIMEOUT},
        {"retry-max-attempts", required_argument, NULL, OPT_ATTEMPTS},
        {"retry-initial-interval", required_argument, NULL, OPT_INITIAL},
        {"retry-max-interval", required_argument, NULL, OPT_MAX_INTERVAL},
        CLI_KAFKA_OPTION,
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    static const char cmd[] = "ingest influxdb";
    struct options *o = &in->o;
    const char *username = NULL, *password = NULL, *token = NULL;
    int opt;

    o->influx.url = DEFAULT_URL;
    o->influx.username = env_or_null("INFLUX_USERNAME");
    o->influx.password = env_or_null("INFLUX_PASSWORD");
    o->influx.token = env_or_null("INFLUX_TOKEN");
    o->model.measurement = "telemetry";
    o->model.pod_tag = "pod";
    o->brokers = NULL; /* cli_kafka_settings */
    o->topic = DEFAULT_TOPIC;
    o->interval_ms = 10000;
    o->lookback_ms = 10000;
    o->chunk_ms = 2000;
    o->settle_ms = 1000;
    o->max_span_ms = 60000;
    o->timeout_ms = 30000;
    o->delivery_timeout_ms = 30000;
    o->retry_attempts = 5;
    o->retry_initial_ms = 1000;
    o->retry_max_ms = 30000;

    opterr = 0;
    optind = 1;
    while ((opt = getopt_long(argc, argv, ":hX:", options, NULL)) != -1) {
        switch (opt) {
        case OPT_URL: o->influx.url = optarg; break;
        case 'X':
        case CLI_OPT_KAFKA_CONFIG:
            if (cli_kafka_option(cmd, opt, optarg) != 0)
                return CLI_EXIT_USAGE;
            break;
        case OPT_DATABASE: o->influx.database = optarg; break;
        case OPT_RP: o->influx.retention_policy = optarg; break;
        case OPT_USERNAME: username = optarg; break;
        case OPT_PASSWORD: password = optarg; break;
        case OPT_TOKEN: token = optarg; break;
        case OPT_MEASUREMENT: o->model.measurement = optarg; break;
        case OPT_POD_TAG: o->model.pod_tag = optarg; break;
        case OPT_DEVICE_TAG: o->model.device_tag = optarg; break;
        case OPT_PODS: o->pods_arg = optarg; break;
        case OPT_MAP: o->map_path = optarg; break;
        case OPT_CHECKPOINT: o->checkpoint_path = optarg; break;
        case OPT_ONCE: o->once = 1; break;
        case OPT_BROKERS: o->brokers = optarg; break;
        case OPT_TOPIC: o->topic = optarg; break;
        case OPT_TIMEOUT:
            if (parse_duration("--timeout", optarg, 1, &o->timeout_ms) < 0)
                return CLI_EXIT_USAGE;
            if (o->timeout_ms > 3600000)
                return cli_usage_error(cmd, "--timeout must be at most 1h");
            break;
        case OPT_DELIVERY_TIMEOUT:
            if (parse_duration("--delivery-timeout", optarg, 100, &o->delivery_timeout_ms) < 0)
                return CLI_EXIT_USAGE;
            if (o->delivery_timeout_ms > 3600000)
                return cli_usage_error(cmd, "--delivery-timeout must be at most 1h");
            break;
        case OPT_INTERVAL:
            if (parse_duration("--interval", optarg, 10, &o->interval_ms) < 0)
                return CLI_EXIT_USAGE;
            break;
        case OPT_LOOKBACK:
            if (parse_duration("--lookback", optarg, 1, &o->lookback_ms) < 0)
                return CLI_EXIT_USAGE;
            break;
        case OPT_CHUNK:
            if (parse_duration("--chunk", optarg, 1, &o->chunk_ms) < 0)
                return CLI_EXIT_USAGE;
            break;
        case OPT_SETTLE:
            if (parse_duration("--settle", optarg, 0, &o->settle_ms) < 0)
                return CLI_EXIT_USAGE;
            break;
        case OPT_MAX_SPAN:
            if (parse_duration("--max-cycle-span", optarg, 1, &o->max_span_ms) < 0)
                return CLI_EXIT_USAGE;
            break;
        case OPT_ATTEMPTS:
            if (cli_parse_int64(cmd, "--retry-max-attempts", optarg, 1, 1000, &o->retry_attempts) <
                0)
                return CLI_EXIT_USAGE;
            break;
        case OPT_INITIAL:
            if (parse_duration("--retry-initial-interval", optarg, 1, &o->retry_initial_ms) < 0)
                return CLI_EXIT_USAGE;
            break;
        case OPT_MAX_INTERVAL:
            if (parse_duration("--retry-max-interval", optarg, 1, &o->retry_max_ms) < 0)
                return CLI_EXIT_USAGE;
            break;
        case 'h': fputs(ingest_influx_usage, stdout); return CLI_EXIT_OK;
        default: return cli_bad_option(cmd, opt, argv, optind);
        }
    }
    if (optind < argc)
        return cli_usage_error(cmd, "unexpected argument \"%s\"", argv[optind]);
    if (!o->influx.database || !*o->influx.database)
        return cli_usage_error(cmd, "--database is required (the InfluxDB database to read)");
    if (!o->pods_arg && !o->map_path)
        return cli_usage_error(cmd, "give the pods to read: --pods a,b,c, or --resource-map FILE");
    if (cli_kafka_settings(cmd, &o->brokers) != 0)
        return CLI_EXIT_USAGE;
    if (!*o->topic)
        return cli_usage_error(cmd, "--output-topic must not be empty");
    if (!*o->model.measurement || !*o->model.pod_tag ||
        (o->model.device_tag && !*o->model.device_tag))
        return cli_usage_error(cmd, "--measurement, --pod-tag and --device-tag must not be empty");
    if (!o->model.device_tag)
        o->model.device_tag = o->map_path ? "device" : "vin";
    if (strcmp(o->model.pod_tag, o->model.device_tag) == 0)
        return cli_usage_error(cmd, "--pod-tag and --device-tag must differ (both are \"%s\")",
                               o->model.pod_tag);
    if (o->chunk_ms > o->max_span_ms)
        return cli_usage_error(cmd,
                               "--chunk (%" PRId64 "ms) must not be longer than "
                               "--max-cycle-span (%" PRId64 "ms)",
                               o->chunk_ms, o->max_span_ms);
    if (o->retry_initial_ms > o->retry_max_ms)
        return cli_usage_error(cmd, "--retry-initial-interval must not be longer than "
                                    "--retry-max-interval");
    if (username && token)
        return cli_usage_error(cmd, "use --username/--password or --token, not both");
    /* A flag replaces the environment's credentials, of either kind. */
    if (username || password) {
        o->influx.username = username ? username : o->influx.username;
        o->influx.password = password ? password : o->influx.password;
        o->influx.token = NULL;
    } else if (token) {
        o->influx.token = token;
        o->influx.username = o->influx.password = NULL;
    }
    if (!o->influx.username != !o->influx.password)
        return cli_usage_error(cmd, "--username and --password go together (or $INFLUX_USERNAME "
                                    "and $INFLUX_PASSWORD)");
    if (o->influx.username && o->influx.token)
        return cli_usage_error(cmd, "$INFLUX_TOKEN and $INFLUX_USERNAME are both set: choose one "
                                    "with --token or --username/--password");
    o->influx.timeout_ms = (int)o->timeout_ms;
    return -1;
}

/* --------------------------------------------------------------------- main --- */

int cmd_ingest_influxdb(int argc, char **argv)
{
    static const char cmd[] = "ingest influxdb";
    struct ingest run, *in = &run;
    int64_t from_ms, next_cycle_ms, checkpoint_ms = 0;
    int status, rc, have_checkpoint = 0;
    struct sigaction sa;
    char err[1024], quoted[1100], quoted2[600];

    memset(in, 0, sizeof(*in));
    if ((status = parse_options(in, argc, argv)) >= 0)
        return status;
    status = CLI_EXIT_FAILURE;

    /* Everything a mistake on the command line can break is checked before
     * anything is read or written. */
    if (in->o.map_path && tly_influx_map_load(in->o.map_path, &in->map, err, sizeof(err)) < 0) {
        status = cli_usage_error(cmd, "%s", err);
        goto done;
    }
    if (in->o.pods_arg) {
        if (split_pods(in, in->o.pods_arg) < 0) {
            status = CLI_EXIT_USAGE;
            goto done;
        }
        for (size_t p = 0; in->map && p < in->pod_count; p++) {
            size_t i, n = tly_influx_map_pod_count(in->map);
            for (i = 0; i < n && strcmp(tly_influx_map_pod(in->map, i), in->pods[p]) != 0; i++)
                ;
            if (i == n) {
                status = cli_usage_error(cmd, "pod \"%s\" is not in the resource map %s",
                                         in->pods[p], in->o.map_path);
                goto done;
            }
        }
    } else {
        in->pod_count = tly_influx_map_pod_count(in->map);
        if (!(in->pods = calloc(in->pod_count, sizeof(*in->pods))))
            goto oom;
        for (size_t i = 0; i < in->pod_count; i++)
            if (!(in->pods[i] = strdup(tly_influx_map_pod(in->map, i))))
                goto oom;
    }
    for (size_t p = 0; p < in->pod_count; p++) {
        char statement[STATEMENT_MAX];
        if (tly_influx_build_select(&in->o.model, in->pods[p], 0, 1, statement, sizeof(statement),
                                    err, sizeof(err)) < 0) {
            status = cli_usage_error(cmd, "%s", err);
            goto done;
        }
    }
    if (tly_influx_open(&in->o.influx, &in->influx, err, sizeof(err)) < 0) {
        status = cli_usage_error(cmd, "%s", err);
        goto done;
    }
    if (in->o.checkpoint_path) {
        if ((have_checkpoint = tly_checkpoint_read(in->o.checkpoint_path, &checkpoint_ms, err,
                                                   sizeof(err))) < 0) {
            fprintf(stderr, "tally ingest influxdb: %s\n", err);
            goto done;
        }
    }
    if (!(in->latest = tly_latest_new()))
        goto oom;
    /* Settings that cannot work end the start; a broker that is down does
     * not (producing retries, and says so). */
    switch (tly_kconf_check_cluster(in->o.brokers, (int)in->o.delivery_timeout_ms, err, sizeof(err))) {
    case -1: fprintf(stderr, "tally ingest influxdb: %s\n", err); goto done;
    case -2: tly_log("warn", "kafka", "error=%s", tly_log_quote(err, quoted, sizeof(quoted))); break;
    }
    if (open_producer(in, err, sizeof(err)) < 0) {
        fprintf(stderr, "tally ingest influxdb: %s\n", err);
        goto done;
    }
    switch (topic_exists(in, err, sizeof(err))) {
    case -1: /* the broker may come back: producing retries, and says so */
        tly_log("warn", "kafka", "error=%s", tly_log_quote(err, quoted, sizeof(quoted)));
        break;
    case 0:
        fprintf(stderr,
                "tally ingest influxdb: topic %s does not exist on %s; create it with "
                "`tally topics create --pipeline telemetry --brokers %s%s%s`\n",
                in->o.topic, in->o.brokers, in->o.brokers,
                strcmp(in->o.topic, DEFAULT_TOPIC) ? " --input-topic " : "",
                strcmp(in->o.topic, DEFAULT_TOPIC) ? in->o.topic : "");
        goto done;
    }

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal; /* no SA_RESTART: a sleep ends at once */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    tly_influx_set_cancel(in->influx, &stop_requested);

    from_ms = have_checkpoint ? checkpoint_ms : tly_clock_wall_ms() - in->o.lookback_ms;
    {
        char quoted_db[300], quoted_path[4200];
        tly_log(
            "info", "started",
            "source=influxdb url=%s database=%s measurement=%s pods=%zu topic=%s from_ms=%" PRId64
            " resumed=%s checkpoint=%s",
            tly_log_quote(in->o.influx.url, quoted, sizeof(quoted)),
            tly_log_quote(in->o.influx.database, quoted_db, sizeof(quoted_db)),
            tly_log_quote(in->o.model.measurement, quoted2, sizeof(quoted2)), in->pod_count,
            in->o.topic, from_ms, have_checkpoint ? "true" : "false",
            in->o.checkpoint_path
                ? tly_log_quote(in->o.checkpoint_path, quoted_path, sizeof(quoted_path))
                : "none");
    }

    next_cycle_ms = tly_clock_mono_ms();
    status = CLI_EXIT_OK;
    while (!stop_requested) {
        int64_t now_ms, end_ms, to_ms, cycle_started;
        if (next_cycle_ms > tly_clock_mono_ms() && sleep_ms(next_cycle_ms - tly_clock_mono_ms()))
            break;
        cycle_started = tly_clock_mono_ms();
        next_cycle_ms = cycle_started + in->o.interval_ms;
        now_ms = tly_clock_wall_ms();
        end_ms = now_ms - in->o.settle_ms;
        to_ms = end_ms - from_ms > in->o.max_span_ms ? from_ms + in->o.max_span_ms : end_ms;
        if (to_ms <= from_ms) {
            if (in->o.once)
                break;
            continue; /* nothing new yet (a clock that stepped back, or --settle) */
        }
        rc = run_cycle(in, from_ms, to_ms, end_ms - to_ms, err, sizeof(err));
        if (rc == TLY_INFLUX_CANCELLED)
            break;
        if (rc < 0) {
            tly_log("error", "ingest_error",
                    "from_ms=%" PRId64 " to_ms=%" PRId64 " attempts=%" PRId64 " reason=%s", from_ms,
                    to_ms, in->o.retry_attempts, tly_log_quote(err, quoted, sizeof(quoted)));
            if (in->o.once) {
                status = CLI_EXIT_FAILURE;
                break;
            }
            continue;
        }
        from_ms = to_ms;
        /* The records are acknowledged; a checkpoint that cannot be written
         * costs a repeat after a restart, not a gap: go on and say so. */
        if (in->o.checkpoint_path &&
            tly_checkpoint_write(in->o.checkpoint_path, to_ms, err, sizeof(err)) < 0)
            tly_log("error", "ingest_error", "checkpoint_ms=%" PRId64 " reason=%s", to_ms,
                    tly_log_quote(err, quoted, sizeof(quoted)));
        if (to_ms < end_ms)
            next_cycle_ms = tly_clock_mono_ms(); /* behind: the next range at once */
        else if (in->o.once)
            break;
    }
    tly_log("info", "shutdown", "checkpoint_ms=%" PRId64 " reason=%s", from_ms,
            stop_requested          ? "signal"
            : status == CLI_EXIT_OK ? "caught_up"
                                    : "error");
    goto done;
oom:
    fprintf(stderr, "tally ingest influxdb: out of memory\n");
    status = CLI_EXIT_FAILURE;
done:
    close_producer(in);
    free_outgoing(in);
    tly_latest_free(in->latest);
    tly_influx_close(in->influx);
    tly_influx_map_free(in->map);
    for (size_t i = 0; in->pods && i < in->pod_count; i++)
        free(in->pods[i]);
    free(in->pods);
    return status;
}
