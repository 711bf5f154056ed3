/* adapters/cli/cli_produce.c - tally produce: generated events into a
 * pipeline's Kafka input topic at a steady rate.
 *
 * Events come from the shared generator (adapters/loadgen.c) with event time
 * now. The rate is kept in 10 ms ticks: at every tick the events due since
 * the start (rate x elapsed) are sent, so the broker sees a smooth stream, not
 * a burst per second, and a run of --duration D sends exactly rate x D events.
 * The producer is idempotent: a retry after a lost acknowledgement does not
 * write an event twice, so the count on the topic is the count printed. Only
 * delivery reports count: an event is "produced" when the broker has it. */
#include "cli_common.h"
#include "commands.h"

#include "loadgen.h"
#include "topics.h"

#include <getopt.h>
#include <json-c/json.h>
#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define TICK_MS 10
#define METADATA_TIMEOUT_MS 10000
#define FLUSH_TIMEOUT_MS 30000
#define BEHIND_TOLERANCE_MS 100 /* later than this at the end = the rate was not met */
#define EVENT_BUFFER 4096       /* enough for any generated event (loadgen.h) */

static const char produce_usage[] =
    "usage: tally produce --pipeline orders|telemetry [--brokers B] [OPTIONS]\n"
    "\n"
    "Sends generated events (event time = now) to the pipeline's input topic at a\n"
    "steady rate, in 10 ms steps, through an idempotent producer. With --duration D it\n"
    "sends exactly RATE x D events (rounded down), then waits for every delivery.\n"
    "\n"
    "  --brokers B      bootstrap servers (default: $KAFKA_BROKERS)\n"
    "  --pipeline NAME  orders or telemetry\n"
    "  --rate N         events per second (default 1000)\n"
    "  --duration DUR   how long to send, e.g. 60s, 5m (default: until Ctrl-C)\n"
    "  --keys K         distinct message keys: orders: K stores, the key is storeId\n"
    "                   (\"s-0\" .. \"s-<K-1>\"), each store with 200 products (default 50);\n"
    "                   telemetry: K vehicles, the key is the VIN (\"VIN00000000\" ..)\n"
    "                   (default 1000). Keys are drawn uniformly.\n"
    "  --topic T        topic (default: the pipeline's input, orders.enriched or\n"
    "                   sensor-service.dispatch.telemetry-aggregated)\n"
    "  --seed S         generator seed: the same seed gives the same events\n"
    "\n"
    "The topic must exist: create it with 'tally topics create'. Partitions are chosen\n"
    "by key with murmur2, as the Java client does. Ctrl-C stops early, waits for the\n"
    "deliveries and prints the summary:\n"
    "  produced pipeline=P topic=T events=N readings=R seconds=S events_per_s=X errors=E\n"
    "where events counts deliveries the broker confirmed; \"behind=S\" is added when\n"
    "the rate could not be kept up (sending ended S seconds late). Exit status 0 when\n"
    "every event was delivered, 1 otherwise or when the topic does not exist, 2 on a\n"
    "bad option.\n";

static volatile sig_atomic_t signals_received;

static void on_signal(int sig)
{
    (void)sig;
    signals_received++;
}

/* Counters the delivery report callback keeps; it runs in rd_kafka_poll and
 * rd_kafka_flush on this thread, so no locking. */
struct deliveries {
    int64_t delivered, readings, failed;
    char first_error[256];
    int fatal;
};

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque)
{
    struct deliveries *d = opaque;
    (void)rk;
    if (msg->err) {
        if (d->failed++ == 0)
            snprintf(d->first_error, sizeof(d->first_error), "%s", rd_kafka_err2str(msg->err));
        return;
    }
    d->delivered++;
    d->readings += (intptr_t)msg->_private; /* the event's readings, set at produce */
}

static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    struct deliveries *d = opaque;
    char quoted[600], fatal_reason[512];
    /* An idempotent producer that hits a fatal error (e.g. a sequence gap)
     * cannot go on without risking duplicates: stop sending. */
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        rd_kafka_fatal_error(rk, fatal_reason, sizeof(fatal_reason));
        d->fatal = 1;
        reason = fatal_reason;
    }
    cli_log(d->fatal ? "error" : "warn", "kafka", "error=%s", cli_quote(reason, quoted, sizeof(quoted)));
}

