/* adapters/cli/cli_run.c - tally run and tally recover: the daemon. Flags in
 * (cli_daemon_flags.c), tly_runner out. */
#include "cli_common.h"
#include "cli_daemon_flags.h"
#include "commands.h"

#include "kconf.h"
#include "pipeline.h"
#include "recovery.h"
#include "runner.h"
#include "store.h"
#include "topics.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>

static const char run_usage[] =
    "usage: tally run --pipeline orders|telemetry|FILE.sql --brokers HOST:PORT[,...] [OPTIONS]\n"
    "\n"
    "Consumes the pipeline's input topic (read_committed), applies each batch to the\n"
    "state database and commits exactly once. The pipeline is a built-in one or a SQL\n"
    "file of your own (-- @state and -- @fold, see the README: Write your own pipeline).\n"
    "One Kafka transaction carries the batch's changelog records, outputs, dead letters\n"
    "and input offsets; SQLite commits after.\n"
    "SIGTERM or SIGINT finishes the open batch and exits 0.\n"
    "\n"
    "  --brokers LIST           bootstrap servers (default: $KAFKA_BROKERS)\n" CLI_KAFKA_USAGE
    "  --topic-prefix P         internal topics P-changelog, P-snapshots, P-dlq (default opb;\n"
    "                           a pipeline file: its @pipeline name)\n"
    "  --group-id G             consumer group (default opb; a pipeline file: its name)\n"
    "  --instance-id I          static group member and transactional.id (default <pipeline>-0);\n"
    "                           a second process with the same id fences the first\n"
    "  --input-topic T          default orders.enriched | sensor-service.dispatch.telemetry-aggregated\n"
    "                           | a file's @input, else <name>.input\n"
    "  --output-topic T         default orders.output | sensor-service.dispatch.telemetry-latest-compacted\n"
    "                           | a file's @output, else <name>.output\n"
    "  --state-dir DIR          the database is DIR/<pipeline>.db (default ./state)\n"
    "  --set NAME=VALUE         a pipeline file's -- @param setting (repeatable); fixed per\n"
    "                           database, as --window-size\n"
    "  --window-size DUR        orders: tumbling window (default 60s); telemetry: the\n"
    "                           window_stream windows (default 120s); fixed per database\n"
    "  --commit-interval-ms N   longest a batch collects before it commits (default 100)\n"
    "  --max-batch N            most events per batch (default 20000; 50000 for telemetry\n"
    "                           with log_compacted or state_store, whose outputs do not\n"
    "                           wait for a batch: fewer, larger batches apply faster)\n"
    "  --changelog on|off       mirror the changelog to P-changelog (default on); with off,\n"
    "                           a crash between the Kafka and the SQLite commit loses that\n"
    "                           batch from the database (outputs stay correct in Kafka)\n"
    "  --snapshot-dir DIR       where snapshots go (default <state-dir>/snapshots)\n"
    "  --snapshot-interval DUR  time between snapshots (default 60s; 0 = none); each one's\n"
    "                           manifest also goes to P-snapshots, keyed by pipeline\n"
    "  --snapshot-keep N        newest snapshots kept (default 3)\n"
    "  --changelog-retention DUR  changelog table rows a snapshot holds are pruned once\n"
    "                           older than this; keep some for tally changelog export\n"
    "                           (default 0: pruned at once; the changelog topic has them)\n"
    "  --allow-empty            start with an empty state even though the group has\n"
    "                           committed offsets and nothing can rebuild the state\n"
    "  --session-timeout DUR    consumer group session (default 45s): an instance that\n"
    "                           stops answering keeps its partitions this long before\n"
    "                           the others take them over (the broker allows 6s-30m)\n"
    "  --transaction-timeout DUR  the broker aborts a transaction left open this long\n"
    "                           (default 60s): after a crash, read_committed readers and\n"
    "                           the instance taking over wait up to this; a batch, flush\n"
    "                           or snapshot manifest must commit within it\n"
    "  --http HOST:PORT|off     serve /metrics, /healthz, /readyz, /query and a live page\n"
    "                           (default 127.0.0.1:9464; if that is taken, tally runs\n"
    "                           without it and says so; an address given here must work)\n"
    "  --http-token T           require \"Authorization: Bearer T\" on /query and /metrics\n"
    "                           (default: $TALLY_HTTP_TOKEN, else none)\n"
    "  --query-timeout-ms N     interrupt a /query after N ms (default 5000)\n"
    "  --query-max-rows N       return at most N rows from /query (default 10000)\n"
    "  --query-max-bytes N      answer /query with at most N bytes of JSON, 413 beyond\n"
    "                           (default 16777216; no value may be longer either)\n"
    "  --strategy S             when outputs go out (telemetry; orders is always inline):\n"
    "                             inline         each batch's changed records\n"
    "                             log_compacted  every --flush-interval, the latest record\n"
    "                                            of everything changed since the last\n"
    "                                            flush, in one transaction (default)\n"
    "                             window_stream  a vehicle's record when the event-time\n"
    "                                            window (--window-size) it changed in\n"
    "                                            closes; later readings are dead-lettered\n"
    "                             state_store    nothing: tally publish emits from the\n"
    "                                            database\n"
    "  --flush-interval DUR     log_compacted: time between flushes (default 120s)\n"
    "  --allowed-lateness DUR   window_stream: a window closes once the newest reading\n"
    "                           is this far past its end (default 0)\n"
    "  --batch-size N           pack up to N records into one output message, a JSON\n"
    "                           array keyed by the first record's key (default 1; not\n"
    "                           with log_compacted: a compacted topic keeps one per key)\n"
    "  --log-level L            debug, info (default), warn or error ($TALLY_LOG_LEVEL)\n"
    "  --log-format F           logfmt (default) or json, one object per line\n"
    "                           ($TALLY_LOG_FORMAT)\n"
    "\n"
    "On start, the database is recovered first (see tally recover --help): an intact\n"
    "database replays the changelog after its recorded offsets; a missing or failing\n"
    "one is replaced by the newest snapshot that verifies, then the changelog after it.\n";

