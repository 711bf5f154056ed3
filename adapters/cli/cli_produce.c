/* adapters/cli/cli_produce.c - tally produce: generated events into a
 * pipeline's Kafka input topic at a steady rate.
 *
 * Events come from the shared generator (adapters/common/loadgen.c) with event time
 * now. The rate is kept in 10 ms ticks: at every tick the events due since
 * the start (rate x elapsed) are sent, so the broker sees a smooth stream, not
 * a burst per second, and a run of --duration D sends exactly rate x D events.
 * The producer is idempotent: a retry after a lost acknowledgement does not
 * write an event twice, so the count on the topic is the count printed. Only
 * delivery reports count: an event is "produced" when the broker has it. */
#include "cli_common.h"
#include "clock.h"
#include "commands.h"

#include "kconf.h"
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
    "  --brokers B      bootstrap servers (default: $KAFKA_BROKERS)\n" CLI_KAFKA_USAGE
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
    "  --sensors-per-event N  telemetry: readings per event, 1..30 (default 5; 30 = every\n"
    "                   sensor of the vehicle, a full record)\n"
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

/* One run: the generator, the producer and the counts. The delivery report
 * callback updates the counts from rd_kafka_poll and rd_kafka_flush, on this
 * thread, so nothing is locked. */
struct producer {
    const char *brokers, *pipeline, *topic;
    int orders;
    int64_t rate, total; /* total = INT64_MAX: until a signal */
    tly_loadgen *gen;
    json_tokener *tok;
    rd_kafka_t *rk;
    rd_kafka_topic_t *rkt;
    int64_t sent, delivered, readings, failed;
    char first_error[256];
    int fatal;
    int progress;
    int64_t start_ms, send_end_ms, progress_ms;
    char event[EVENT_BUFFER], key[128];
};

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque)
{
    struct producer *p = opaque;
    (void)rk;
    if (msg->err) {
        if (p->failed++ == 0)
            snprintf(p->first_error, sizeof(p->first_error), "%s", rd_kafka_err2str(msg->err));
        return;
    }
    p->delivered++;
    p->readings += (intptr_t)msg->_private; /* the event's readings, set by send_one */
}

static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    struct producer *p = opaque;
    char quoted[600], fatal_reason[512];
    /* An idempotent producer that hits a fatal error (e.g. a sequence gap)
     * cannot go on without risking duplicates: stop sending. */
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        rd_kafka_fatal_error(rk, fatal_reason, sizeof(fatal_reason));
        p->fatal = 1;
        reason = fatal_reason;
    }
    cli_log(p->fatal ? "error" : "warn", "kafka", "error=%s",
            cli_quote(reason, quoted, sizeof(quoted)));
}

/* The message key of a generated event: orders: storeId; telemetry: data.id
 * (the VIN). Parsed rather than predicted, so the key is always the event's
 * own. Returns its length, or -1. */
static int event_key(struct producer *p, int len)
{
    json_object *root, *node = NULL;
    int found, n = -1;

    json_tokener_reset(p->tok);
    root = json_tokener_parse_ex(p->tok, p->event, len);
    if (!root)
        return -1;
    if (p->orders)
        found = json_object_object_get_ex(root, "storeId", &node);
    else
        found = json_object_object_get_ex(root, "data", &node) &&
                json_object_object_get_ex(node, "id", &node);
    if (found && json_object_is_type(node, json_type_string) &&
        (size_t)json_object_get_string_len(node) < sizeof(p->key)) {
        n = json_object_get_string_len(node);
        memcpy(p->key, json_object_get_string(node), (size_t)n + 1);
    }
    json_object_put(root);
    return n;
}

/* Creates the idempotent producer. Returns 0, or -1 with err. */
static int open_producer(struct producer *p, char *err, size_t errlen)
{
    /* murmur2_random: the same key -> partition mapping as the Java producer,
     * so these events land where the upstream services would put them. */
    static const char *const defaults[] = {"client.id",   "tally-produce",    "linger.ms",
                                           "5",           "compression.type", "none",
                                           "partitioner", "murmur2_random",   NULL};

    if (!(p->rk = tly_kconf_idempotent_producer(p->brokers, defaults, p, on_delivery, on_error,
                                                tly_kconf_drop_log, err, errlen)))
        return -1;
    if (!(p->rkt = rd_kafka_topic_new(p->rk, p->topic, NULL))) {
        snprintf(err, errlen, "topic %s: %s", p->topic, rd_kafka_err2str(rd_kafka_last_error()));
        return -1;
    }
    return 0;
}

