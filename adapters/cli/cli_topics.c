/* adapters/cli/cli_topics.c - tally topics create: a pipeline's five Kafka
 * topics, with the cleanup policies tally needs.
 *
 * The work is tly_topics_ensure's (adapters/kafka/topics.c): it checks every topic
 * before creating any, so a conflict changes nothing. This file adds the flags
 * and the report, one line per topic; to tell "created" from "exists" and to
 * print partition counts it reads the topic list itself, before and after. */
#include "cli_common.h"
#include "commands.h"

#include "kconf.h"
#include "pipeline.h"
#include "topics.h"

#include <getopt.h>
#include <librdkafka/rdkafka.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_TIMEOUT_MS 30000
#define COMMAND "topics create" /* for usage errors */

static const char topics_usage[] =
    "usage: tally topics create --pipeline orders|telemetry|enrich [--brokers B] [OPTIONS]\n"
    "\n"
    "Creates the pipeline's Kafka topics that do not exist yet:\n"
    "  input       the events (orders: orders.enriched, cleanup.policy=delete;\n"
    "              telemetry: sensor-service.dispatch.telemetry-aggregated, compact;\n"
    "              enrich: orders, delete)\n"
    "  output      the results (orders: orders.output; telemetry:\n"
    "              sensor-service.dispatch.telemetry-latest-compacted), compact;\n"
    "              enrich: orders.enriched, delete (a stream: the orders input)\n"
    "  (a pipeline file: its @input, else NAME.input, delete; its @output, else\n"
    "  NAME.output, compact)\n"
    "  PREFIX-changelog  compact, PREFIX-snapshots  compact, PREFIX-dlq  delete\n"
    "The internal PREFIX-* topics and a new output get the input's partition count;\n"
    "the replication factor is the broker's default. Topics that exist with the right\n"
    "cleanup.policy (and, internal ones, partition count) are left alone; any other\n"
    "difference is an error and nothing is created.\n"
    "\n"
    "  --brokers B          bootstrap servers (default: $KAFKA_BROKERS)\n" CLI_KAFKA_USAGE
    "  --pipeline NAME      orders, telemetry, enrich (give enrich --topic-prefix opa),\n"
    "                       or a pipeline .sql file\n"
    "  --partitions N       partitions of the input if it must be created (default 1)\n"
    "  --topic-prefix P     prefix of the internal topics (default opb; a pipeline\n"
    "                       file: its @pipeline name, as tally run)\n"
    "  --input-topic T      input topic (default: the pipeline's)\n"
    "  --input-cleanup-policy compact|delete  the input's policy if it is created here\n"
    "                       (default: the pipeline's, above)\n"
    "  --output-topic T     output topic (default: the pipeline's)\n"
    "  --timeout DUR        give up after DUR (default 30s)\n"
    "\n"
    "Prints one line per topic:\n"
    "  topic=NAME partitions=N cleanup.policy=POLICY status=created|exists\n"
    "Exit status 0 when all five topics are in place, 1 on a conflict or a Kafka\n"
    "error, 2 on a bad option.\n";

static void keep_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    (void)rk;
    (void)err;
    snprintf(opaque, 256, "%s", reason);
}

/* Sets partitions[i] to the partition count of names[i], or -1 if it does not
 * exist. Returns 0, or the librdkafka error. */
