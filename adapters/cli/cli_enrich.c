/* adapters/cli/cli_enrich.c - tally enrich: the upstream stage (OpA).
 *
 * Not a second daemon: the enrich pipeline (sql/enrich.sql) run by the same
 * exactly-once runner as tally run, with its own defaults. Its dedup state
 * must never be behind what orders.enriched holds, so the changelog is always
 * on: with it off, a crash between the Kafka and the SQLite commit would apply
 * that batch again from positions SQLite recorded, and the orders it first saw
 * would go out a second time. */
#include "cli_common.h"
#include "commands.h"

#include "http.h"
#include "log.h"
#include "runner.h"

#include <getopt.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_DEDUP_WINDOW_MS (24LL * 3600 * 1000)
#define MAX_DEDUP_WINDOW_MS (366LL * 24 * 3600 * 1000)

static const char enrich_usage[] =
    "usage: tally enrich --brokers HOST:PORT[,...] [OPTIONS]\n"
    "\n"
    "Validates raw orders {orderId, productId, price, qty, storeId, ts}, normalizes ts\n"
    "(epoch ms, epoch seconds below 1e11, or RFC 3339) into normTs (epoch ms), sets\n"
    "validated: true, and passes each orderId on once within --dedup-window, exactly\n"
    "once: one Kafka transaction carries a batch's outputs, dead letters, dedup changelog\n"
    "and input offsets; SQLite commits after. Output records are keyed by storeId and are\n"
    "what tally run --pipeline orders reads. Invalid orders go to P-dlq with the reason.\n"
    "SIGTERM or SIGINT finishes the open batch and exits 0.\n"
    "\n"
    "  --brokers LIST           bootstrap servers (default: $KAFKA_BROKERS)\n" CLI_KAFKA_USAGE
    "  --input-topic T          raw orders (default orders)\n"
    "  --output-topic T         enriched orders, a stream (default orders.enriched)\n"
    "  --group-id G             consumer group (default opa)\n"
    "  --topic-prefix P         internal topics P-changelog, P-snapshots, P-dlq (default opa)\n"
    "  --instance-id I          static group member and transactional.id (default enrich-0);\n"
    "                           a second process with the same id fences the first\n"
    "  --state-dir DIR          the dedup database is DIR/enrich.db (default ./state)\n"
    "  --dedup-window DUR       a copy of an orderId first seen less than DUR ago is dropped;\n"
    "                           one arriving later counts as a new order (default 24h;\n"
    "                           may change between runs)\n"
    "  --commit-interval-ms N   longest a batch collects before it commits (default 100)\n"
    "  --max-batch N            most events per batch (default 5000)\n"
    "  --snapshot-dir DIR       where snapshots go (default <state-dir>/snapshots)\n"
    "  --snapshot-interval DUR  time between snapshots (default 60s; 0 = none)\n"
    "  --snapshot-keep N        newest snapshots kept (default 3)\n"
    "  --changelog-retention DUR  changelog table rows a snapshot holds are pruned once\n"
    "                           older than this (default 0)\n"
    "  --allow-empty            start with an empty dedup state even though the group has\n"
    "                           committed offsets and nothing can rebuild the state\n"
    "  --session-timeout DUR    consumer group session (default 45s): how long a silent\n"
    "                           instance keeps its partitions\n"
    "  --transaction-timeout DUR  the broker aborts a transaction left open this long\n"
    "                           (default 60s)\n"
    "  --http HOST:PORT|off     /metrics, /healthz, /readyz, /query and a live page (default\n"
    "                           127.0.0.1:9466; if that is taken, tally runs without it)\n"
    "  --http-token T           require \"Authorization: Bearer T\" on /query and /metrics\n"
    "  --query-timeout-ms N     interrupt a /query after N ms (default 5000)\n"
    "  --query-max-rows N       return at most N rows from /query (default 10000)\n"
    "  --log-level L            debug, info (default), warn or error ($TALLY_LOG_LEVEL)\n"
    "  --log-format F           logfmt (default) or json ($TALLY_LOG_FORMAT)\n"
    "\n"
    "The full path: tally enrich (orders -> orders.enriched), then\n"
    "tally run --pipeline orders (orders.enriched -> orders.output).\n";

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

