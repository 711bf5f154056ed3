/* adapters/cli/cli_daemon_flags.h - the flags of the three daemons, tally
 * run, tally recover and tally enrich, from one table.
 *
 * They share most flags and fill the same tly_runner_config, so one table
 * says, per flag, which of them accept it, what it sets and how its value is
 * read; a command that does not take a flag another one does either does not
 * know it ("unknown option") or names it to say why not. */
#ifndef TLY_CLI_DAEMON_FLAGS_H
#define TLY_CLI_DAEMON_FLAGS_H

#include "runner.h"

#include <stddef.h>
#include <stdint.h>

enum cli_daemon_cmd { CLI_DAEMON_RUN, CLI_DAEMON_RECOVER, CLI_DAEMON_ENRICH };

#define CLI_DAEMON_MAX_SETTINGS 16

/* What the flags set beyond tly_runner_config. */
struct cli_daemon_extra {
    int dry_run;             /* recover --dry-run */
    int64_t dedup_window_ms; /* enrich --dedup-window (default 24h) */
    /* run and recover without --instance-id: "<pipeline>-0", which
     * cfg->instance_id then points at */
    char default_instance[128];
    /* --pipeline FILE.sql: its @pipeline name, which cfg->pipeline then
     * points at (cfg->pipeline_file at the path) */
    char pipeline_name[64];
    /* --set NAME=VALUE (run, recover), which cfg->pipeline_settings then
     * points at: NULL-terminated */
    const char *settings[CLI_DAEMON_MAX_SETTINGS + 1];
    int nsettings;
};

/* Parses argv (argv[0] is the command) for cmd into cfg and extra, first
 * filling both with that command's defaults. --help prints usage on stdout.
 * Returns -1 when the flags are fine; else the exit status: CLI_EXIT_OK after
 * --help, CLI_EXIT_USAGE after printing the problem on stderr
 * (cli_usage_error). cfg may point into argv and into extra afterwards. */
int cli_daemon_flags_parse(enum cli_daemon_cmd cmd, const char *usage, int argc, char **argv,
                           tly_runner_config *cfg, struct cli_daemon_extra *extra);

/* How cmd treats a long flag (name without "--"). */
enum cli_daemon_flag_use {
    CLI_DAEMON_FLAG_UNKNOWN,  /* "unknown option" */
    CLI_DAEMON_FLAG_ACCEPTED, /* parsed into the configuration */
    CLI_DAEMON_FLAG_REJECTED  /* named only to say why cmd does not take it */
};
enum cli_daemon_flag_use cli_daemon_flag_use(enum cli_daemon_cmd cmd, const char *name);

/* The i-th long flag name of the table (without "--"; the short-only -X is
 * not among them), or NULL past the last one. */
const char *cli_daemon_flag_name(size_t i);

#endif
