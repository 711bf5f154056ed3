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
    "A line that is not a changelog row (truncated, say, or with a seq or key_seq\n"
    "that is not an integer from 1 to 2^62-1) stops the replay with exit status 1,\n"
    "its line number and what is wrong; every row before it stays applied.\n"
    "\n"
    "  --db PATH              target database (created if missing)\n"
    "  --on-gap fail|warn     see above\n"
    "  --batch N              rows per transaction (default 200000)\n"
    "  --pipeline-file FILE   a pipeline .sql of your own whose entity appears (repeatable)\n";

/* The command line of tally replay. */
struct replay_options {
    const char *db_path;
    const char *pipeline_files[MAX_PIPELINE_FILES + 1];
    int npipeline_files, warn_gaps;
    int64_t batch;
};

/* Returns -1 to go on, or the exit status (usage error, --help). */
static int parse_replay_options(struct replay_options *o, int argc, char **argv)
{
    static const struct option options[] = {
        {"db", required_argument, NULL, 'd'},    {"on-gap", required_argument, NULL, 'g'},
        {"batch", required_argument, NULL, 'b'}, {"pipeline-file", required_argument, NULL, 'p'},
        {"help", no_argument, NULL, 'h'},        {NULL, 0, NULL, 0}};
    int opt;

    opterr = 0;
    optind = 1;
    while ((opt = getopt_long(argc, argv, ":h", options, NULL)) != -1) {
        switch (opt) {
        case 'd': o->db_path = optarg; break;
        case 'g':
            if (strcmp(optarg, "fail") == 0)
                o->warn_gaps = 0;
            else if (strcmp(optarg, "warn") == 0)
                o->warn_gaps = 1;
            else
                return cli_usage_error("replay", "--on-gap must be fail or warn, not \"%s\"",
                                       optarg);
            break;
        case 'b':
            if (cli_parse_int64("replay", "--batch", optarg, 1, 10000000, &o->batch) < 0)
                return CLI_EXIT_USAGE;
            break;
        case 'p':
            if (o->npipeline_files == MAX_PIPELINE_FILES)
                return cli_usage_error("replay", "at most %d --pipeline-file", MAX_PIPELINE_FILES);
            o->pipeline_files[o->npipeline_files++] = optarg;
            break;
        case 'h': fputs(replay_usage, stdout); return CLI_EXIT_OK;
        default: return cli_bad_option("replay", opt, argv, optind);
        }
    }
    if (!o->db_path)
        return cli_usage_error("replay", "--db is required");
    if (argc - optind != 1)
        return cli_usage_error("replay", "give the export file to replay (or - for stdin)");
    return -1;
}

/* One replay run: the replayer, its open transaction, and the totals. */
struct replay {
    const struct replay_options *o;
    const char *input_name;
    tly_replayer *replayer;
    int in_txn;
    int64_t line_no, rows, changed, gaps, pending;
};

/* Commits the open transaction, if any; errors are printed. */
static int replay_commit(struct replay *r)
{
    char err[512];
    if (r->in_txn && tly_store_commit(tly_replayer_store(r->replayer), err, sizeof(err)) < 0) {
        fprintf(stderr, "tally replay: %s\n", err);
        return -1;
    }
    r->in_txn = 0;
    r->pending = 0;
    return 0;
}

/* A gap before this line: logged; with --on-gap fail (outcome.held), what came
 * before is committed, a consistent state, and the replay stops (-1). */
static int replay_gap(struct replay *r, const tly_replay_outcome *outcome)
{
    r->gaps++;
    cli_log(r->o->warn_gaps ? "warn" : "error", "replay_gap",
            "line=%lld missing_from_seq=%lld missing_to_seq=%lld", (long long)r->line_no,
            (long long)outcome->gap_from, (long long)outcome->gap_to);
    if (!outcome->held)
        return 0;
    if (replay_commit(r) < 0)
        return -1;
    fprintf(stderr,
            "tally replay: gap in the changelog before seq %lld (line %lld): "
            "seq %lld..%lld missing. The database holds a consistent state up to seq "
            "%lld. Replay an export that covers the gap, or use --on-gap warn.\n",
            (long long)outcome->seq, (long long)r->line_no, (long long)outcome->gap_from,
            (long long)outcome->gap_to, (long long)(outcome->gap_from - 1));
    return -1;
}

