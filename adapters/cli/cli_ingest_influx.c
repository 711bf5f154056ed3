/* adapters/cli/cli_ingest_influx.c - tally ingest influxdb: the flags, the
 * checks a mistake on the command line can fail, and the wiring (signals,
 * exit status) around the ingest of adapters/influx/ingest.h, which has the
 * cycle and its delivery contract. */
#include "cli_common.h"
#include "commands.h"

#include "influx.h"
#include "influxql.h"
#include "ingest.h"
#include "resource_map.h"

#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_URL "http://127.0.0.1:8086"
#define DEFAULT_TOPIC "sensor-service.dispatch.telemetry-aggregated"
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
    "  --brokers B                 bootstrap servers (default: $KAFKA_BROKERS)\n" CLI_KAFKA_USAGE
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
    tly_influx_ingest_config ingest; /* the pods, map and stop flag are set in main */
    const char *pods_arg, *map_path;
    int64_t timeout_ms; /* --timeout, checked here and passed as the client's int */
};

/* The pods to read: --pods, or those of the resource map. */
struct pods {
    char **names;
    size_t count;
};

static void free_pods(struct pods *pods)
{
    for (size_t i = 0; pods->names && i < pods->count; i++)
        free(pods->names[i]);
    free(pods->names);
}

/* ------------------------------------------------------------------ options --- */

/* Appends one pod of --pods. Returns 0, or -1 after a message. */
static int add_pod(struct pods *pods, const char *pod)
{
    char **grown;

    for (size_t i = 0; i < pods->count; i++)
        if (strcmp(pods->names[i], pod) == 0) {
            cli_usage_error("ingest influxdb", "--pods lists \"%s\" twice", pod);
            return -1;
        }
    if (pods->count == MAX_PODS) {
        cli_usage_error("ingest influxdb", "--pods: at most %d pods", MAX_PODS);
        return -1;
    }
    if (!(grown = realloc(pods->names, (pods->count + 1) * sizeof(*grown)))) {
        fprintf(stderr, "tally ingest influxdb: out of memory\n");
        return -1;
    }
    pods->names = grown;
    if (!(pods->names[pods->count] = strdup(pod))) {
        fprintf(stderr, "tally ingest influxdb: out of memory\n");
        return -1;
    }
    pods->count++;
    return 0;
}

/* Splits "a,b,c" into pods. Returns 0, or -1 after a usage message. */
static int split_pods(struct pods *pods, const char *list)
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
        if (*tok && add_pod(pods, tok) < 0)
            goto done;
    }
    if (pods->count == 0) {
        cli_usage_error("ingest influxdb",
                        "--pods names no pod (give a comma-separated list: --pods a,b,c)");
        goto done;
    }
    rc = 0;
done:
    free(copy);
    return rc;
}

/* The pods of --pods, each of which the resource map must list, or else
 * every pod of the map. Returns -1 to go on, or the exit status. */
