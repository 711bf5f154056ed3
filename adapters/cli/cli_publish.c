/* adapters/cli/cli_publish.c - tally publish: emits what a state_store daemon
 * keeps, from another process.
 *
 * `tally run --strategy state_store` only keeps the state. This command opens
 * the same database (SQLite WAL: it reads while the daemon writes) and, every
 * --interval, emits the latest record of every vehicle changed since the last
 * time (the pipeline's @flush), keyed by VIN, through an idempotent producer;
 * once the broker has confirmed every message it forgets them (@flushed) in a
 * short write transaction of its own. The pending set in the database is its
 * position: a restart resumes exactly where it stopped, and a vehicle changed
 * after a cycle read the table stays pending for the next one (its mark is
 * newer than the cycle's). A crash between the deliveries and the forget emits
 * those records again: at-least-once, harmless on a compacted topic keyed by
 * VIN. */
#include "cli_common.h"
#include "clock.h"
#include "commands.h"

#include "error.h"
#include "flush.h"
#include "kconf.h"
#include "log.h"
#include "pack.h"
#include "pipeline.h"
#include "store.h"
#include "topics.h"

#include <getopt.h>
#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char publish_usage[] =
    "usage: tally publish --db PATH --brokers HOST:PORT[,...] [OPTIONS]\n"
    "\n"
    "Emits, every --interval, the latest record of every vehicle whose record changed\n"
    "since the last cycle in the database that `tally run --strategy state_store` keeps,\n"
    "keyed by VIN, then forgets them there once the broker has every message. The\n"
    "database is read while the daemon writes (WAL); what is pending is the position,\n"
    "so a restart resumes where the last cycle stopped. At-least-once: a crash between\n"
    "delivery and forget repeats those records (harmless on a compacted topic).\n"
    "\n"
    "  --db PATH            the daemon's database (<state-dir>/telemetry.db)\n"
    "  --brokers LIST       bootstrap servers (default: $KAFKA_BROKERS)\n" CLI_KAFKA_USAGE
    "  --pipeline NAME      telemetry (default; the pipeline must keep a pending set)\n"
    "  --output-topic T     default sensor-service.dispatch.telemetry-latest-compacted\n"
    "                       (tally run creates it, compacted, with the daemon's output\n"
    "                       topic: pass it the same --output-topic)\n"
    "  --interval DUR       time between cycles (default 120s)\n"
    "  --batch-size N       pack up to N records into one message, a JSON array keyed\n"
    "                       by the first record's key (default 1; keep 1 for a\n"
    "                       compacted topic)\n"
    "  --once               one cycle, then exit\n"
    "  --log-level L, --log-format F   as for tally run\n"
    "\n"
    "Logs event=flush flush_duration_ms=... vin_count=... message_count=... per cycle,\n"
    "event=flush_error when the broker did not take every message (nothing is\n"
    "forgotten; the next cycle sends them again). SIGTERM or SIGINT ends after the\n"
    "cycle under way. Exit status 0, 1 on an error, 2 on a bad option.\n";

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

/* What the flags say. */
struct publish_options {
    const char *db_path, *brokers, *pipeline, *output;
    int64_t interval_ms;
    int once, batch_size;
    tly_topic_layout layout; /* holds the output topic's name */
};

struct publisher {
    const char *topic;
    rd_kafka_t *rk;
    tly_store *store;
    tly_pipeline *pipeline;
    tly_pack *pack;
    int64_t failed;
    char first_error[256];
    int fatal;
};

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    struct publisher *p = opaque;
    (void)rk;
    if (m->err && p->failed++ == 0)
        snprintf(p->first_error, sizeof(p->first_error), "%s", rd_kafka_err2str(m->err));
}

static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    struct publisher *p = opaque;
    char fatal_reason[512];
    /* An idempotent producer's fatal error (a sequence gap) means it cannot go
     * on without risking duplicates or loss: stop. */
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        rd_kafka_fatal_error(rk, fatal_reason, sizeof(fatal_reason));
        p->fatal = 1;
        reason = fatal_reason;
    }
    tly_log(p->fatal ? "error" : "warn", "kafka", "error=%s",
            tly_log_quote(reason, (char[600]){0}, 600));
}

static int send_message(void *ctx, const char *key, size_t key_len, const char *value,
                        size_t value_len)
{
    struct publisher *p = ctx;
    rd_kafka_resp_err_t err = tly_kconf_produce(p->rk, NULL, p->topic, RD_KAFKA_PARTITION_UA, key,
                                                key_len, value, value_len, NULL, NULL, NULL);
    if (err && p->failed++ == 0)
        snprintf(p->first_error, sizeof(p->first_error), "%s", rd_kafka_err2str(err));
    return err ? 1 : 0;
}

