/* adapters/cli/cli_ingest.c - tally ingest: apply a JSONL file of events.
 *
 * The same engine call the daemon uses (tly_pipeline_apply) on batches of
 * lines, one SQLite transaction per batch. A malformed line never stops the run:
 * it is reported with its line number on stderr and appended to the reject
 * file, one JSON object per line:
 *
 *   {"line":17,"error":"missing field \"storeId\"","input":"{\"orderId\":...}"}
 *
 * "input" holds the line as a JSON string; a line that is not valid UTF-8 is
 * written as "input_base64" instead, so the reject file is always valid JSONL
 * and always holds the exact original bytes.
 *
 * A run that fails half-way (a full disk, a kill) has committed some batches:
 * running it again must not apply them twice. So each batch's transaction also
 * records how far the file has been applied, in the meta key
 * ingest.<pipeline>.<absolute path> (engine/meta.h): the byte offset and line
 * after the batch, and a fingerprint of the bytes up to there (FNV-1a 64 of
 * the first and the last 64 KiB before the offset). A later run of the same
 * path whose bytes up to the offset still have that fingerprint resumes
 * there: a file that has only grown resumes too; a rewritten one starts from
 * its first line. Standard input and pipes have no identity to check and are
 * applied from their first line every run. */
#include "cli_common.h"
#include "clock.h"
#include "commands.h"

#include "meta.h"
#include "pipeline.h"
#include "store.h"
#include "utf8.h"

#include <getopt.h>
#include <json-c/json.h>
#include <limits.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_SETTINGS 16
#define REPORT_LIMIT 100       /* rejects echoed on stderr; all go to the reject file */
#define FINGERPRINT_SPAN 65536 /* bytes hashed at each end of the applied part */

static const char ingest_usage[] =
    "usage: tally ingest --pipeline orders|telemetry|FILE.sql --db PATH [OPTIONS] [FILE|-]\n"
    "\n"
    "Applies JSON Lines events from FILE (or standard input) to the state database,\n"
    "exactly as the daemon does. Malformed lines are reported with their line number,\n"
    "written to the reject file and counted; they never stop the run.\n"
    "\n"
    "  --pipeline NAME      orders, telemetry, or a pipeline .sql file of your own\n"
    "  --db PATH            state database (created if missing)\n"
    "  --window-size DUR    orders window, e.g. 60s, 5m (default 60s; fixed per database)\n"
    "  --set NAME=VALUE     any other pipeline setting (repeatable)\n"
    "  --batch N            events per transaction (default 20000)\n"
    "  --rejects PATH       reject file (default PATH.rejects.jsonl next to the database)\n"
    "  --synchronous MODE   OFF, NORMAL (default) or FULL\n"
    "\n"
    "Each batch records in the database how far FILE has been applied; running the\n"
    "same command again (after a failure, or on a file that has grown) resumes after\n"
    "the last applied line and says so (resumed_from_line=N). A file rewritten since\n"
    "starts from its first line. Standard input (-) and pipes cannot be resumed:\n"
    "every run applies every line.\n"
    "\n"
    "'tally ingest influxdb ...' reads InfluxDB into Kafka instead: see\n"
    "'tally ingest influxdb --help'. (A JSONL file named influxdb: ./influxdb.)\n"
    "\n"
    "Prints a summary line; exit status 0 when the file was read to the end (even with\n"
    "rejects), 1 on a database or I/O error, 2 on a bad option.\n";

static char *base64(const unsigned char *s, size_t len)
{
    static const char table[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *out = malloc((len + 2) / 3 * 4 + 1), *o = out;
    if (!out)
        return NULL;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16 | (i + 1 < len ? (uint32_t)s[i + 1] << 8 : 0) |
                     (i + 2 < len ? s[i + 2] : 0);
        *o++ = table[v >> 18 & 63];
        *o++ = table[v >> 12 & 63];
        *o++ = i + 1 < len ? table[v >> 6 & 63] : '=';
        *o++ = i + 2 < len ? table[v & 63] : '=';
    }
    *o = '\0';
    return out;
}