static rd_kafka_resp_err_t read_partitions(rd_kafka_t *rk, const char *const *names, int n,
                                           int *partitions, int timeout_ms)
{
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t err;
    for (int i = 0; i < n; i++)
        partitions[i] = -1;
    /* All topics: a metadata request naming one may auto-create it. */
    if ((err = rd_kafka_metadata(rk, 1, NULL, &md, timeout_ms)))
        return err;
    for (int t = 0; t < md->topic_cnt; t++)
        for (int i = 0; i < n; i++)
            if (strcmp(md->topics[t].topic, names[i]) == 0 &&
                md->topics[t].err != RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
                partitions[i] = md->topics[t].partition_cnt;
    rd_kafka_metadata_destroy(md);
    return RD_KAFKA_RESP_ERR_NO_ERROR;
}

/* The command line of tally topics create. */
struct create_options {
    const char *brokers, *pipeline, *prefix, *input, *output, *input_policy;
    int64_t partitions, timeout_ms;
};

/* Returns -1 to go on, or the exit status (usage error, --help). */
static int parse_create_options(struct create_options *o, int argc, char **argv)
{
    static const struct option options[] = {{"brokers", required_argument, NULL, 'b'},
                                            {"pipeline", required_argument, NULL, 'p'},
                                            {"partitions", required_argument, NULL, 'n'},
                                            {"topic-prefix", required_argument, NULL, 'x'},
                                            {"input-topic", required_argument, NULL, 'i'},
                                            {"output-topic", required_argument, NULL, 'o'},
                                            {"timeout", required_argument, NULL, 't'},
                                            {"input-cleanup-policy", required_argument, NULL, 'c'},
                                            CLI_KAFKA_OPTION,
                                            {"help", no_argument, NULL, 'h'},
                                            {NULL, 0, NULL, 0}};
    int opt;

    opterr = 0;
    optind = 1;
    while ((opt = getopt_long(argc, argv, ":hX:", options, NULL)) != -1) {
        switch (opt) {
        case 'b': o->brokers = optarg; break;
        case 'p': o->pipeline = optarg; break;
        case 'x': o->prefix = optarg; break;
        case 'X':
        case CLI_OPT_KAFKA_CONFIG:
            if (cli_kafka_option(COMMAND, opt, optarg) != 0)
                return CLI_EXIT_USAGE;
            break;
        case 'i': o->input = optarg; break;
        case 'o': o->output = optarg; break;
        case 'n':
            if (cli_parse_int64(COMMAND, "--partitions", optarg, 1, 100000, &o->partitions) < 0)
                return CLI_EXIT_USAGE;
            break;
        case 't':
            if (cli_parse_duration_ms(COMMAND, "--timeout", optarg, &o->timeout_ms) < 0)
                return CLI_EXIT_USAGE;
            if (o->timeout_ms < 1 || o->timeout_ms > 3600000)
                return cli_usage_error(COMMAND, "--timeout must be between 1ms and 1h");
            break;
        case 'c':
            if (strcmp(optarg, "compact") && strcmp(optarg, "delete"))
                return cli_usage_error(COMMAND,
                                       "--input-cleanup-policy must be compact or delete, "
                                       "not \"%s\"",
                                       optarg);
            o->input_policy = optarg;
            break;
        case 'h': fputs(topics_usage, stdout); return CLI_EXIT_OK;
        default: return cli_bad_option(COMMAND, opt, argv, optind);
        }
    }
    if (optind < argc)
        return cli_usage_error(COMMAND, "unexpected argument \"%s\"", argv[optind]);
    if (cli_kafka_settings(COMMAND, &o->brokers) != 0)
        return CLI_EXIT_USAGE;
    if (!o->pipeline)
        return cli_usage_error(COMMAND, "--pipeline is required (orders, telemetry, enrich or a "
                                        "pipeline .sql file)");
    return -1;
}

/* The client that lists the topics before and after; its errors land in
 * last_error (256 bytes). Errors are printed. */
static rd_kafka_t *open_lister(const struct create_options *o, char *last_error)
{
    static const char *const defaults[] = {"client.id", "tally-admin", NULL};
    rd_kafka_conf_t *conf = NULL;
    rd_kafka_t *rk;
    char err[1024];

    if (tly_kconf_check_cluster(o->brokers, (int)o->timeout_ms, err, sizeof(err)) < 0 ||
        !(conf = tly_kconf_new(o->brokers, defaults, NULL, err, sizeof(err)))) {
        fprintf(stderr, "tally topics create: %s\n", err);
        return NULL;
    }
    rd_kafka_conf_set_log_cb(conf, tly_kconf_drop_log);
    rd_kafka_conf_set_error_cb(conf, keep_error);
    rd_kafka_conf_set_opaque(conf, last_error);
    if (!(rk = tly_kconf_client(RD_KAFKA_PRODUCER, conf, "a Kafka client", err, sizeof(err))))
        fprintf(stderr, "tally topics create: %s\n", err);
    return rk;
}

/* Creates what is missing of the five topics and prints one line each. */
static int create_topics(const struct create_options *o, const tly_topic_layout *layout,
                         rd_kafka_t *rk, const char *last_error)
{
    const tly_topic_spec *specs[5] = {&layout->input, &layout->output, &layout->changelog,
                                      &layout->snapshots, &layout->dlq};
    const char *names[5];
    int before[5], after[5], created = 0, timeout_ms = (int)o->timeout_ms;
    rd_kafka_resp_err_t kerr;
    char err[1024];

    for (int i = 0; i < 5; i++)
        names[i] = specs[i]->name;
    /* This first list tells created from existing below. */
    if ((kerr = read_partitions(rk, names, 5, before, timeout_ms))) {
        rd_kafka_poll(rk, 0); /* serves keep_error */
        fprintf(stderr, "tally topics create: cannot read the topic list from %s: %s%s%s%s\n",
                o->brokers, rd_kafka_err2str(kerr), last_error[0] ? " (last error: " : "",
                last_error, last_error[0] ? ")" : "");
        return -1;
    }
    if (tly_topics_ensure(o->brokers, layout, TLY_TOPIC_ALL, (int)o->partitions, timeout_ms,
                          &created, err, sizeof(err)) < 0) {
        fprintf(stderr, "tally topics create: %s\n", err);
        return -1;
    }
    if ((kerr = read_partitions(rk, names, 5, after, timeout_ms))) {
        fprintf(stderr,
                "tally topics create: the topics are in place, but reading the topic list "
                "from %s failed: %s\n",
                o->brokers, rd_kafka_err2str(kerr));
        return -1;
    }
    if (o->partitions > 0 && before[0] > 0 && before[0] != o->partitions)
        fprintf(stderr,
                "tally topics create: note: input %s already has %d partitions; "
                "--partitions %lld applies only to a new input\n",
                layout->input.name, before[0], (long long)o->partitions);
    /* A topic missing from the first list was created by us or, when we
     * created none, by a concurrent `tally topics create`. */
    for (int i = 0; i < 5; i++)
        printf("topic=%s partitions=%d cleanup.policy=%s status=%s\n", names[i], after[i],
               specs[i]->cleanup_policy, before[i] < 0 && created > 0 ? "created" : "exists");
    return 0;
}

static int topics_create(int argc, char **argv)
{
    struct create_options o = {.timeout_ms = DEFAULT_TIMEOUT_MS};
    tly_topic_layout layout;
    tly_pipeline_info info;
    rd_kafka_t *rk;
    char err[1024], last_error[256] = "";
    int status;

    if ((status = parse_create_options(&o, argc, argv)) >= 0)
        return status;
    /* The daemon's default prefix: a pipeline file's name, else opb. */
    if (!o.prefix && tly_pipeline_is_file(o.pipeline)) {
        if (tly_pipeline_describe(o.pipeline, &info, err, sizeof(err)) < 0)
            return cli_usage_error(COMMAND, "%s", err);
        o.prefix = info.name;
    }
    if (!o.prefix)
        o.prefix = "opb";
    /* A bad name is a bad flag value: the user must change the command line. */
    if (tly_topics_layout(o.pipeline, o.prefix, o.input, o.output, &layout, err, sizeof(err)) < 0)
        return cli_usage_error(COMMAND, "%s", err);
    if (o.input_policy)
        layout.input.cleanup_policy = o.input_policy;
    if (!(rk = open_lister(&o, last_error)))
        return CLI_EXIT_FAILURE;
    status = create_topics(&o, &layout, rk, last_error) == 0 ? CLI_EXIT_OK : CLI_EXIT_FAILURE;
    rd_kafka_destroy(rk);
    return status;
}

int cmd_topics(int argc, char **argv)
{
    if (argc < 2)
        return cli_usage_error("topics", "a subcommand is required: tally topics create");
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        fputs(topics_usage, stdout);
        return CLI_EXIT_OK;
    }
    if (strcmp(argv[1], "create") == 0)
        return topics_create(argc - 1, argv + 1);
    return cli_usage_error("topics", "unknown subcommand \"%s\" (the only one is create)", argv[1]);
}