/* One flush-then-mark cycle (flush.h), delivered by waiting for every
 * delivery report. Returns 0 (also when the broker refused some messages:
 * logged, retried next cycle), or -1 with err on a database or fatal producer
 * error. */
static int publish_once(struct publisher *p, char *err, size_t errlen)
{
    int64_t started = tly_clock_mono_ms(), upto = TLY_FLUSH_LAST_SEQ;

    /* A read that stopped at a failed send is no database error: after the
     * deliveries already queued, the cycle ends as a flush_error below. */
    p->failed = 0;
    if (tly_flush_read(p->store, p->pipeline, p->pack, p, &upto, err, errlen) < 0 && !p->failed)
        return -1;
    /* Only confirmed deliveries count: wait for every report. */
    while (rd_kafka_outq_len(p->rk) > 0 && !p->fatal)
        rd_kafka_flush(p->rk, 1000);
    if (p->fatal)
        return tly_error(err, errlen, "the producer failed fatally; nothing was forgotten");
    if (p->failed) {
        tly_log("error", "flush_error",
                "failed=%lld error=%s note=\"nothing forgotten: the next "
                "cycle sends them again\"",
                (long long)p->failed, tly_log_quote(p->first_error, (char[300]){0}, 300));
        return 0;
    }
    if (tly_flush_forget(p->store, p->pipeline, upto, err, errlen) < 0) {
        tly_log("warn", "flush_error",
                "error=%s note=\"sent but not forgotten: the next cycle "
                "repeats them\"",
                tly_log_quote(err, (char[600]){0}, 600));
        return 0;
    }
    tly_flush_log("flush", started, p->pack, upto);
    return 0;
}

/* Parses argv into o. Returns -1 to go on, or the exit status. */
static int parse_options(struct publish_options *o, int argc, char **argv)
{
    static const struct option options[] = {{"db", required_argument, NULL, 'd'},
                                            {"brokers", required_argument, NULL, 'b'},
                                            {"pipeline", required_argument, NULL, 'p'},
                                            {"output-topic", required_argument, NULL, 'O'},
                                            {"interval", required_argument, NULL, 'i'},
                                            {"batch-size", required_argument, NULL, 'B'},
                                            {"once", no_argument, NULL, '1'},
                                            {"log-level", required_argument, NULL, 'L'},
                                            {"log-format", required_argument, NULL, 'F'},
                                            CLI_KAFKA_OPTION,
                                            {"help", no_argument, NULL, 'h'},
                                            {NULL, 0, NULL, 0}};
    int64_t n;
    int opt;

    opterr = 0;
    optind = 1;
    while ((opt = getopt_long(argc, argv, ":hX:", options, NULL)) != -1) {
        switch (opt) {
        case 'd': o->db_path = optarg; break;
        case 'b': o->brokers = optarg; break;
        case 'X':
        case CLI_OPT_KAFKA_CONFIG:
            if (cli_kafka_option("publish", opt, optarg) != 0)
                return CLI_EXIT_USAGE;
            break;
        case 'p': o->pipeline = optarg; break;
        case 'O': o->output = optarg; break;
        case 'i':
            if (cli_parse_duration_ms("publish", "--interval", optarg, &o->interval_ms) < 0)
                return CLI_EXIT_USAGE;
            if (o->interval_ms < 1)
                return cli_usage_error("publish", "--interval must be at least 1ms");
            break;
        case 'B':
            if (cli_parse_int64("publish", "--batch-size", optarg, 1, 100000, &n) < 0)
                return CLI_EXIT_USAGE;
            o->batch_size = (int)n;
            break;
        case '1': o->once = 1; break;
        case 'L':
            if (tly_log_set_level(optarg) < 0)
                return cli_usage_error("publish",
                                       "--log-level must be debug, info, warn or error, "
                                       "not \"%s\"",
                                       optarg);
            break;
        case 'F':
            if (tly_log_set_format(optarg) < 0)
                return cli_usage_error("publish", "--log-format must be logfmt or json, not \"%s\"",
                                       optarg);
            break;
        case 'h': fputs(publish_usage, stdout); return CLI_EXIT_OK;
        default: return cli_bad_option("publish", opt, argv, optind);
        }
    }
    if (optind < argc)
        return cli_usage_error("publish", "unexpected argument \"%s\"", argv[optind]);
    return -1;
}

/* What the flags cannot say one at a time, the database's presence and the
 * output topic. Returns -1 to go on, or the exit status. */