/* Returns -1 when the flags are fine, else the exit status. */
static int parse_flags(int argc, char **argv, tly_runner_config *cfg, int64_t *dedup_window_ms)
{
    static const struct option options[] = {{"brokers", required_argument, NULL, 'b'},
                                            {"topic-prefix", required_argument, NULL, 'P'},
                                            {"group-id", required_argument, NULL, 'g'},
                                            {"instance-id", required_argument, NULL, 'i'},
                                            {"input-topic", required_argument, NULL, 'I'},
                                            {"output-topic", required_argument, NULL, 'O'},
                                            {"state-dir", required_argument, NULL, 's'},
                                            {"dedup-window", required_argument, NULL, 'W'},
                                            {"commit-interval-ms", required_argument, NULL, 'c'},
                                            {"max-batch", required_argument, NULL, 'm'},
                                            {"snapshot-dir", required_argument, NULL, 'D'},
                                            {"snapshot-interval", required_argument, NULL, 'S'},
                                            {"snapshot-keep", required_argument, NULL, 'K'},
                                            {"changelog-retention", required_argument, NULL, 'R'},
                                            {"allow-empty", no_argument, NULL, 'E'},
                                            {"http", required_argument, NULL, 'H'},
                                            {"http-token", required_argument, NULL, 'T'},
                                            {"query-timeout-ms", required_argument, NULL, 'q'},
                                            {"query-max-rows", required_argument, NULL, 'r'},
                                            {"log-level", required_argument, NULL, 'L'},
                                            {"log-format", required_argument, NULL, 'F'},
                                            {"session-timeout", required_argument, NULL, 'x'},
                                            {"transaction-timeout", required_argument, NULL, 'Z'},
                                            CLI_KAFKA_OPTION,
                                            {"help", no_argument, NULL, 'h'},
                                            /* tally run flags that mean nothing here: named, so the
                                             * message says why rather than "unknown option" */
                                            {"pipeline", required_argument, NULL, 1},
                                            {"window-size", required_argument, NULL, 2},
                                            {"changelog", required_argument, NULL, 3},
                                            {"strategy", required_argument, NULL, 4},
                                            {"flush-interval", required_argument, NULL, 5},
                                            {NULL, 0, NULL, 0}};
    static const char *cmd = "enrich";
    int64_t n;
    int opt;

    tly_runner_config_init(cfg, "enrich");
    cfg->brokers = NULL; /* cli_kafka_settings */
    cfg->topic_prefix = "opa";
    cfg->group_id = "opa";
    cfg->instance_id = "enrich-0";
    cfg->http_listen = "127.0.0.1:9466";
    cfg->http_token = getenv("TALLY_HTTP_TOKEN");
    *dedup_window_ms = DEFAULT_DEDUP_WINDOW_MS;
    opterr = 0;
    optind = 1;
    while ((opt = getopt_long(argc, argv, ":hX:", options, NULL)) != -1) {
        switch (opt) {
        case 'b': cfg->brokers = optarg; break;
        case 'P': cfg->topic_prefix = optarg; break;
        case 'g': cfg->group_id = optarg; break;
        case 'i': cfg->instance_id = optarg; break;
        case 'I': cfg->input_topic = optarg; break;
        case 'O': cfg->output_topic = optarg; break;
        case 's': cfg->state_dir = optarg; break;
        case 'D': cfg->snapshot_dir = optarg; break;
        case 'W':
            if (cli_parse_duration_ms(cmd, "--dedup-window", optarg, dedup_window_ms) < 0)
                return CLI_EXIT_USAGE;
            /* a window of 0 would make every copy new; first-seen times
             * of one orderId must also differ for replay (006_enrich.sql) */
            if (*dedup_window_ms < 1 || *dedup_window_ms > MAX_DEDUP_WINDOW_MS)
                return cli_usage_error(cmd,
                                       "--dedup-window must be between 1ms and 366d, not \"%s\" "
                                       "(e.g. 24h, 90m)",
                                       optarg);
            break;
        case 'K':
            if (cli_parse_int64(cmd, "--snapshot-keep", optarg, 1, 1000, &n) < 0)
                return CLI_EXIT_USAGE;
            cfg->snapshot_keep = (int)n;
            break;
        case 'S':
            if (cli_parse_duration_ms(cmd, "--snapshot-interval", optarg,
                                      &cfg->snapshot_interval_ms) < 0)
                return CLI_EXIT_USAGE;
            break;
        case 'c':
            if (cli_parse_int64(cmd, "--commit-interval-ms", optarg, 1, 600000,
                                &cfg->commit_interval_ms) < 0)
                return CLI_EXIT_USAGE;
            break;
        case 'm':
            if (cli_parse_int64(cmd, "--max-batch", optarg, 1, 1000000, &n) < 0)
                return CLI_EXIT_USAGE;
            cfg->max_batch = (int)n;
            break;
        case 'R':
            if (cli_parse_duration_ms(cmd, "--changelog-retention", optarg,
                                      &cfg->changelog_retention_ms) < 0)
                return CLI_EXIT_USAGE;
            break;
        case 'E': cfg->allow_empty = 1; break;
        case 'x':
        case 'Z':
            if (cli_group_timeout(cmd, opt == 'x' ? "--session-timeout" : "--transaction-timeout",
                                  optarg, cfg) != 0)
                return CLI_EXIT_USAGE;
            break;
        case 'X':
        case CLI_OPT_KAFKA_CONFIG:
            if (cli_kafka_option(cmd, opt, optarg) != 0)
                return CLI_EXIT_USAGE;
            break;
        case 'H':
            if (strcmp(optarg, "off") == 0) {
                cfg->http_listen = NULL;
            } else {
                char host[256];
                int port;
                if (tly_http_parse_listen(optarg, host, sizeof(host), &port) < 0)
                    return cli_usage_error(cmd,
                                           "--http wants HOST:PORT (e.g. 127.0.0.1:9466) or off, "
                                           "not \"%s\"",
                                           optarg);
                cfg->http_listen = optarg;
            }
            cfg->http_required = 1;
            break;
        case 'T': cfg->http_token = optarg; break;
        case 'q':
            if (cli_parse_int64(cmd, "--query-timeout-ms", optarg, 1, 3600000,
                                &cfg->query_timeout_ms) < 0)
                return CLI_EXIT_USAGE;
            break;
        case 'r':
            if (cli_parse_int64(cmd, "--query-max-rows", optarg, 1, 100000000,
                                &cfg->query_max_rows) < 0)
                return CLI_EXIT_USAGE;
            break;
        case 'L':
            if (tly_log_set_level(optarg) < 0)
                return cli_usage_error(
                    cmd, "--log-level must be debug, info, warn or error, not \"%s\"", optarg);
            break;
        case 'F':
            if (tly_log_set_format(optarg) < 0)
                return cli_usage_error(cmd, "--log-format must be logfmt or json, not \"%s\"",
                                       optarg);
            break;
        case 1:
            return cli_usage_error(cmd,
                                   "--pipeline is not an enrich option: tally enrich always runs "
                                   "the enrich pipeline (tally run --pipeline orders|telemetry "
                                   "runs the others)");
        case 2:
            return cli_usage_error(cmd, "--window-size is not an enrich option: windows belong to "
                                        "tally run --pipeline orders; the dedup window is "
                                        "--dedup-window");
        case 3:
            return cli_usage_error(cmd, "--changelog is always on for enrich: without it a crash "
                                        "between the Kafka and the SQLite commit would emit that "
                                        "batch's orders twice");
        case 4:
        case 5:
            return cli_usage_error(cmd,
                                   "--%s is not an enrich option: each committed batch emits "
                                   "the orders it saw first",
                                   opt == 4 ? "strategy" : "flush-interval");
        case 'h': fputs(enrich_usage, stdout); return CLI_EXIT_OK;
        default: return cli_bad_option(cmd, opt, argv, optind);
        }
    }
    if (optind < argc)
        return cli_usage_error(cmd, "unexpected argument \"%s\"", argv[optind]);
    if (cfg->http_token && !*cfg->http_token)
        cfg->http_token = NULL;
    if (cli_kafka_settings(cmd, &cfg->brokers) != 0)
        return CLI_EXIT_USAGE;
    return -1;
}

int cmd_enrich(int argc, char **argv)
{
    tly_runner_config cfg;
    char err[1024], dedup_setting[64];
    const char *settings[2] = {dedup_setting, NULL};
    int64_t dedup_window_ms;
    int rc = parse_flags(argc, argv, &cfg, &dedup_window_ms);

    if (rc >= 0)
        return rc;
    snprintf(dedup_setting, sizeof(dedup_setting), "dedup_window_ms=%lld",
             (long long)dedup_window_ms);
    cfg.pipeline_settings = settings;
    cfg.stop = &stop_requested;
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    if (tly_runner_run(&cfg, err, sizeof(err)) < 0) {
        cli_log("error", "fatal", "error=%s", cli_quote(err, (char[1100]){0}, 1100));
        fprintf(stderr, "tally enrich: %s\n", err);
        return CLI_EXIT_FAILURE;
    }
    return CLI_EXIT_OK;
}