/* Applies one export line (len > 0); errors are printed. */
static int replay_line(struct replay *r, const char *line, size_t len)
{
    tly_replay_outcome outcome;
    char err[512];

    if (!r->in_txn) {
        if (tly_store_begin(tly_replayer_store(r->replayer), err, sizeof(err)) < 0) {
            fprintf(stderr, "tally replay: %s\n", err);
            return -1;
        }
        r->in_txn = 1;
    }
    if (tly_replayer_apply_line(r->replayer, line, len, &outcome, err, sizeof(err)) < 0) {
        if (!outcome.bad_line) {
            fprintf(stderr,
                    "tally replay: %s line %lld: %s; stopped (the rows of the current "
                    "transaction are rolled back, those before it stay applied)\n",
                    r->input_name, (long long)r->line_no, err);
            return -1;
        }
        /* nothing of the line was written: what came before is a consistent
         * state, as before a gap, and is kept */
        if (replay_commit(r) < 0)
            return -1;
        fprintf(stderr,
                "tally replay: %s line %lld: %s. Stopped there: the %lld rows before it are "
                "applied (up to seq %lld). Fix or remove the line and replay the file again; "
                "rows already applied change nothing.\n",
                r->input_name, (long long)r->line_no, err, (long long)r->rows,
                (long long)tly_replayer_last_seq(r->replayer));
        return -1;
    }
    if (outcome.gap_from && replay_gap(r, &outcome) < 0)
        return -1;
    r->rows++;
    r->changed += outcome.changed;
    if (++r->pending == r->o->batch)
        return replay_commit(r);
    return 0;
}

/* Replays every line of input; errors are printed. */
static int replay_read(struct replay *r, FILE *input)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int rc = -1;
    cli_progress progress;

    cli_progress_init(&progress, "replay");
    while ((len = getline(&line, &cap, input)) >= 0) {
        r->line_no++;
        if (len > 0 && line[len - 1] == '\n')
            line[--len] = '\0';
        if (len == 0)
            continue;
        if (replay_line(r, line, (size_t)len) < 0)
            goto done;
        if (r->pending == 0)
            cli_progress_tick(&progress, r->rows);
    }
    if (ferror(input)) {
        fprintf(stderr, "tally replay: read error on %s: %m\n", r->input_name);
        goto done;
    }
    if (replay_commit(r) < 0)
        goto done;
    cli_progress_done(&progress);
    rc = 0;
done:
    free(line);
    return rc;
}

int cmd_replay(int argc, char **argv)
{
    struct replay_options o = {.batch = 200000};
    struct replay r = {.o = &o, .input_name = "-"};
    FILE *input = stdin;
    char err[512];
    int status;

    if ((status = parse_replay_options(&o, argc, argv)) >= 0)
        return status;
    status = CLI_EXIT_FAILURE;
    if (strcmp(argv[optind], "-") != 0) {
        r.input_name = argv[optind];
        if (!(input = fopen(r.input_name, "rb"))) {
            fprintf(stderr, "tally replay: cannot open %s: %m\n", r.input_name);
            return CLI_EXIT_FAILURE;
        }
    }
    if (tly_replayer_open(o.db_path, o.pipeline_files, &r.replayer, err, sizeof(err)) < 0) {
        fprintf(stderr, "tally replay: %s\n", err);
        goto done;
    }
    tly_replayer_stop_at_gaps(r.replayer, !o.warn_gaps);
    if (tly_replayer_defer_indexes(r.replayer, err, sizeof(err)) < 0) {
        fprintf(stderr, "tally replay: %s\n", err);
        goto done;
    }
    if (replay_read(&r, input) < 0) {
        /* what was committed before the stop gets its indexes too */
        if (r.in_txn)
            tly_store_rollback(tly_replayer_store(r.replayer));
        r.in_txn = 0;
        if (tly_replayer_finish(r.replayer, err, sizeof(err)) < 0)
            fprintf(stderr, "tally replay: %s\n", err);
        goto done;
    }
    if (tly_replayer_finish(r.replayer, err, sizeof(err)) < 0) {
        fprintf(stderr, "tally replay: %s\n", err);
        goto done;
    }
    printf("replayed input=%s rows=%lld changed=%lld unchanged=%lld gaps=%lld last_seq=%lld\n",
           r.input_name, (long long)r.rows, (long long)r.changed, (long long)(r.rows - r.changed),
           (long long)r.gaps, (long long)tly_replayer_last_seq(r.replayer));
    status = CLI_EXIT_OK;
done:
    if (r.in_txn)
        tly_store_rollback(tly_replayer_store(r.replayer));
    tly_replayer_close(r.replayer);
    if (input != stdin)
        fclose(input);
    return status;
}