static void show_progress(struct producer *p)
{
    int64_t now = tly_clock_mono_ms();
    if (!p->progress || now - p->progress_ms < 1000)
        return;
    p->progress_ms = now;
    fprintf(stderr, "\rproduce: sent %lld, delivered %lld, errors %lld, %.0f events/s   ",
            (long long)p->sent, (long long)p->delivered, (long long)p->failed,
            p->delivered * 1000.0 / (double)(now - p->start_ms > 0 ? now - p->start_ms : 1));
}

/* Generates one event and queues it. Returns 0 when queued, 1 when a signal
 * or a fatal error came first, -1 on an error (in err). */
static int send_one(struct producer *p, char *err, size_t errlen)
{
    int len = tly_loadgen_next(p->gen, tly_clock_wall_ms(), p->event, sizeof(p->event));
    int key_len = len > 0 ? event_key(p, len) : -1;
    /* Rides along to the delivery report, which adds it to the readings. */
    void *readings = (void *)(intptr_t)tly_loadgen_last_readings(p->gen);
    rd_kafka_resp_err_t kerr;

    if (len < 0 || key_len < 0) {
        snprintf(err, errlen, "the generator made an event without a %s: %.200s",
                 p->orders ? "storeId" : "data.id", len > 0 ? p->event : "(too long)");
        return -1;
    }
    /* Copied: the buffers are reused for the next event. A full local queue
     * means the broker takes less than the rate: this waits for deliveries,
     * and the lag shows as behind= at the end. */
    kerr = tly_kconf_produce(p->rk, p->rkt, NULL, RD_KAFKA_PARTITION_UA, p->key, (size_t)key_len,
                             p->event, (size_t)len, NULL, readings, &signals_received);
    /* A signal ends the wait (or comes before it). After a fatal error the
     * producer refuses every event (RD_KAFKA_RESP_ERR__FATAL): on_error has
     * reported it, the run stops like for a signal. */
    if (kerr == RD_KAFKA_RESP_ERR__INTR || (kerr && p->fatal))
        return 1;
    if (kerr) {
        snprintf(err, errlen, "cannot send to %s: %s", p->topic, rd_kafka_err2str(kerr));
        return -1;
    }
    p->sent++;
    return 0;
}

/* Sends p->total events at p->rate, in ticks of TICK_MS: each tick sends the
 * events due since the start, so rounding never accumulates and a slow tick
 * is made up by the next. Returns 0 (also when stopped by a signal), or -1. */
static int send_paced(struct producer *p, char *err, size_t errlen)
{
    int rc = 0;
    p->start_ms = p->progress_ms = tly_clock_mono_ms();
    while (rc == 0 && p->sent < p->total) {
        int64_t now = tly_clock_mono_ms(), elapsed = now - p->start_ms, next_tick;
        int64_t due = p->rate * elapsed / 1000;
        if (due > p->total)
            due = p->total;
        while (rc == 0 && p->sent < due)
            rc = send_one(p, err, errlen);
        show_progress(p);
        if (rc != 0 || p->sent >= p->total)
            break;
        /* Sleep to the next tick, serving delivery reports meanwhile. */
        next_tick = p->start_ms + (elapsed / TICK_MS + 1) * TICK_MS;
        now = tly_clock_mono_ms();
        rd_kafka_poll(p->rk, next_tick > now ? (int)(next_tick - now) : 0);
    }
    p->send_end_ms = tly_clock_mono_ms();
    return rc < 0 ? -1 : 0;
}

/* Waits for every delivery report; a further signal gives up waiting. What is
 * left then is purged, and fails in its delivery report, so every sent event
 * is counted once: delivered or failed. */