static const char recover_usage[] =
    "usage: tally recover --pipeline orders|telemetry|FILE.sql --brokers HOST:PORT[,...]\n"
    "                     [--dry-run] [OPTIONS]\n"
    "\n"
    "Brings the state database back as tally run does on start, then exits:\n"
    "  intact database       replay the changelog records after its recorded offsets\n"
    "  missing or failing    move it aside (DB.failed-TIME), restore the newest snapshot\n"
    "                        whose checksum and SQLite check pass (manifests from the\n"
    "                        P-snapshots topic, the failed database, the snapshot\n"
    "                        directory), else the one before it, else an empty database;\n"
    "                        then replay the changelog topic after the snapshot's offsets\n"
    "It refuses to leave an empty state when the consumer group has committed offsets\n"
    "(or snapshots existed) unless --allow-empty. Run it while no tally run of this\n"
    "--instance-id is running: it fences that instance's transactions.\n"
    "\n"
    "  --dry-run                print the plan (database check, snapshots and whether each\n"
    "                           verifies, changelog offsets, records and bytes to replay)\n"
    "                           and change nothing\n"
    "  --state-dir, --snapshot-dir, --topic-prefix, --group-id, --instance-id,\n"
    "  --input-topic, --changelog on|off, --allow-empty, --brokers, -X, --kafka-config:\n"
    "  as for tally run (the other tally run options are accepted and have no effect here)\n";

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

