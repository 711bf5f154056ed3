/* adapters/cli/main.c - tally: embedded-SQL stream aggregation engine. */
#include "cli_common.h"
#include "commands.h"

#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: tally COMMAND [OPTIONS]\n"
    "\n"
    "tally folds JSON events into SQLite tables you can query with SQL while it runs,\n"
    "records every change in a changelog, and replays it.\n"
    "\n"
    "Commands:\n"
    "  ingest      apply a JSONL file of events to a state database; 'ingest influxdb'\n"
    "              polls InfluxDB and produces the latest telemetry per VIN to Kafka\n"
    "  query       run a read-only SQL query against a state database\n"
    "  changelog   export the changelog as JSONL (tally changelog export)\n"
    "  replay      rebuild or update a state database from a changelog export\n"
    "  snapshot    write a consistent copy of a state database (online backup API)\n"
    "  restore     check a snapshot and copy it to a new database\n"
    "  recover     bring a state database back from snapshot + changelog (or plan it)\n"
    "  run         the daemon: consume Kafka, apply, commit exactly once\n"
    "  publish     emit what a state_store daemon keeps, from another process\n"
    "  enrich      validate, normalize and dedupe raw orders into orders.enriched\n"
    "  topics      create a pipeline's Kafka topics (tally topics create)\n"
    "  produce     send generated events to Kafka at a steady rate\n"
    "  demo        run both pipelines on generated events and show them live\n"
    "\n"
    "Run 'tally COMMAND --help' for a command's options.\n";

int main(int argc, char **argv)
{
    static const struct {
        const char *name;
        int (*run)(int, char **);
    } commands[] = {
        {"ingest", cmd_ingest},     {"query", cmd_query},     {"changelog", cmd_changelog},
        {"replay", cmd_replay},     {"demo", cmd_demo},       {"run", cmd_run},
        {"enrich", cmd_enrich},     {"topics", cmd_topics},   {"produce", cmd_produce},
        {"snapshot", cmd_snapshot}, {"restore", cmd_restore}, {"recover", cmd_recover},
        {"publish", cmd_publish},
    };

    if (argc < 2) {
        fputs(usage, stderr);
        return CLI_EXIT_USAGE;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        fputs(usage, stdout);
        return CLI_EXIT_OK;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("tally 0.1.0\n");
        return CLI_EXIT_OK;
    }
    /* Every command's log lines follow these; tally run also takes them as flags. */
    if (getenv("TALLY_LOG_LEVEL") && *getenv("TALLY_LOG_LEVEL") &&
        tly_log_set_level(getenv("TALLY_LOG_LEVEL")) < 0) {
        fprintf(stderr, "tally: TALLY_LOG_LEVEL must be debug, info, warn or error, not \"%s\"\n",
                getenv("TALLY_LOG_LEVEL"));
        return CLI_EXIT_USAGE;
    }
    if (getenv("TALLY_LOG_FORMAT") && *getenv("TALLY_LOG_FORMAT") &&
        tly_log_set_format(getenv("TALLY_LOG_FORMAT")) < 0) {
        fprintf(stderr, "tally: TALLY_LOG_FORMAT must be logfmt or json, not \"%s\"\n",
                getenv("TALLY_LOG_FORMAT"));
        return CLI_EXIT_USAGE;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (strcmp(argv[1], commands[i].name) == 0)
            return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "tally: unknown command \"%s\"\n\n%s", argv[1], usage);
    return CLI_EXIT_USAGE;
}
