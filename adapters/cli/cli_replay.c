/* adapters/cli/cli_replay.c - tally replay: apply a changelog export. */
#include "cli_common.h"
#include "commands.h"

#include "changelog.h"
#include "store.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PIPELINE_FILES 8

static const char replay_usage[] =
    "usage: tally replay --db PATH [--on-gap fail|warn] [OPTIONS] FILE|-\n"
    "\n"
    "Rebuilds or updates a state database from a changelog export (see 'tally changelog\n"
    "export --help'). A row is applied only when its key_seq is newer than the key's,\n"
    "so replaying the same export twice changes nothing.\n"
    "\n"
    "A gap - a row whose seq skips past rows the database does not hold - means the\n"
    "export is incomplete and keys may be stale. With --on-gap fail (default) replay\n"
    "stops there with exit status 1; everything before the gap stays applied, which is\n"
    "a consistent earlier state. With --on-gap warn it reports the gap and goes on.\n"
    "\n"
    "  --db PATH              target database (created if missing)\n"
    "  --on-gap fail|warn     see above\n"
    "  --batch N              rows per transaction (default 10000)\n"
    "  --pipeline-file FILE   a pipeline .sql of your own whose entity appears (repeatable)\n";

int cmd_replay(int argc, char **argv)
{
    static const struct option options[] = {
        {"db", required_argument, NULL, 'd'},    {"on-gap", required_argument, NULL, 'g'},
        {"batch", required_argument, NULL, 'b'}, {"pipeline-file", required_argument, NULL, 'p'},
        {"help", no_argument, NULL, 'h'},        {NULL, 0, NULL, 0}};
    const char *db_path = NULL, *input_name = "-";
    const char *pipeline_files[MAX_PIPELINE_FILES + 1] = {0};
    int npipeline_files = 0, opt, warn_gaps = 0, status = CLI_EXIT_FAILURE, in_txn = 0;
    int64_t batch = 10000, line_no = 0, rows = 0, changed = 0, gaps = 0, pending = 0;
    tly_replayer *replayer = NULL;
    FILE *input = stdin;
    char *line = NULL, err[512];
    size_t cap = 0;
    ssize_t len;
    cli_progress progress;

    opterr = 0;
    optind = 1;
    while ((opt = getopt_long(argc, argv, ":h", options, NULL)) != -1) {
        switch (opt) {
        case 'd': db_path = optarg; break;
        case 'g':
            if (strcmp(optarg, "fail") == 0)
                warn_gaps = 0;
            else if (strcmp(optarg, "warn") == 0)
                warn_gaps = 1;
            else
                return cli_usage_error("replay", "--on-gap must be fail or warn, not \"%s\"",
                                       optarg);
            break;
        case 'b':
            if (cli_parse_int64("replay", "--batch", optarg, 1, 10000000, &batch) < 0)
                return CLI_EXIT_USAGE;
            break;
        case 'p':
            if (npipeline_files == MAX_PIPELINE_FILES)
                return cli_usage_error("replay", "at most %d --pipeline-file", MAX_PIPELINE_FILES);
            pipeline_files[npipeline_files++] = optarg;
            break;
        case 'h': fputs(replay_usage, stdout); return CLI_EXIT_OK;
        default: return cli_bad_option("replay", opt, argv, optind);
        }
    }
    if (!db_path)
        return cli_usage_error("replay", "--db is required");
    if (argc - optind != 1)
        return cli_usage_error("replay", "give the export file to replay (or - for stdin)");
    if (strcmp(argv[optind], "-") != 0) {
        input_name = argv[optind];
        if (!(input = fopen(input_name, "rb"))) {
            fprintf(stderr, "tally replay: cannot open %s: %m\n", input_name);
            return CLI_EXIT_FAILURE;
        }
    }
    if (tly_replayer_open(db_path, pipeline_files, &replayer, err, sizeof(err)) < 0) {
        fprintf(stderr, "tally replay: %s\n", err);
        goto done;
    }
    tly_replayer_stop_at_gaps(replayer, !warn_gaps);
    cli_progress_init(&progress, "replay");
    while ((len = getline(&line, &cap, input)) >= 0) {
        tly_replay_outcome outcome;
        line_no++;
        if (len > 0 && line[len - 1] == '\n')
            line[--len] = '\0';
        if (len == 0)
            continue;
        if (!in_txn) {
            if (tly_store_begin(tly_replayer_store(replayer), err, sizeof(err)) < 0) {
                fprintf(stderr, "tally replay: %s\n", err);
                goto done;
            }
            in_txn = 1;
        }
        if (tly_replayer_apply_line(replayer, line, (size_t)len, &outcome, err, sizeof(err)) < 0) {
            fprintf(stderr,
                    "tally replay: %s line %lld: %s; stopped (rows before this batch "
                    "are applied)\n",
                    input_name, (long long)line_no, err);
            goto done;
        }
        if (outcome.gap_from) {
            gaps++;
            cli_log(warn_gaps ? "warn" : "error", "replay_gap",
                    "line=%lld missing_from_seq=%lld missing_to_seq=%lld", (long long)line_no,
                    (long long)outcome.gap_from, (long long)outcome.gap_to);
            if (outcome.held) {
                /* Keep what came before the gap: it is a consistent state. */
                if (tly_store_commit(tly_replayer_store(replayer), err, sizeof(err)) < 0) {
                    fprintf(stderr, "tally replay: %s\n", err);
                    goto done;
                }
                in_txn = 0;
                fprintf(stderr,
                        "tally replay: gap in the changelog before seq %lld (line %lld): "
                        "seq %lld..%lld missing. The database holds a consistent state up to seq "
                        "%lld. Replay an export that covers the gap, or use --on-gap warn.\n",
                        (long long)outcome.seq, (long long)line_no, (long long)outcome.gap_from,
                        (long long)outcome.gap_to, (long long)(outcome.gap_from - 1));
                goto done;
            }
        }
        rows++;
        changed += outcome.changed;
        if (++pending == batch) {
            if (tly_store_commit(tly_replayer_store(replayer), err, sizeof(err)) < 0) {
                fprintf(stderr, "tally replay: %s\n", err);
                goto done;
            }
            in_txn = 0;
            pending = 0;
            cli_progress_tick(&progress, rows);
        }
    }
    if (ferror(input)) {
        fprintf(stderr, "tally replay: read error on %s: %m\n", input_name);
        goto done;
    }
    if (in_txn && tly_store_commit(tly_replayer_store(replayer), err, sizeof(err)) < 0) {
        fprintf(stderr, "tally replay: %s\n", err);
        goto done;
    }
    in_txn = 0;
    cli_progress_done(&progress);
    printf("replayed input=%s rows=%lld changed=%lld unchanged=%lld gaps=%lld last_seq=%lld\n",
           input_name, (long long)rows, (long long)changed, (long long)(rows - changed),
           (long long)gaps, (long long)tly_replayer_last_seq(replayer));
    status = CLI_EXIT_OK;
done:
    if (in_txn)
        tly_store_rollback(tly_replayer_store(replayer));
    free(line);
    tly_replayer_close(replayer);
    if (input != stdin)
        fclose(input);
    return status;
}