static void drain(struct producer *p)
{
    int64_t deadline = tly_clock_mono_ms() + FLUSH_TIMEOUT_MS;
    int signals_at_start = signals_received;
    while (rd_kafka_outq_len(p->rk) > 0 && tly_clock_mono_ms() < deadline &&
           signals_received == signals_at_start) {
        rd_kafka_flush(p->rk, 100);
        show_progress(p);
    }
    rd_kafka_purge(p->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    rd_kafka_poll(p->rk, 0);
}

/* What the flags say besides the run's own fields. */
struct produce_options {
    const char *topic;                          /* --topic, NULL: the pipeline's input */
    int64_t duration_ms, keys, seed, per_event; /* -1: not given */
    tly_topic_layout layout;                    /* holds the input topic's name */
};

/* Parses argv into p and o. Returns -1 to go on, or the exit status. */
static int parse_options(struct producer *p, struct produce_options *o, int argc, char **argv)
{
    static const struct option options[] = {{"brokers", required_argument, NULL, 'b'},
                                            {"pipeline", required_argument, NULL, 'p'},
                                            {"rate", required_argument, NULL, 'r'},
                                            {"duration", required_argument, NULL, 'd'},
                                            {"keys", required_argument, NULL, 'k'},
                                            {"topic", required_argument, NULL, 't'},
                                            {"seed", required_argument, NULL, 's'},
                                            {"sensors-per-event", required_argument, NULL, 'S'},
                                            CLI_KAFKA_OPTION,
                                            {"help", no_argument, NULL, 'h'},
                                            {NULL, 0, NULL, 0}};
    int opt;

    opterr = 0;
    optind = 1;
    while ((opt = getopt_long(argc, argv, ":hX:", options, NULL)) != -1) {
        switch (opt) {
        case 'b': p->brokers = optarg; break;
        case 'X':
        case CLI_OPT_KAFKA_CONFIG:
            if (cli_kafka_option("produce", opt, optarg) != 0)
                return CLI_EXIT_USAGE;
            break;
        case 'p': p->pipeline = optarg; break;
        case 't': o->topic = optarg; break;
        case 'r':
            if (cli_parse_int64("produce", "--rate", optarg, 1, 10000000, &p->rate) < 0)
                return CLI_EXIT_USAGE;
            break;
        case 'd':
            if (cli_parse_duration_ms("produce", "--duration", optarg, &o->duration_ms) < 0)
                return CLI_EXIT_USAGE;
            if (o->duration_ms < 1 || o->duration_ms > 366LL * 86400000)
                return cli_usage_error("produce", "--duration must be between 1ms and 366d");
            break;
        case 'k':
            if (cli_parse_int64("produce", "--keys", optarg, 1, 10000000, &o->keys) < 0)
                return CLI_EXIT_USAGE;
            break;
        case 's':
            if (cli_parse_int64("produce", "--seed", optarg, 0, INT64_MAX, &o->seed) < 0)
                return CLI_EXIT_USAGE;
            break;
        case 'S':
            if (cli_parse_int64("produce", "--sensors-per-event", optarg, 1, 30, &o->per_event) < 0)
                return CLI_EXIT_USAGE;
            break;
        case 'h': fputs(produce_usage, stdout); return CLI_EXIT_OK;
        default: return cli_bad_option("produce", opt, argv, optind);
        }
    }
    if (optind < argc)
        return cli_usage_error("produce", "unexpected argument \"%s\"", argv[optind]);
    return -1;
}

/* What the flags cannot say one at a time; sets the topic and the total.
 * Returns -1 to go on, or the exit status. */
static int check_options(struct producer *p, struct produce_options *o)
{
    char err[512];

    if (!p->pipeline)
        return cli_usage_error("produce", "--pipeline is required (orders or telemetry)");
    if (cli_kafka_settings("produce", &p->brokers) != 0)
        return CLI_EXIT_USAGE;
    if (tly_topics_layout(p->pipeline, NULL, NULL, NULL, &o->layout, err, sizeof(err)) < 0)
        return cli_usage_error("produce", "%s", err);
    if (o->topic && !*o->topic)
        return cli_usage_error("produce", "--topic must not be empty");
    p->topic = o->topic ? o->topic : o->layout.input.name;
    p->orders = strcmp(p->pipeline, "orders") == 0;
    if (o->per_event > 0 && p->orders)
        return cli_usage_error("produce", "--sensors-per-event is for --pipeline telemetry");
    /* Fits: at most 1e7 events/s x 3.2e10 ms / 1000. */
    p->total = o->duration_ms > 0 ? p->rate * o->duration_ms / 1000 : INT64_MAX;
    return -1;
}

/* The generator, the producer, and a topic that exists. Returns 0, or -1
 * after printing why. */
static int open_run(struct producer *p, const struct produce_options *o)
{
    tly_loadgen_options gen_opts;
    char err[512];

    tly_loadgen_options_init(&gen_opts, p->pipeline);
    if (o->seed >= 0)
        gen_opts.seed = (uint64_t)o->seed;
    if (o->per_event > 0)
        gen_opts.sensors_per_event = (int)o->per_event;
    if (o->keys > 0) {
        if (p->orders)
            gen_opts.stores = (int)o->keys;
        else
            gen_opts.vins = (int)o->keys;
    }
    p->gen = tly_loadgen_new(&gen_opts);
    p->tok = json_tokener_new();
    if (!p->gen || !p->tok) {
        fprintf(stderr, "tally produce: out of memory\n");
        return -1;
    }
    if (tly_kconf_check_cluster(p->brokers, FLUSH_TIMEOUT_MS, err, sizeof(err)) < 0 ||
        open_producer(p, err, sizeof(err)) < 0) {
        fprintf(stderr, "tally produce: %s\n", err);
        return -1;
    }
    switch (tly_kconf_topic_exists(p->rk, p->brokers, p->topic, METADATA_TIMEOUT_MS, err,
                                   sizeof(err))) {
    case -1: fprintf(stderr, "tally produce: %s\n", err); return -1;
    case 0:
        fprintf(stderr,
                "tally produce: topic %s does not exist on %s; create it with "
                "`tally topics create --pipeline %s --brokers %s%s%s`\n",
                p->topic, p->brokers, p->pipeline, p->brokers, o->topic ? " --input-topic " : "",
                o->topic ? o->topic : "");
        return -1;
    }
    return 0;
}

/* Prints what went wrong and the summary line. Returns the exit status. */
static int report(const struct producer *p, int64_t duration_ms, int64_t behind_ms, int64_t end_ms)
{
    int64_t errors = p->sent - p->delivered; /* failed, or (never seen) no report at all */

    if (p->failed)
        fprintf(stderr, "tally produce: %lld deliveries failed; the first: %s\n",
                (long long)p->failed, p->first_error);
    if (behind_ms)
        fprintf(stderr,
                "tally produce: could not keep up %lld events/s: sending took %.3f s "
                "instead of %.3f s\n",
                (long long)p->rate, (p->send_end_ms - p->start_ms) / 1000.0, duration_ms / 1000.0);
    printf("produced pipeline=%s topic=%s events=%lld readings=%lld seconds=%.3f events_per_s=%.0f "
           "errors=%lld",
           p->pipeline, p->topic, (long long)p->delivered, (long long)p->readings,
           (end_ms - p->start_ms) / 1000.0,
           p->delivered * 1000.0 / (double)(end_ms - p->start_ms > 0 ? end_ms - p->start_ms : 1),
           (long long)errors);
    if (behind_ms)
        printf(" behind=%.3fs", behind_ms / 1000.0);
    if (signals_received)
        printf(" interrupted=true");
    putchar('\n');
    fflush(stdout);
    /* Short of the total without a signal: a send error or a fatal one. */
    if (!errors && !p->fatal && (p->sent == p->total || signals_received))
        return CLI_EXIT_OK;
    return CLI_EXIT_FAILURE;
}

int cmd_produce(int argc, char **argv)
{
    struct producer run, *p = &run;
    struct produce_options o = {
        .topic = NULL, .duration_ms = -1, .keys = -1, .seed = -1, .per_event = -1};
    int64_t end_ms, behind_ms = 0;
    int status;
    struct sigaction sa;
    char err[512];

    memset(p, 0, sizeof(*p));
    p->brokers = NULL; /* cli_kafka_settings */
    p->rate = 1000;
    if ((status = parse_options(p, &o, argc, argv)) >= 0 || (status = check_options(p, &o)) >= 0)
        return status;
    status = CLI_EXIT_FAILURE;
    if (open_run(p, &o) < 0)
        goto done;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    p->progress = isatty(STDERR_FILENO);

    if (send_paced(p, err, sizeof(err)) < 0)
        fprintf(stderr, "tally produce: %s\n", err);
    if (o.duration_ms > 0 && p->sent == p->total &&
        p->send_end_ms - p->start_ms - o.duration_ms > BEHIND_TOLERANCE_MS)
        behind_ms = p->send_end_ms - p->start_ms - o.duration_ms;
    drain(p);
    end_ms = tly_clock_mono_ms();
    if (p->progress && p->progress_ms != p->start_ms)
        fputc('\n', stderr);
    status = report(p, o.duration_ms, behind_ms, end_ms);
done:
    if (p->rkt)
        rd_kafka_topic_destroy(p->rkt);
    if (p->rk)
        rd_kafka_destroy(p->rk);
    if (p->tok)
        json_tokener_free(p->tok);
    tly_loadgen_free(p->gen);
    return status;
}