static int check_options(struct publish_options *o)
{
    struct stat st;
    char err[1024];

    if (!o->db_path)
        return cli_usage_error("publish", "--db is required: the database of tally run --strategy "
                                          "state_store, e.g. --db state/telemetry.db");
    if (cli_kafka_settings("publish", &o->brokers) != 0)
        return CLI_EXIT_USAGE;
    if (strcmp(o->pipeline, "telemetry") != 0)
        return cli_usage_error("publish",
                               "--pipeline %s keeps no pending set to publish; only "
                               "telemetry does",
                               o->pipeline);
    if (stat(o->db_path, &st) != 0) {
        fprintf(stderr,
                "tally publish: no database at %s: start tally run --strategy state_store "
                "first (or fix --db)\n",
                o->db_path);
        return CLI_EXIT_FAILURE;
    }
    if (tly_topics_layout(o->pipeline, "opb", NULL, o->output, &o->layout, err, sizeof(err)) < 0) {
        fprintf(stderr, "tally publish: %s\n", err);
        return CLI_EXIT_USAGE;
    }
    return -1;
}

/* Opens the database, the pipeline, the pack and the producer. Returns 0, or
 * -1 with err. */
static int open_publisher(struct publisher *p, const struct publish_options *o, char *err,
                          size_t errlen)
{
    static const char *const defaults[] = {"client.id",   "tally-publish",  "linger.ms", "20",
                                           "partitioner", "murmur2_random", NULL};
    tly_store_options sopts;

    /* The settings are the daemon's: the database recorded them, and a
     * publish that reads all that is pending does not use them. */
    /* The daemon may hold the write lock for a whole batch (seconds with
     * 50000-record batches): the forget waits for it rather than failing. */
    tly_store_options_init(&sopts);
    sopts.busy_timeout_ms = 60000;
    if (tly_store_open(o->db_path, &sopts, &p->store, err, errlen) < 0 ||
        tly_pipeline_open(p->store, o->pipeline, NULL, TLY_PIPELINE_REPLAY_ONLY, &p->pipeline, err,
                          errlen) < 0)
        return -1;
    if (!tly_pipeline_has_flush(p->pipeline))
        return tly_error(err, errlen, "pipeline %s keeps no pending set", o->pipeline);
    if (!(p->pack = tly_pack_new(o->batch_size, send_message, p)))
        return tly_error(err, errlen, "out of memory");
    if (tly_kconf_check_cluster(o->brokers, 30000, err, errlen) < 0 ||
        !(p->rk = tly_kconf_idempotent_producer(o->brokers, defaults, p, on_delivery, on_error,
                                                NULL, err, errlen)))
        return -1;
    return 0;
}

/* A cycle every o->interval_ms until a signal (or one with --once).
 * Returns 0, or -1 with err. */
static int publish_cycles(struct publisher *p, const struct publish_options *o, char *err,
                          size_t errlen)
{
    for (;;) {
        int64_t next = tly_clock_mono_ms() + o->interval_ms;
        if (publish_once(p, err, errlen) < 0)
            return -1;
        if (o->once)
            return 0;
        while (!stop_requested && tly_clock_mono_ms() < next)
            rd_kafka_poll(p->rk, 100);
        if (stop_requested)
            return 0;
    }
}

int cmd_publish(int argc, char **argv)
{
    struct publish_options o = {.pipeline = "telemetry", .interval_ms = 120000, .batch_size = 1};
    struct publisher p;
    int rc;
    char err[1024];

    memset(&p, 0, sizeof(p));
    if ((rc = parse_options(&o, argc, argv)) >= 0 || (rc = check_options(&o)) >= 0)
        return rc;
    p.topic = o.layout.output.name;
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    rc = CLI_EXIT_FAILURE;
    if (open_publisher(&p, &o, err, sizeof(err)) < 0)
        goto done;
    tly_log("info", "publish_started", "db=%s topic=%s interval_ms=%lld batch_size=%d", o.db_path,
            p.topic, (long long)o.interval_ms, o.batch_size);
    if (publish_cycles(&p, &o, err, sizeof(err)) < 0)
        goto done;
    rc = CLI_EXIT_OK;
done:
    if (rc != CLI_EXIT_OK) {
        tly_log("error", "fatal", "error=%s", tly_log_quote(err, (char[1100]){0}, 1100));
        fprintf(stderr, "tally publish: %s\n", err);
    }
    if (p.rk) {
        rd_kafka_flush(p.rk, 10000);
        rd_kafka_destroy(p.rk);
    }
    tly_pack_free(p.pack);
    tly_pipeline_close(p.pipeline);
    tly_store_close(p.store);
    return rc;
}