static int write_reject(FILE *rejects, int64_t line_no, const char *reason, const char *data,
                        size_t len)
{
    json_object *obj = json_object_new_object();
    int rc;
    json_object_object_add(obj, "line", json_object_new_int64(line_no));
    json_object_object_add(obj, "error", json_object_new_string(reason));
    if (tly_utf8_check(data, len) == len) {
        json_object_object_add(obj, "input", json_object_new_string_len(data, (int)len));
    } else {
        char *b64 = base64((const unsigned char *)data, len);
        json_object_object_add(obj, "input_base64", json_object_new_string(b64 ? b64 : ""));
        free(b64);
    }
    rc = fprintf(rejects, "%s\n",
                 json_object_to_json_string_ext(obj, JSON_C_TO_STRING_PLAIN |
                                                         JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put(obj);
    return rc < 0 ? -1 : 0;
}

struct ingest {
    const char *input_name;
    tly_store *store;
    tly_pipeline *pipeline;
    FILE *rejects;
    const char *rejects_path;
    size_t batch_size;
    /* The current batch: copies of the lines and their line numbers. */
    size_t count;
    tly_event *events;
    char **lines;
    size_t *capacities;
    int64_t *line_numbers;
    tly_event_result *results;
    /* Totals. */
    int64_t lines_read, blank, applied, skipped, rejected, changes;
    /* Resuming a regular file: its descriptor (-1: standard input or a pipe,
     * not resumable), the meta key of its progress, the bytes read so far
     * from its start, the line the last commit recorded, and where this run
     * started (0: at the beginning). */
    int fd;
    char key[PATH_MAX + 300];
    int64_t offset, recorded_line, resumed_line, resumed_offset;
};

static int hash_range(int fd, int64_t from, int64_t to, uint64_t *h)
{
    unsigned char buf[16384];
    while (from < to) {
        size_t want = to - from < (int64_t)sizeof(buf) ? (size_t)(to - from) : sizeof(buf);
        ssize_t n = pread(fd, buf, want, (off_t)from);
        if (n <= 0)
            return -1;
        for (ssize_t i = 0; i < n; i++)
            *h = (*h ^ buf[i]) * 1099511628211ULL;
        from += n;
    }
    return 0;
}

/* FNV-1a 64 over the first and the last FINGERPRINT_SPAN bytes before offset:
 * what a rewritten file changes, at the cost of two short reads per batch.
 * -1 if the file holds fewer than offset bytes. */
static int fingerprint(int fd, int64_t offset, char out[17])
{
    uint64_t h = 14695981039346656037ULL;
    if (hash_range(fd, 0, offset < FINGERPRINT_SPAN ? offset : FINGERPRINT_SPAN, &h) < 0 ||
        hash_range(fd, offset > FINGERPRINT_SPAN ? offset - FINGERPRINT_SPAN : 0, offset, &h) < 0)
        return -1;
    snprintf(out, 17, "%016llx", (unsigned long long)h);
    return 0;
}

/* Records how far the file is applied, in the open batch transaction. */
static int record_position(struct ingest *in, char *err, size_t errlen)
{
    char fp[17], value[160];

    if (in->fd < 0)
        return 0;
    if (fingerprint(in->fd, in->offset, fp) < 0) {
        snprintf(err, errlen, "cannot read %s back: %m", in->input_name);
        return -1;
    }
    snprintf(value, sizeof(value), "{\"offset\":%lld,\"line\":%lld,\"fingerprint\":\"%s\"}",
             (long long)in->offset, (long long)in->lines_read, fp);
    if (tly_store_meta_set_text(in->store, in->key, value) < 0) {
        snprintf(err, errlen, "cannot record the position in %s: %s", in->input_name,
                 sqlite3_errmsg(tly_store_db(in->store)));
        return -1;
    }
    return 0;
}

/* Finds where an earlier run of this file stopped and seeks past it; a file
 * that is not the one recorded (or not a regular file) is read from its
 * start. Errors are printed. */
static int ingest_resume(struct ingest *in, const char *path, FILE *input)
{
    char real[PATH_MAX], value[512], fp[17];
    json_object *obj = NULL, *v;
    struct stat st;
    int64_t offset, line;
    int rc = -1;

    in->fd = -1;
    if (!path || fstat(fileno(input), &st) != 0 || !S_ISREG(st.st_mode))
        return 0;
    if (!realpath(path, real)) {
        fprintf(stderr, "tally ingest: cannot resolve %s: %m\n", path);
        return -1;
    }
    in->fd = fileno(input);
    tly_meta_key_ingest(tly_pipeline_name(in->pipeline), real, in->key, sizeof(in->key));
    switch (tly_store_meta_get_text(in->store, in->key, value, sizeof(value))) {
    case 0: return 0; /* never ingested here */
    case 1: break;
    default:
        fprintf(stderr, "tally ingest: cannot read meta key %s: %s\n", in->key,
                sqlite3_errmsg(tly_store_db(in->store)));
        return -1;
    }
    if (!(obj = json_tokener_parse(value)) || !json_object_object_get_ex(obj, "offset", &v) ||
        (offset = json_object_get_int64(v)) < 0 || !json_object_object_get_ex(obj, "line", &v) ||
        (line = json_object_get_int64(v)) < 0 ||
        !json_object_object_get_ex(obj, "fingerprint", &v) ||
        !json_object_is_type(v, json_type_string)) {
        fprintf(stderr,
                "tally ingest: meta key %s holds \"%s\", not a position; delete it "
                "(DELETE FROM meta WHERE key = '...') to apply %s from its first line\n",
                in->key, value, path);
        goto done;
    }
    if (offset > st.st_size || fingerprint(in->fd, offset, fp) < 0 ||
        strcmp(fp, json_object_get_string(v)) != 0) {
        cli_log("warn", "input_changed",
                "input=%s recorded_line=%lld note=\"not the file an earlier run applied up to "
                "that line: applying it from its first line\"",
                path, (long long)line);
        rc = 0;
        goto done;
    }
    if (fseeko(input, (off_t)offset, SEEK_SET) != 0) {
        fprintf(stderr, "tally ingest: cannot seek %s to byte %lld: %m\n", path, (long long)offset);
        goto done;
    }
    in->offset = in->resumed_offset = offset;
    in->lines_read = in->recorded_line = line;
    in->resumed_line = line + 1;
    cli_log("info", "resume", "input=%s line=%lld byte=%lld", path, (long long)in->resumed_line,
            (long long)offset);
    rc = 0;
done:
    json_object_put(obj);
    return rc;
}

static int flush_batch(struct ingest *in, char *err, size_t errlen)
{
    tly_batch_stats stats;
    char quoted[256];

    if (in->count == 0)
        return 0;
    if (tly_store_begin(in->store, err, errlen) < 0)
        return -1;
    if (tly_pipeline_apply(in->pipeline, in->events, in->count, in->results, &stats, err, errlen) <
        0) {
        tly_store_rollback(in->store);
        return -1;
    }
    /* Rejects are written before the commit: a crash in between repeats the
     * batch, and a duplicate reject line is better than a lost one. */
    for (size_t i = 0; i < in->count; i++) {
        tly_event_result *r = &in->results[i];
        if (r->status == TLY_EVENT_REJECTED) {
            if (in->rejected + 1 <= REPORT_LIMIT)
                cli_log("warn", "reject", "line=%lld error=%s", (long long)in->line_numbers[i],
                        cli_quote(r->reason, quoted, sizeof(quoted)));
            else if (in->rejected + 1 == REPORT_LIMIT + 1)
                cli_log("warn", "reject", "note=%s",
                        cli_quote("further rejects are only written to the reject file", quoted,
                                  sizeof(quoted)));
            in->rejected++;
            if (write_reject(in->rejects, in->line_numbers[i], r->reason, in->events[i].data,
                             in->events[i].len) < 0 ||
                fflush(in->rejects) == EOF) {
                snprintf(err, errlen, "cannot write reject file %s: %m", in->rejects_path);
                tly_store_rollback(in->store);
                return -1;
            }
        } else if (r->status == TLY_EVENT_SKIPPED) {
            if (in->skipped < REPORT_LIMIT)
                cli_log("info", "skip", "line=%lld reason=%s", (long long)in->line_numbers[i],
                        cli_quote(r->reason, quoted, sizeof(quoted)));
            in->skipped++;
        }
    }
    if (record_position(in, err, errlen) < 0 || tly_store_commit(in->store, err, errlen) < 0) {
        tly_store_rollback(in->store);
        return -1;
    }
    in->recorded_line = in->lines_read;
    in->applied += stats.applied;
    in->changes += stats.changes;
    in->count = 0;
    return 0;
}

static int add_line(struct ingest *in, const char *line, size_t len)
{
    size_t i = in->count;
    if (in->capacities[i] < len + 1) {
        char *grown = realloc(in->lines[i], len + 1);
        if (!grown)
            return -1;
        in->lines[i] = grown;
        in->capacities[i] = len + 1;
    }
    memcpy(in->lines[i], line, len);
    in->lines[i][len] = '\0';
    in->events[i].data = in->lines[i];
    in->events[i].len = len;
    in->line_numbers[i] = in->lines_read;
    in->count++;
    return 0;
}

static bool is_blank(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r')
            return false;
    return true;
}

/* The command line of tally ingest, checked. */
struct ingest_options {
    const char *pipeline_name, *db_path, *rejects_path, *input_path;
    const char *settings[MAX_SETTINGS + 1];
    int nsettings;
    int64_t batch, window_ms;
    char window_setting[64], default_rejects[4096];
    tly_store_options store;
};

/* Returns -1 to go on, or the exit status (usage error, --help). */
static int parse_ingest_options(struct ingest_options *o, int argc, char **argv)
{
    static const struct option options[] = {{"pipeline", required_argument, NULL, 'p'},
                                            {"db", required_argument, NULL, 'd'},
                                            {"window-size", required_argument, NULL, 'w'},
                                            {"set", required_argument, NULL, 's'},
                                            {"batch", required_argument, NULL, 'b'},
                                            {"rejects", required_argument, NULL, 'r'},
                                            {"synchronous", required_argument, NULL, 'y'},
                                            {"help", no_argument, NULL, 'h'},
                                            {NULL, 0, NULL, 0}};
    int opt;

    opterr = 0;
    optind = 1;
    while ((opt = getopt_long(argc, argv, ":h", options, NULL)) != -1) {
        switch (opt) {
        case 'p': o->pipeline_name = optarg; break;
        case 'd': o->db_path = optarg; break;
        case 'r': o->rejects_path = optarg; break;
        case 'y': o->store.synchronous = optarg; break;
        case 'w':
            if (cli_parse_duration_ms("ingest", "--window-size", optarg, &o->window_ms) < 0)
                return CLI_EXIT_USAGE;
            if (o->window_ms < 1)
                return cli_usage_error("ingest", "--window-size must be at least 1ms");
            break;
        case 's':
            if (o->nsettings == MAX_SETTINGS || !strchr(optarg, '='))
                return cli_usage_error("ingest", "--set takes NAME=VALUE (at most %d)",
                                       MAX_SETTINGS);
            o->settings[o->nsettings++] = optarg;
            break;
        case 'b':
            if (cli_parse_int64("ingest", "--batch", optarg, 1, 1000000, &o->batch) < 0)
                return CLI_EXIT_USAGE;
            break;
        case 'h': fputs(ingest_usage, stdout); return CLI_EXIT_OK;
        default: return cli_bad_option("ingest", opt, argv, optind);
        }
    }
    return -1;
}

/* What the options mean together; returns -1 to go on or the exit status. */
static int check_ingest_options(struct ingest_options *o, int argc, char **argv)
{
    if (!o->pipeline_name)
        return cli_usage_error("ingest",
                               "--pipeline is required (orders, telemetry or a .sql file)");
    if (!o->db_path)
        return cli_usage_error("ingest", "--db is required (the state database to write)");
    if (argc - optind > 1)
        return cli_usage_error("ingest", "one input file at most (got %d)", argc - optind);
    if (o->window_ms > 0) {
        if (o->nsettings == MAX_SETTINGS)
            return cli_usage_error("ingest", "too many settings");
        snprintf(o->window_setting, sizeof(o->window_setting), "window_ms=%lld",
                 (long long)o->window_ms);
        o->settings[o->nsettings++] = o->window_setting;
    }
    if (strcmp(o->store.synchronous, "OFF") && strcmp(o->store.synchronous, "NORMAL") &&
        strcmp(o->store.synchronous, "FULL"))
        return cli_usage_error("ingest", "--synchronous must be OFF, NORMAL or FULL, not \"%s\"",
                               o->store.synchronous);
    if (optind < argc && strcmp(argv[optind], "-") != 0)
        o->input_path = argv[optind];
    if (!o->rejects_path) {
        snprintf(o->default_rejects, sizeof(o->default_rejects), "%s.rejects.jsonl", o->db_path);
        o->rejects_path = o->default_rejects;
    }
    return -1;
}

/* Checks the pipeline and its settings on a scratch database, so a mistake on
 * the command line never creates or touches the real one. */
static int check_pipeline(const struct ingest_options *o, char *err, size_t errlen)
{
    tly_store *scratch = NULL;
    tly_pipeline *check = NULL;
    int ok = tly_store_open(":memory:", NULL, &scratch, err, errlen) == 0 &&
             tly_pipeline_open(scratch, o->pipeline_name, o->settings, 0, &check, err, errlen) == 0;
    tly_pipeline_close(check);
    tly_store_close(scratch);
    return ok ? 0 : -1;
}

/* Opens the database, the pipeline, the reject file and the batch buffers;
 * errors are printed. */
static int ingest_open(struct ingest *in, const struct ingest_options *o)
{
    char err[512];
    if (tly_store_open(o->db_path, &o->store, &in->store, err, sizeof(err)) < 0 ||
        tly_pipeline_open(in->store, o->pipeline_name, o->settings, 0, &in->pipeline, err,
                          sizeof(err)) < 0) {
        fprintf(stderr, "tally ingest: %s\n", err);
        return -1;
    }
    in->rejects_path = o->rejects_path;
    if (!(in->rejects = fopen(o->rejects_path, "ab"))) {
        fprintf(stderr, "tally ingest: cannot open reject file %s: %m\n", o->rejects_path);
        return -1;
    }
    in->batch_size = (size_t)o->batch;
    in->events = calloc(in->batch_size, sizeof(*in->events));
    in->lines = calloc(in->batch_size, sizeof(*in->lines));
    in->capacities = calloc(in->batch_size, sizeof(*in->capacities));
    in->line_numbers = calloc(in->batch_size, sizeof(*in->line_numbers));
    in->results = calloc(in->batch_size, sizeof(*in->results));
    if (!in->events || !in->lines || !in->capacities || !in->line_numbers || !in->results) {
        fprintf(stderr, "tally ingest: out of memory\n");
        return -1;
    }
    return 0;
}

static void ingest_close(struct ingest *in)
{
    for (size_t i = 0; in->lines && i < in->batch_size; i++)
        free(in->lines[i]);
    free(in->lines);
    free(in->events);
    free(in->capacities);
    free(in->line_numbers);
    free(in->results);
    if (in->rejects)
        fclose(in->rejects);
    tly_pipeline_close(in->pipeline);
    tly_store_close(in->store);
}

/* Reads every line of input and applies it in batches; errors are printed. */
static int ingest_read(struct ingest *in, FILE *input)
{
    char *line = NULL, err[512];
    size_t line_cap = 0;
    ssize_t len;
    int rc = -1;
    cli_progress progress;

    cli_progress_init(&progress, "ingest");
    while ((len = getline(&line, &line_cap, input)) >= 0) {
        in->lines_read++;
        in->offset += len;
        if (len > 0 && line[len - 1] == '\n')
            len--;
        if (is_blank(line, (size_t)len)) {
            in->blank++;
            continue;
        }
        if (add_line(in, line, (size_t)len) < 0) {
            fprintf(stderr, "tally ingest: out of memory at line %lld\n",
                    (long long)in->lines_read);
            goto done;
        }
        if (in->count == in->batch_size) {
            if (flush_batch(in, err, sizeof(err)) < 0) {
                fprintf(stderr, "tally ingest: %s (batch ending at line %lld not applied)\n", err,
                        (long long)in->lines_read);
                goto done;
            }
            cli_progress_tick(&progress, in->lines_read);
        }
    }
    if (ferror(input)) {
        fprintf(stderr, "tally ingest: read error on %s after line %lld: %m\n", in->input_name,
                (long long)in->lines_read);
        goto done;
    }
    if (flush_batch(in, err, sizeof(err)) < 0) {
        fprintf(stderr, "tally ingest: %s (last batch not applied)\n", err);
        goto done;
    }
    cli_progress_done(&progress);
    rc = 0;
done:
    /* What is applied is committed: say where a rerun takes over. */
    if (rc < 0) {
        if (in->fd >= 0)
            fprintf(stderr,
                    "tally ingest: %s is applied up to line %lld; run the same command again to "
                    "resume after that line\n",
                    in->input_name, (long long)in->recorded_line);
        else
            fprintf(stderr,
                    "tally ingest: standard input is applied up to line %lld and cannot be "
                    "resumed: feed only the lines after it\n",
                    (long long)in->recorded_line);
    }
    free(line);
    return rc;
}

int cmd_ingest(int argc, char **argv)
{
    struct ingest_options o = {.batch = 20000, .window_ms = -1};
    struct ingest in = {.input_name = "-", .fd = -1};
    FILE *input = stdin;
    char err[512];
    int status;
    int64_t started, elapsed, events;

    /* Only as the first word: "tally ingest --db x.db influxdb" still reads
     * a file of that name. */
    if (argc >= 2 && strcmp(argv[1], "influxdb") == 0)
        return cmd_ingest_influxdb(argc - 1, argv + 1);
    tly_store_options_init(&o.store);
    if ((status = parse_ingest_options(&o, argc, argv)) >= 0 ||
        (status = check_ingest_options(&o, argc, argv)) >= 0)
        return status;
    if (o.input_path) {
        in.input_name = o.input_path;
        if (!(input = fopen(o.input_path, "rb"))) {
            fprintf(stderr, "tally ingest: cannot open %s: %m\n", o.input_path);
            return CLI_EXIT_FAILURE;
        }
    }
    status = CLI_EXIT_FAILURE;
    if (check_pipeline(&o, err, sizeof(err)) < 0) {
        status = cli_usage_error("ingest", "%s", err);
        goto done;
    }
    if (ingest_open(&in, &o) < 0 || ingest_resume(&in, o.input_path, input) < 0)
        goto done;
    started = tly_clock_mono_ms();
    if (ingest_read(&in, input) < 0)
        goto done;
    elapsed = tly_clock_mono_ms() - started;
    events = in.applied + in.skipped + in.rejected;
    {
        char resumed[96] = "";
        if (in.resumed_line > 0)
            snprintf(resumed, sizeof(resumed), " resumed_from_line=%lld resumed_from_byte=%lld",
                     (long long)in.resumed_line, (long long)in.resumed_offset);
        printf("ingested pipeline=%s input=%s lines=%lld applied=%lld skipped=%lld rejected=%lld "
               "blank=%lld changes=%lld seconds=%.3f events_per_s=%.0f rejects=%s%s\n",
               tly_pipeline_name(in.pipeline), in.input_name, (long long)in.lines_read,
               (long long)in.applied, (long long)in.skipped, (long long)in.rejected,
               (long long)in.blank, (long long)in.changes, elapsed / 1000.0,
               events * 1000.0 / (double)(elapsed > 0 ? elapsed : 1), o.rejects_path, resumed);
    }
    status = CLI_EXIT_OK;
done:
    ingest_close(&in);
    if (input != stdin)
        fclose(input);
    return status;
}
