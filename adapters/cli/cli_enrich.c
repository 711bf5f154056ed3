/* adapters/cli/cli_enrich.c - tally enrich: the upstream stage (OpA).
 *
 * Not a second daemon: the enrich pipeline (sql/enrich.sql) run by the same
 * exactly-once runner as tally run, with its own defaults. Its dedup state
 * must never be behind what orders.enriched holds, so the changelog is always
 * on: with it off, a crash between the Kafka and the SQLite commit would apply
 * that batch again from positions SQLite recorded, and the orders it first saw
 * would go out a second time. */
#include "cli_common.h"
#include "cli_daemon_flags.h"
#include "commands.h"

#include "runner.h"

#include <signal.h>

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
    "  --max-batch N            most events per batch (default 20000)\n"
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
    "  --query-max-bytes N      answer /query with at most N bytes of JSON, 413 beyond\n"
    "                           (default 16777216; no value may be longer either)\n"
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

int cmd_enrich(int argc, char **argv)
{
    tly_runner_config cfg;
    char err[1024], dedup_setting[64];
    const char *settings[2] = {dedup_setting, NULL};
    struct cli_daemon_extra extra;
    int rc = cli_daemon_flags_parse(CLI_DAEMON_ENRICH, enrich_usage, argc, argv, &cfg, &extra);

    if (rc >= 0)
        return rc;
    snprintf(dedup_setting, sizeof(dedup_setting), "dedup_window_ms=%lld",
             (long long)extra.dedup_window_ms);
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
