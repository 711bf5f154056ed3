/* adapters/cli/cli_run.c - tally run: the daemon. Flags in, tly_runner out. */
#include "cli_common.h"
#include "commands.h"

#include "runner.h"

#include <getopt.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char run_usage[] =
    "usage: tally run --pipeline orders|telemetry --brokers HOST:PORT[,...] [OPTIONS]\n"
    "\n"
    "Consumes the pipeline's input topic (read_committed), applies each batch to the\n"
    "state database and commits exactly once: one Kafka transaction carries the batch's\n"
    "changelog records, outputs, dead letters and input offsets; SQLite commits after.\n"
    "SIGTERM or SIGINT finishes the open batch and exits 0.\n"
    "\n"
    "  --brokers LIST           bootstrap servers (default: $KAFKA_BROKERS)\n"
    "  --topic-prefix P         internal topics P-changelog, P-snapshots, P-dlq (default opb)\n"
    "  --group-id G             consumer group (default opb)\n"
    "  --instance-id I          static group member and transactional.id (default <pipeline>-0);\n"
    "                           a second process with the same id fences the first\n"
    "  --input-topic T          default orders.enriched | sensor-service.dispatch.telemetry-aggregated\n"
    "  --output-topic T         default orders.output | sensor-service.dispatch.telemetry-latest-compacted\n"
    "  --state-dir DIR          the database is DIR/<pipeline>.db (default ./state)\n"
    "  --window-size DUR        orders window (default 60s; fixed per database)\n"
    "  --commit-interval-ms N   longest a batch collects before it commits (default 100)\n"
    "  --max-batch N            most events per batch (default 5000)\n"
    "  --changelog on|off       mirror the changelog to P-changelog (default on); with off,\n"
    "                           a crash between the Kafka and the SQLite commit loses that\n"
    "                           batch from the database (outputs stay correct in Kafka)\n"
    "  --snapshot-dir DIR       where snapshots go (default <state-dir>/snapshots)\n"
    "  --snapshot-interval DUR  time between snapshots (default 60s; 0 = none); each one's\n"
    "                           manifest also goes to P-snapshots, keyed by pipeline\n"
    "  --snapshot-keep N        newest snapshots kept (default 3)\n";

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

int cmd_run(int argc, char **argv)
{
    static const struct option options[] = {
        {"pipeline", required_argument, NULL, 'p'},
        {"brokers", required_argument, NULL, 'b'},
        {"topic-prefix", required_argument, NULL, 'P'},
        {"group-id", required_argument, NULL, 'g'},
        {"instance-id", required_argument, NULL, 'i'},
        {"input-topic", required_argument, NULL, 'I'},
        {"output-topic", required_argument, NULL, 'O'},
        {"state-dir", required_argument, NULL, 's'},
        {"window-size", required_argument, NULL, 'w'},
        {"commit-interval-ms", required_argument, NULL, 'c'},
        {"max-batch", required_argument, NULL, 'm'},
        {"changelog", required_argument, NULL, 'C'},
        {"snapshot-dir", required_argument, NULL, 'D'},
        {"snapshot-interval", required_argument, NULL, 'S'},
        {"snapshot-keep", required_argument, NULL, 'K'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    tly_runner_config cfg;
    const char *pipeline = NULL;
    char default_instance[128], err[1024];
    int64_t n;
    int opt;

    tly_runner_config_init(&cfg, NULL);
    cfg.brokers = getenv("KAFKA_BROKERS");
    opterr = 0;
    optind = 1;
    while ((opt = getopt_long(argc, argv, ":h", options, NULL)) != -1) {
        switch (opt) {
        case 'p': pipeline = optarg; break;
        case 'b': cfg.brokers = optarg; break;
        case 'P': cfg.topic_prefix = optarg; break;
        case 'g': cfg.group_id = optarg; break;
        case 'i': cfg.instance_id = optarg; break;
        case 'I': cfg.input_topic = optarg; break;
        case 'O': cfg.output_topic = optarg; break;
        case 's': cfg.state_dir = optarg; break;
        case 'D': cfg.snapshot_dir = optarg; break;
        case 'K':
            if (cli_parse_int64("run", "--snapshot-keep", optarg, 1, 1000, &n) < 0)
                return CLI_EXIT_USAGE;
            cfg.snapshot_keep = (int)n;
            break;
        case 'w':
            if (cli_parse_duration_ms("run", "--window-size", optarg, &cfg.window_ms) < 0)
                return CLI_EXIT_USAGE;
            if (cfg.window_ms < 1)
                return cli_usage_error("run", "--window-size must be at least 1ms");
            break;
        case 'S':
            if (cli_parse_duration_ms("run", "--snapshot-interval", optarg, &cfg.snapshot_interval_ms) < 0)
                return CLI_EXIT_USAGE;
            break;
        case 'c':
            if (cli_parse_int64("run", "--commit-interval-ms", optarg, 1, 600000, &cfg.commit_interval_ms) < 0)
                return CLI_EXIT_USAGE;
            break;
        case 'm':
            if (cli_parse_int64("run", "--max-batch", optarg, 1, 1000000, &n) < 0)
                return CLI_EXIT_USAGE;
            cfg.max_batch = (int)n;
            break;
        case 'C':
            if (strcmp(optarg, "on") == 0)
                cfg.changelog = 1;
            else if (strcmp(optarg, "off") == 0)
                cfg.changelog = 0;
            else
                return cli_usage_error("run", "--changelog must be on or off, not \"%s\"", optarg);
            break;
        case 'h': fputs(run_usage, stdout); return CLI_EXIT_OK;
        default: return cli_bad_option("run", opt, argv, optind);
        }
    }
    if (optind < argc)
        return cli_usage_error("run", "unexpected argument \"%s\"", argv[optind]);
    if (!pipeline)
        return cli_usage_error("run", "--pipeline is required (orders or telemetry)");
    if (strcmp(pipeline, "orders") && strcmp(pipeline, "telemetry"))
        return cli_usage_error("run", "--pipeline must be orders or telemetry, not \"%s\"", pipeline);
    if (!cfg.brokers || !*cfg.brokers)
        return cli_usage_error("run", "--brokers is required (or set KAFKA_BROKERS), e.g. "
                                      "--brokers 127.0.0.1:9092");
    if (cfg.window_ms > 0 && strcmp(pipeline, "orders") != 0)
        return cli_usage_error("run", "--window-size applies to the orders pipeline only");
    cfg.pipeline = pipeline;
    if (!cfg.instance_id) {
        snprintf(default_instance, sizeof(default_instance), "%s-0", pipeline);
        cfg.instance_id = default_instance;
    }
    cfg.stop = &stop_requested;
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    if (tly_runner_run(&cfg, err, sizeof(err)) < 0) {
        cli_log("error", "fatal", "error=%s", cli_quote(err, (char[1100]){0}, 1100));
        fprintf(stderr, "tally run: %s\n", err);
        return CLI_EXIT_FAILURE;
    }
    return CLI_EXIT_OK;
}