/* librdkafka's own log lines repeat what on_error reports. */
static void drop_log(const rd_kafka_t *rk, int level, const char *facility, const char *message)
{
    (void)rk;
    (void)level;
    (void)facility;
    (void)message;
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The message key of a generated event: orders: storeId; telemetry: data.id
 * (the VIN). Parsed rather than predicted, so the key is always the event's
 * own. Returns its length, or -1. */
static int event_key(json_tokener *tok, int orders, const char *event, int len, char *key,
                     size_t keylen)
{
    json_object *root, *node = NULL;
    int n = -1;

    json_tokener_reset(tok);
    root = json_tokener_parse_ex(tok, event, len);
    if (!root)
        return -1;
    if (orders ? json_object_object_get_ex(root, "storeId", &node)
               : json_object_object_get_ex(root, "data", &node) &&
                     json_object_object_get_ex(node, "id", &node)) {
        if (json_object_is_type(node, json_type_string) &&
            (size_t)json_object_get_string_len(node) < keylen) {
            n = json_object_get_string_len(node);
            memcpy(key, json_object_get_string(node), (size_t)n + 1);
        }
    }
    json_object_put(root);
    return n;
}

/* Returns 1 if `topic` exists, 0 if not, -1 on a metadata error (in err). */
static int topic_exists(rd_kafka_t *rk, const char *topic, char *err, size_t errlen)
{
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t kerr;
    int found = 0;

    /* All topics: a request naming this one could make a broker with
     * auto.create.topics.enable create it with the wrong settings. */
    if ((kerr = rd_kafka_metadata(rk, 1, NULL, &md, METADATA_TIMEOUT_MS))) {
        snprintf(err, errlen, "%s", rd_kafka_err2str(kerr));
        return -1;
    }
    for (int i = 0; i < md->topic_cnt; i++)
        if (strcmp(md->topics[i].topic, topic) == 0 &&
            md->topics[i].err != RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
            found = 1;
    rd_kafka_metadata_destroy(md);
    return found;
}

/* Queues one event (copied: RD_KAFKA_MSG_F_COPY, so event is not written);
 * its readings ride along to the delivery report. */
static rd_kafka_resp_err_t send_event(rd_kafka_t *rk, rd_kafka_topic_t *rkt, const char *key,
                                      size_t key_len, char *event, size_t len, int readings)
{
    return rd_kafka_producev(rk, RD_KAFKA_V_RKT(rkt), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                             RD_KAFKA_V_KEY(key, key_len), RD_KAFKA_V_VALUE(event, len),
                             RD_KAFKA_V_OPAQUE((void *)(intptr_t)readings), RD_KAFKA_V_END);
}

static int set_conf(rd_kafka_conf_t *conf, const char *name, const char *value, char *err,
                    size_t errlen)
{
    return rd_kafka_conf_set(conf, name, value, err, errlen) == RD_KAFKA_CONF_OK ? 0 : -1;
}

static void show_progress(int enabled, int64_t start_ms, int64_t *last_ms, int64_t sent,
                          const struct deliveries *d)
{
    int64_t now = cli_now_ms();
    if (!enabled || now - *last_ms < 1000)
        return;
    *last_ms = now;
    fprintf(stderr, "\rproduce: sent %lld, delivered %lld, errors %lld, %.0f events/s   ",
            (long long)sent, (long long)d->delivered, (long long)d->failed,
            d->delivered * 1000.0 / (double)(now - start_ms > 0 ? now - start_ms : 1));
}

int cmd_produce(int argc, char **argv)
{
    static const struct option options[] = {
        {"brokers", required_argument, NULL, 'b'}, {"pipeline", required_argument, NULL, 'p'},
        {"rate", required_argument, NULL, 'r'},    {"duration", required_argument, NULL, 'd'},
        {"keys", required_argument, NULL, 'k'},    {"topic", required_argument, NULL, 't'},
        {"seed", required_argument, NULL, 's'},    {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    const char *brokers = getenv("KAFKA_BROKERS"), *pipeline = NULL, *topic = NULL;
    int64_t rate = 1000, duration_ms = -1, keys = -1, seed = -1;
    int64_t total, sent = 0, start_ms, end_ms, send_end_ms = -1, behind_ms = 0, last_progress;
    int opt, orders, custom_topic, progress, status = CLI_EXIT_FAILURE;
    tly_topic_layout layout;
    tly_loadgen_options gen_opts;
    tly_loadgen *gen = NULL;
    json_tokener *tok = NULL;
    rd_kafka_conf_t *conf = NULL;
    rd_kafka_t *rk = NULL;
    rd_kafka_topic_t *rkt = NULL;
    struct deliveries d = {0};
    struct sigaction sa;
    char err[512], event[EVENT_BUFFER], key[128];
    int64_t errors;

    opterr = 0;
    optind = 1;
    while ((opt = getopt_long(argc, argv, ":h", options, NULL)) != -1) {
        switch (opt) {
        case 'b': brokers = optarg; break;
        case 'p': pipeline = optarg; break;
        case 't': topic = optarg; break;
        case 'r':
            if (cli_parse_int64("produce", "--rate", optarg, 1, 10000000, &rate) < 0)
                return CLI_EXIT_USAGE;
            break;
        case 'd':
            if (cli_parse_duration_ms("produce", "--duration", optarg, &duration_ms) < 0)
                return CLI_EXIT_USAGE;
            if (duration_ms < 1 || duration_ms > 366LL * 86400000)
                return cli_usage_error("produce", "--duration must be between 1ms and 366d");
            break;
        case 'k':
            if (cli_parse_int64("produce", "--keys", optarg, 1, 10000000, &keys) < 0)
                return CLI_EXIT_USAGE;
            break;
        case 's':
            if (cli_parse_int64("produce", "--seed", optarg, 0, INT64_MAX, &seed) < 0)
                return CLI_EXIT_USAGE;
            break;
        case 'h': fputs(produce_usage, stdout); return CLI_EXIT_OK;
        default: return cli_bad_option("produce", opt, argv, optind);
        }
    }
    if (optind < argc)
        return cli_usage_error("produce", "unexpected argument \"%s\"", argv[optind]);
    if (!pipeline)
        return cli_usage_error("produce", "--pipeline is required (orders or telemetry)");
    if (!brokers || !*brokers)
        return cli_usage_error("produce", "--brokers is required (or set KAFKA_BROKERS)");
    if (tly_topics_layout(pipeline, NULL, NULL, NULL, &layout, err, sizeof(err)) < 0)
        return cli_usage_error("produce", "%s", err);
    if (topic && !*topic)
        return cli_usage_error("produce", "--topic must not be empty");
    custom_topic = topic != NULL;
    if (!topic)
        topic = layout.input.name;
    orders = strcmp(pipeline, "orders") == 0;
    /* rate x duration fits: at most 1e7 x 3.2e10 ms / 1000. */
    total = duration_ms > 0 ? rate * duration_ms / 1000 : INT64_MAX;

    tly_loadgen_options_init(&gen_opts, pipeline);
    if (seed >= 0)
        gen_opts.seed = (uint64_t)seed;
    if (keys > 0) {
        if (orders)
            gen_opts.stores = (int)keys;
        else
            gen_opts.vins = (int)keys;
    }
    gen = tly_loadgen_new(&gen_opts);
    tok = json_tokener_new();
    if (!gen || !tok) {
        fprintf(stderr, "tally produce: out of memory\n");
        goto done;
    }

    conf = rd_kafka_conf_new();
    /* murmur2_random: the same key -> partition mapping as the Java producer,
     * so these events land where the upstream services would put them. */
    if (set_conf(conf, "bootstrap.servers", brokers, err, sizeof(err)) < 0 ||
        set_conf(conf, "client.id", "tally-produce", err, sizeof(err)) < 0 ||
        set_conf(conf, "enable.idempotence", "true", err, sizeof(err)) < 0 ||
        set_conf(conf, "linger.ms", "5", err, sizeof(err)) < 0 ||
        set_conf(conf, "compression.type", "none", err, sizeof(err)) < 0 ||
        set_conf(conf, "partitioner", "murmur2_random", err, sizeof(err)) < 0) {
        fprintf(stderr, "tally produce: %s\n", err);
        rd_kafka_conf_destroy(conf);
        goto done;
    }
    rd_kafka_conf_set_opaque(conf, &d);
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rd_kafka_conf_set_error_cb(conf, on_error);
    rd_kafka_conf_set_log_cb(conf, drop_log);
    if (!(rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err)))) {
        rd_kafka_conf_destroy(conf); /* rd_kafka_new() takes ownership of conf only on success */
        fprintf(stderr, "tally produce: cannot create a Kafka producer for %s: %s\n", brokers, err);
        goto done;
    }
    switch (topic_exists(rk, topic, err, sizeof(err))) {
    case -1:
        fprintf(stderr, "tally produce: cannot read the topic list from %s: %s\n", brokers, err);
        goto done;
    case 0:
        fprintf(stderr,
                "tally produce: topic %s does not exist on %s; create it with "
                "`tally topics create --pipeline %s --brokers %s%s%s`\n",
                topic, brokers, pipeline, brokers, custom_topic ? " --input-topic " : "",
                custom_topic ? topic : "");
        goto done;
    }
    rkt = rd_kafka_topic_new(rk, topic, NULL);
    if (!rkt) {
        fprintf(stderr, "tally produce: topic %s: %s\n", topic,
                rd_kafka_err2str(rd_kafka_last_error()));
        goto done;
    }

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    progress = isatty(STDERR_FILENO);
    start_ms = last_progress = cli_now_ms();
    while (sent < total && !signals_received && !d.fatal) {
        int64_t now = cli_now_ms(), elapsed = now - start_ms;
        int64_t due = rate * elapsed / 1000, next_tick;
        if (due > total)
            due = total;
        while (sent < due && !signals_received && !d.fatal) {
            int len = tly_loadgen_next(gen, wall_ms(), event, sizeof(event));
            int key_len = len > 0 ? event_key(tok, orders, event, len, key, sizeof(key)) : -1;
            rd_kafka_resp_err_t kerr;
            if (len < 0 || key_len < 0) {
                fprintf(stderr, "tally produce: the generator made an event without a %s: %.200s\n",
                        orders ? "storeId" : "data.id", len > 0 ? event : "(too long)");
                goto stop;
            }
            kerr = send_event(rk, rkt, key, (size_t)key_len, event, (size_t)len,
                              tly_loadgen_last_readings(gen));
            while (kerr == RD_KAFKA_RESP_ERR__QUEUE_FULL && !signals_received && !d.fatal) {
                /* The local queue is full: the broker is slower than the rate.
                 * Wait for deliveries; the lag shows as behind= at the end. */
                rd_kafka_poll(rk, TICK_MS);
                kerr = send_event(rk, rkt, key, (size_t)key_len, event, (size_t)len,
                                  tly_loadgen_last_readings(gen));
            }
            if (kerr == RD_KAFKA_RESP_ERR__QUEUE_FULL)
                break; /* stopping: the event was generated but not sent */
            if (kerr) {
                fprintf(stderr, "tally produce: cannot send to %s: %s\n", topic, rd_kafka_err2str(kerr));
                goto stop;
            }
            sent++;
        }
        show_progress(progress, start_ms, &last_progress, sent, &d);
        if (sent >= total)
            break;
        /* Sleep to the next tick, serving delivery reports meanwhile. */
        next_tick = start_ms + (elapsed / TICK_MS + 1) * TICK_MS;
        now = cli_now_ms();
        rd_kafka_poll(rk, next_tick > now ? (int)(next_tick - now) : 0);
    }
stop:
    send_end_ms = cli_now_ms();
    if (duration_ms > 0 && sent == total && send_end_ms - start_ms - duration_ms > BEHIND_TOLERANCE_MS)
        behind_ms = send_end_ms - start_ms - duration_ms;
    {
        /* Wait for every delivery report; a second Ctrl-C gives up waiting. */
        int64_t flush_deadline = cli_now_ms() + FLUSH_TIMEOUT_MS;
        int signals_at_stop = signals_received;
        while (rd_kafka_outq_len(rk) > 0 && cli_now_ms() < flush_deadline &&
               signals_received <= signals_at_stop) {
            rd_kafka_flush(rk, 100);
            show_progress(progress, start_ms, &last_progress, sent, &d);
        }
        /* Whatever is left fails with a purge error in its delivery report, so
         * every sent event is counted once, delivered or failed. */
        rd_kafka_purge(rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
        rd_kafka_poll(rk, 0);
    }
    end_ms = cli_now_ms();
    if (progress && end_ms - start_ms >= 1000)
        fputc('\n', stderr);
    errors = d.failed + (sent - d.delivered - d.failed); /* the latter: reports never seen */
    if (d.failed)
        fprintf(stderr, "tally produce: %lld deliveries failed; the first: %s\n", (long long)d.failed,
                d.first_error);
    if (behind_ms)
        fprintf(stderr, "tally produce: could not keep up %lld events/s: sending took %.3f s instead of %.3f s\n",
                (long long)rate, (send_end_ms - start_ms) / 1000.0, duration_ms / 1000.0);
    printf("produced pipeline=%s topic=%s events=%lld readings=%lld seconds=%.3f events_per_s=%.0f "
           "errors=%lld",
           pipeline, topic, (long long)d.delivered, (long long)d.readings,
           (end_ms - start_ms) / 1000.0,
           d.delivered * 1000.0 / (double)(end_ms - start_ms > 0 ? end_ms - start_ms : 1),
           (long long)errors);
    if (behind_ms)
        printf(" behind=%.3fs", behind_ms / 1000.0);
    if (signals_received)
        printf(" interrupted=true");
    putchar('\n');
    fflush(stdout);
    status = errors || d.fatal || (sent < total && !signals_received) ? CLI_EXIT_FAILURE : CLI_EXIT_OK;
done:
    if (rkt)
        rd_kafka_topic_destroy(rkt);
    if (rk)
        rd_kafka_destroy(rk);
    if (tok)
        json_tokener_free(tok);
    tly_loadgen_free(gen);
    return status;
}