int cmd_run(int argc, char **argv)
{
    tly_runner_config cfg;
    struct cli_daemon_extra extra;
    char err[1024];
    int rc = cli_daemon_flags_parse(CLI_DAEMON_RUN, run_usage, argc, argv, &cfg, &extra);

    if (rc >= 0)
        return rc;
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

/* The pipeline's entity, from a throwaway in-memory database: a dry run must
 * not touch the real one. */
static int pipeline_entity(const char *pipeline, char *buf, size_t len, char *err, size_t errlen)
{
    tly_store *store = NULL;
    tly_pipeline *p = NULL;
    int rc = -1;
    if (tly_store_open(":memory:", NULL, &store, err, errlen) == 0 &&
        tly_pipeline_open(store, pipeline, NULL, 0, &p, err, errlen) == 0) {
        snprintf(buf, len, "%s", tly_pipeline_entity(p));
        rc = 0;
    }
    tly_pipeline_close(p);
    tly_store_close(store);
    return rc;
}

static int recover_dry_run(const tly_runner_config *cfg)
{
    tly_recovery_config rcfg;
    tly_recovery_report *report = calloc(1, sizeof(*report));
    tly_topic_layout topics;
    char db_path[4200], snapshot_dir[4200], entity[128], err[2048];
    int rc = CLI_EXIT_FAILURE;

    if (!report) {
        fprintf(stderr, "tally recover: out of memory\n");
        return CLI_EXIT_FAILURE;
    }
    const char *source = cfg->pipeline_file ? cfg->pipeline_file : cfg->pipeline;
    if (tly_topics_layout(source, cfg->topic_prefix, cfg->input_topic, cfg->output_topic, &topics,
                          err, sizeof(err)) < 0 ||
        pipeline_entity(source, entity, sizeof(entity), err, sizeof(err)) < 0) {
        fprintf(stderr, "tally recover: %s\n", err);
        goto done;
    }
    snprintf(db_path, sizeof(db_path), "%s/%s.db", cfg->state_dir, cfg->pipeline);
    snprintf(snapshot_dir, sizeof(snapshot_dir), "%s", cfg->snapshot_dir ? cfg->snapshot_dir : "");
    if (!cfg->snapshot_dir)
        snprintf(snapshot_dir, sizeof(snapshot_dir), "%s/snapshots", cfg->state_dir);
    memset(&rcfg, 0, sizeof(rcfg));
    rcfg.brokers = cfg->brokers;
    rcfg.pipeline = cfg->pipeline;
    rcfg.pipeline_file = cfg->pipeline_file;
    rcfg.topics = &topics;
    rcfg.group_id = cfg->group_id;
    rcfg.db_path = db_path;
    rcfg.snapshot_dir = snapshot_dir;
    rcfg.changelog = cfg->changelog;
    rcfg.allow_empty = cfg->allow_empty;
    rcfg.dry_run = 1;
    rcfg.stop = &stop_requested;
    if (tly_kconf_check_cluster(cfg->brokers, 30000, err, sizeof(err)) < 0) {
        fprintf(stderr, "tally recover: %s\n", err);
        goto done;
    }
    if (tly_recovery_prepare(&rcfg, report, err, sizeof(err)) < 0 ||
        tly_recovery_replay(&rcfg, entity, report, NULL, err, sizeof(err)) < 0) {
        fprintf(stderr, "tally recover: %s\n", err);
        goto done;
    }
    if (tly_recovery_finish(&rcfg, report, err, sizeof(err)) < 0) {
        tly_recovery_print(&rcfg, report, stdout);
        printf("outcome     tally run would refuse to start: %s\n", err);
        goto done;
    }
    tly_recovery_print(&rcfg, report, stdout);
    printf("outcome     dry run: nothing was changed\n");
    rc = CLI_EXIT_OK;
done:
    free(report);
    return rc;
}

int cmd_recover(int argc, char **argv)
{
    tly_runner_config cfg;
    struct cli_daemon_extra extra;
    char err[1024];
    int rc = cli_daemon_flags_parse(CLI_DAEMON_RECOVER, recover_usage, argc, argv, &cfg, &extra);

    if (rc >= 0)
        return rc;
    cfg.stop = &stop_requested;
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    if (extra.dry_run)
        return recover_dry_run(&cfg);
    cfg.recover_only = 1;
    cfg.http_listen = NULL; /* a recovery serves nothing */
    if (tly_runner_run(&cfg, err, sizeof(err)) < 0) {
        fprintf(stderr, "tally recover: %s\n", err);
        return CLI_EXIT_FAILURE;
    }
    return CLI_EXIT_OK;
}