static int choose_pods(const struct options *o, const tly_influx_map *map, struct pods *pods)
{
    if (!o->pods_arg) {
        size_t n = tly_influx_map_pod_count(map);
        if (!(pods->names = calloc(n, sizeof(*pods->names))))
            goto oom;
        for (pods->count = 0; pods->count < n; pods->count++)
            if (!(pods->names[pods->count] = strdup(tly_influx_map_pod(map, pods->count))))
                goto oom;
        return -1;
    }
    if (split_pods(pods, o->pods_arg) < 0)
        return CLI_EXIT_USAGE;
    for (size_t p = 0; map && p < pods->count; p++) {
        size_t i, n = tly_influx_map_pod_count(map);
        for (i = 0; i < n && strcmp(tly_influx_map_pod(map, i), pods->names[p]) != 0; i++)
            ;
        if (i == n)
            return cli_usage_error("ingest influxdb", "pod \"%s\" is not in the resource map %s",
                                   pods->names[p], o->map_path);
    }
    return -1;
oom:
    fprintf(stderr, "tally ingest influxdb: out of memory\n");
    return CLI_EXIT_FAILURE;
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

static const struct option long_options[] = {
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

/* --username, --password and --token as given (NULL when not), which
 * replace the environment's credentials in check_options. */
struct credentials {
    const char *username, *password, *token;
};

static void set_defaults(struct options *o)
{
    tly_influx_ingest_config *c = &o->ingest;

    c->influx.url = DEFAULT_URL;
    c->influx.username = env_or_null("INFLUX_USERNAME");
    c->influx.password = env_or_null("INFLUX_PASSWORD");
    c->influx.token = env_or_null("INFLUX_TOKEN");
    c->model.measurement = "telemetry";
    c->model.pod_tag = "pod";
    c->brokers = NULL; /* cli_kafka_settings */
    c->topic = DEFAULT_TOPIC;
    c->interval_ms = 10000;
    c->lookback_ms = 10000;
    c->chunk_ms = 2000;
    c->settle_ms = 1000;
    c->max_span_ms = 60000;
    o->timeout_ms = 30000;
    c->delivery_timeout_ms = 30000;
    c->retry_attempts = 5;
    c->retry_initial_ms = 1000;
    c->retry_max_ms = 30000;
}

/* What the flags cannot say one at a time. Returns -1 to go on, or the exit
 * status. */
static int check_options(const char *cmd, struct options *o, const struct credentials *given)
{
    tly_influx_ingest_config *c = &o->ingest;

    if (!c->influx.database || !*c->influx.database)
        return cli_usage_error(cmd, "--database is required (the InfluxDB database to read)");
    if (!o->pods_arg && !o->map_path)
        return cli_usage_error(cmd, "give the pods to read: --pods a,b,c, or --resource-map FILE");
    if (cli_kafka_settings(cmd, &c->brokers) != 0)
        return CLI_EXIT_USAGE;
    if (!*c->topic)
        return cli_usage_error(cmd, "--output-topic must not be empty");
    if (!*c->model.measurement || !*c->model.pod_tag ||
        (c->model.device_tag && !*c->model.device_tag))
        return cli_usage_error(cmd, "--measurement, --pod-tag and --device-tag must not be empty");
    if (!c->model.device_tag)
        c->model.device_tag = o->map_path ? "device" : "vin";
    if (strcmp(c->model.pod_tag, c->model.device_tag) == 0)
        return cli_usage_error(cmd, "--pod-tag and --device-tag must differ (both are \"%s\")",
                               c->model.pod_tag);
    if (c->chunk_ms > c->max_span_ms)
        return cli_usage_error(cmd,
                               "--chunk (%" PRId64 "ms) must not be longer than "
                               "--max-cycle-span (%" PRId64 "ms)",
                               c->chunk_ms, c->max_span_ms);
    if (c->retry_initial_ms > c->retry_max_ms)
        return cli_usage_error(cmd, "--retry-initial-interval must not be longer than "
                                    "--retry-max-interval");
    if (given->username && given->token)
        return cli_usage_error(cmd, "use --username/--password or --token, not both");
    /* A flag replaces the environment's credentials, of either kind. */
    if (given->username || given->password) {
        c->influx.username = given->username ? given->username : c->influx.username;
        c->influx.password = given->password ? given->password : c->influx.password;
        c->influx.token = NULL;
    } else if (given->token) {
        c->influx.token = given->token;
        c->influx.username = c->influx.password = NULL;
    }
    if (!c->influx.username != !c->influx.password)
        return cli_usage_error(cmd, "--username and --password go together (or $INFLUX_USERNAME "
                                    "and $INFLUX_PASSWORD)");
    if (c->influx.username && c->influx.token)
        return cli_usage_error(cmd, "$INFLUX_TOKEN and $INFLUX_USERNAME are both set: choose one "
                                    "with --token or --username/--password");
    c->influx.timeout_ms = (int)o->timeout_ms;
    return -1;
}

/* Parses argv into o. Returns -1 to go on, or the exit status. */
static int parse_options(struct options *o, int argc, char **argv)
{
    static const char cmd[] = "ingest influxdb";
    tly_influx_ingest_config *c = &o->ingest;
    struct credentials given = {NULL, NULL, NULL};
    int opt;

    set_defaults(o);
    opterr = 0;
    optind = 1;
    while ((opt = getopt_long(argc, argv, ":hX:", long_options, NULL)) != -1) {
        switch (opt) {
        case OPT_URL: c->influx.url = optarg; break;
        case 'X':
        case CLI_OPT_KAFKA_CONFIG:
            if (cli_kafka_option(cmd, opt, optarg) != 0)
                return CLI_EXIT_USAGE;
            break;
        case OPT_DATABASE: c->influx.database = optarg; break;
        case OPT_RP: c->influx.retention_policy = optarg; break;
        case OPT_USERNAME: given.username = optarg; break;
        case OPT_PASSWORD: given.password = optarg; break;
        case OPT_TOKEN: given.token = optarg; break;
        case OPT_MEASUREMENT: c->model.measurement = optarg; break;
        case OPT_POD_TAG: c->model.pod_tag = optarg; break;
        case OPT_DEVICE_TAG: c->model.device_tag = optarg; break;
        case OPT_PODS: o->pods_arg = optarg; break;
        case OPT_MAP: o->map_path = optarg; break;
        case OPT_CHECKPOINT: c->checkpoint_path = optarg; break;
        case OPT_ONCE: c->once = 1; break;
        case OPT_BROKERS: c->brokers = optarg; break;
        case OPT_TOPIC: c->topic = optarg; break;
        case OPT_TIMEOUT:
            if (parse_duration("--timeout", optarg, 1, &o->timeout_ms) < 0)
                return CLI_EXIT_USAGE;
            if (o->timeout_ms > 3600000)
                return cli_usage_error(cmd, "--timeout must be at most 1h");
            break;
        case OPT_DELIVERY_TIMEOUT:
            if (parse_duration("--delivery-timeout", optarg, 100, &c->delivery_timeout_ms) < 0)
                return CLI_EXIT_USAGE;
            if (c->delivery_timeout_ms > 3600000)
                return cli_usage_error(cmd, "--delivery-timeout must be at most 1h");
            break;
        case OPT_INTERVAL:
            if (parse_duration("--interval", optarg, 10, &c->interval_ms) < 0)
                return CLI_EXIT_USAGE;
            break;
        case OPT_LOOKBACK:
            if (parse_duration("--lookback", optarg, 1, &c->lookback_ms) < 0)
                return CLI_EXIT_USAGE;
            break;
        case OPT_CHUNK:
            if (parse_duration("--chunk", optarg, 1, &c->chunk_ms) < 0)
                return CLI_EXIT_USAGE;
            break;
        case OPT_SETTLE:
            if (parse_duration("--settle", optarg, 0, &c->settle_ms) < 0)
                return CLI_EXIT_USAGE;
            break;
        case OPT_MAX_SPAN:
            if (parse_duration("--max-cycle-span", optarg, 1, &c->max_span_ms) < 0)
                return CLI_EXIT_USAGE;
            break;
        case OPT_ATTEMPTS:
            if (cli_parse_int64(cmd, "--retry-max-attempts", optarg, 1, 1000, &c->retry_attempts) <
                0)
                return CLI_EXIT_USAGE;
            break;
        case OPT_INITIAL:
            if (parse_duration("--retry-initial-interval", optarg, 1, &c->retry_initial_ms) < 0)
                return CLI_EXIT_USAGE;
            break;
        case OPT_MAX_INTERVAL:
            if (parse_duration("--retry-max-interval", optarg, 1, &c->retry_max_ms) < 0)
                return CLI_EXIT_USAGE;
            break;
        case 'h': fputs(ingest_influx_usage, stdout); return CLI_EXIT_OK;
        default: return cli_bad_option(cmd, opt, argv, optind);
        }
    }
    if (optind < argc)
        return cli_usage_error(cmd, "unexpected argument \"%s\"", argv[optind]);
    return check_options(cmd, o, &given);
}

/* --------------------------------------------------------------------- main --- */

/* Opens the ingest; on failure says why and returns the exit status. */
static int open_ingest(const char *cmd, const tly_influx_ingest_config *config,
                       tly_influx_ingest **ingest)
{
    char err[1024];
    int custom_topic;

    switch (tly_influx_ingest_open(config, ingest, err, sizeof(err))) {
    case 0: return -1;
    case TLY_INFLUX_INGEST_BAD_CONFIG: return cli_usage_error(cmd, "%s", err);
    case TLY_INFLUX_INGEST_NO_TOPIC:
        custom_topic = strcmp(config->topic, DEFAULT_TOPIC) != 0;
        fprintf(stderr,
                "tally ingest influxdb: %s; create it with "
                "`tally topics create --pipeline telemetry --brokers %s%s%s`\n",
                err, config->brokers, custom_topic ? " --input-topic " : "",
                custom_topic ? config->topic : "");
        return CLI_EXIT_FAILURE;
    default: fprintf(stderr, "tally ingest influxdb: %s\n", err); return CLI_EXIT_FAILURE;
    }
}

int cmd_ingest_influxdb(int argc, char **argv)
{
    static const char cmd[] = "ingest influxdb";
    struct options o;
    struct pods pods = {NULL, 0};
    tly_influx_map *map = NULL;
    tly_influx_ingest *ingest = NULL;
    struct sigaction sa;
    char err[1024];
    int status;

    memset(&o, 0, sizeof(o));
    if ((status = parse_options(&o, argc, argv)) >= 0)
        return status;

    /* Everything a mistake on the command line can break is checked before
     * anything is read or written: here, and by the ingest's open
     * (TLY_INFLUX_INGEST_BAD_CONFIG). */
    if (o.map_path && tly_influx_map_load(o.map_path, &map, err, sizeof(err)) < 0) {
        status = cli_usage_error(cmd, "%s", err);
        goto done;
    }
    if ((status = choose_pods(&o, map, &pods)) >= 0)
        goto done;
    o.ingest.map = map;
    o.ingest.pods = (const char *const *)pods.names;
    o.ingest.pod_count = pods.count;
    o.ingest.stop = &stop_requested;
    if ((status = open_ingest(cmd, &o.ingest, &ingest)) >= 0)
        goto done;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal; /* no SA_RESTART: a sleep ends at once */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    status = tly_influx_ingest_run(ingest) == 0 ? CLI_EXIT_OK : CLI_EXIT_FAILURE;
done:
    tly_influx_ingest_free(ingest);
    tly_influx_map_free(map);
    free_pods(&pods);
    return status;
}
