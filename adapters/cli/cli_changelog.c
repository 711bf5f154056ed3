/* adapters/cli/cli_changelog.c - tally changelog export. */
#include "cli_common.h"
#include "commands.h"

#include "changelog.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char changelog_usage[] =
    "usage: tally changelog export --db PATH [--since SEQ] [--out FILE]\n"
    "\n"
    "Writes the changelog rows with seq > SEQ (default 0: all) as JSON Lines, one row\n"
    "per line, in seq order, from one consistent read (safe while a writer runs):\n"
    "\n"
    "  {\"seq\":42,\"entity\":\"order_window\",\"key\":\"s1#p7#1700000040000\",\"key_seq\":3,\n"
    "   \"image\":{...state row after the change...},\"delta\":{...}|null,\"changed_ms\":...}\n"
    "\n"
    "--out FILE is written under a temporary name and renamed when complete; without\n"
    "it rows go to standard output. Replay an export with 'tally replay'.\n";

static void on_progress(void *ctx, int64_t rows)
{
    cli_progress_tick(ctx, rows);
}

int cmd_changelog(int argc, char **argv)
{
    static const struct option options[] = {{"db", required_argument, NULL, 'd'},
                                            {"since", required_argument, NULL, 's'},
                                            {"out", required_argument, NULL, 'o'},
                                            {"help", no_argument, NULL, 'h'},
                                            {NULL, 0, NULL, 0}};
    const char *db_path = NULL, *out_path = NULL;
    char tmp_path[4096], err[8704];
    int64_t since = 0, rows;
    FILE *out = stdout;
    cli_progress progress;
    int opt;

    if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        fputs(changelog_usage, stdout);
        return CLI_EXIT_OK;
    }
    if (argc < 2 || strcmp(argv[1], "export") != 0)
        return cli_usage_error("changelog", "expected a subcommand: export");
    argc--;
    argv++;
    opterr = 0;
    optind = 1;
    while ((opt = getopt_long(argc, argv, ":h", options, NULL)) != -1) {
        switch (opt) {
        case 'd': db_path = optarg; break;
        case 'o': out_path = optarg; break;
        case 's':
            if (cli_parse_int64("changelog", "--since", optarg, 0, INT64_MAX, &since) < 0)
                return CLI_EXIT_USAGE;
            break;
        case 'h': fputs(changelog_usage, stdout); return CLI_EXIT_OK;
        default: return cli_bad_option("changelog", opt, argv, optind);
        }
    }
    if (!db_path)
        return cli_usage_error("changelog", "--db is required");
    if (optind < argc)
        return cli_usage_error("changelog", "unexpected argument \"%s\"", argv[optind]);
    if (out_path) {
        snprintf(tmp_path, sizeof(tmp_path), "%s.tmp.%ld", out_path, (long)getpid());
        if (!(out = fopen(tmp_path, "wb"))) {
            fprintf(stderr, "tally changelog: cannot create %s: %m\n", tmp_path);
            return CLI_EXIT_FAILURE;
        }
    }
    cli_progress_init(&progress, "export");
    rows = tly_changelog_export(db_path, since, out, on_progress, &progress, err, sizeof(err));
    cli_progress_done(&progress);
    if (out_path) {
        if (fclose(out) != 0 && rows >= 0) {
            snprintf(err, sizeof(err), "cannot write %s: %m", tmp_path);
            rows = -1;
        }
        if (rows >= 0 && rename(tmp_path, out_path) != 0) {
            snprintf(err, sizeof(err), "cannot rename %s to %s: %m", tmp_path, out_path);
            rows = -1;
        }
        if (rows < 0)
            unlink(tmp_path);
    }
    if (rows < 0) {
        fprintf(stderr, "tally changelog: %s\n", err);
        return CLI_EXIT_FAILURE;
    }
    fprintf(stderr, "exported rows=%lld since=%lld out=%s\n", (long long)rows, (long long)since,
            out_path ? out_path : "-");
    return CLI_EXIT_OK;
}
