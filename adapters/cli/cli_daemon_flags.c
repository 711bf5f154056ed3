/* adapters/cli/cli_daemon_flags.c - the flags of tally run, recover and
 * enrich: one table, one getopt_long loop over the options it builds for
 * the command at hand. */
#include "cli_daemon_flags.h"
#include "cli_common.h"

#include "http.h"
#include "log.h"
#include "pipeline.h"
#include "runner.h"
#include "store.h"

#include <getopt.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* Which commands take a flag: bits of enum cli_daemon_cmd. */
#define RUN (1u << CLI_DAEMON_RUN)
#define RECOVER (1u << CLI_DAEMON_RECOVER)
#define ENRICH (1u << CLI_DAEMON_ENRICH)
#define RUNS (RUN | RECOVER) /* recover takes every run flag: a run's command line recovers it */
#define ALL (RUN | RECOVER | ENRICH)

#define DEFAULT_DEDUP_WINDOW_MS (24LL * 3600 * 1000)
#define MAX_DEDUP_WINDOW_MS (366LL * 24 * 3600 * 1000)

/* getopt_long returns OPT_BASE + a flag's table index for its long name:
 * past every short option character, and distinct per flag, so two long
 * names sharing a prefix stay ambiguous as abbreviations. */
#define OPT_BASE 0x100

struct flag;

/* One parse: the command and what its flags fill. */
struct parse {
    enum cli_daemon_cmd cmd;
    const char *name; /* "tally NAME:" in messages */
    const char *usage;
    tly_runner_config *cfg;
    struct cli_daemon_extra *extra;
};

/* Reads a flag's value (NULL for a flag without one) into what it sets.
 * Returns -1 when fine, else the exit status after printing the problem. */
typedef int flag_read(const struct parse *p, const struct flag *f, const char *value);

/* Where a flag's field is; NOWHERE (the zero) for flags that set none. */
enum { NOWHERE, IN_CFG, IN_EXTRA };

struct flag {
    const char *name; /* long name without "--"; NULL: short only */
    char short_name;  /* its short option, or 0 */
    int has_arg;      /* no_argument or required_argument */
    unsigned accepted;
    unsigned rejected;   /* commands that know it only to say why_not (a usage error) */
    const char *why_not; /* rather than "unknown option": the user meant something */
    flag_read *read;
    int where;
    size_t field;                     /* offsetof; its type is the one read expects */
    int64_t min, max;                 /* read_int, read_int64; read_duration when error is set */
    int (*choice)(const char *value); /* read_choice: >= 0 for a valid value */
    /* read_duration outside [min, max], read_choice refused: a printf format
     * whose %s, if it has one, is the value */
    const char *error;
};

static flag_read read_string, read_set, read_int, read_int64, read_duration, read_on_off,
    read_choice, read_http, read_kafka, read_param, read_help;

#define VALUE .has_arg = required_argument
#define CFG(member) .where = IN_CFG, .field = offsetof(tly_runner_config, member)
#define EXTRA(member) .where = IN_EXTRA, .field = offsetof(struct cli_daemon_extra, member)

static const struct flag flags[] = {
    {"pipeline", VALUE, .accepted = RUNS, .read = read_string, CFG(pipeline), .rejected = ENRICH,
     .why_not = "--pipeline is not an enrich option: tally enrich always runs the enrich pipeline "
                "(tally run --pipeline orders|telemetry runs the others)"},
    {"brokers", VALUE, .accepted = ALL, .read = read_string, CFG(brokers)},
    {"topic-prefix", VALUE, .accepted = ALL, .read = read_string, CFG(topic_prefix)},
    {"group-id", VALUE, .accepted = ALL, .read = read_string, CFG(group_id)},
    {"instance-id", VALUE, .accepted = ALL, .read = read_string, CFG(instance_id)},
    {"input-topic", VALUE, .accepted = ALL, .read = read_string, CFG(input_topic)},
    {"output-topic", VALUE, .accepted = ALL, .read = read_string, CFG(output_topic)},
    {"state-dir", VALUE, .accepted = ALL, .read = read_string, CFG(state_dir)},
    {"set", VALUE, .accepted = RUNS, .read = read_param, .rejected = ENRICH,
     .why_not = "--set is not an enrich option: the enrich pipeline's settings are its flags"},
    {"window-size", VALUE, .accepted = RUNS, .read = read_duration, CFG(window_ms), .min = 1,
     .max = INT64_MAX, .error = "--window-size must be at least 1ms", .rejected = ENRICH,
     .why_not = "--window-size is not an enrich option: windows belong to tally run --pipeline "
                "orders; the dedup window is --dedup-window"},
    /* a window of 0 would make every copy new; first-seen times of one
     * orderId must also differ for replay (006_enrich.sql) */
    {"dedup-window", VALUE, .accepted = ENRICH, .read = read_duration, EXTRA(dedup_window_ms),
     .min = 1, .max = MAX_DEDUP_WINDOW_MS,
     .error = "--dedup-window must be between 1ms and 366d, not \"%s\" (e.g. 24h, 90m)"},
    {"commit-interval-ms", VALUE, .accepted = ALL, .read = read_int64, CFG(commit_interval_ms),
     .min = 1, .max = 600000},
    {"max-batch", VALUE, .accepted = ALL, .read = read_int, CFG(max_batch), .min = 1,
     .max = 1000000},
    {"changelog", VALUE, .accepted = RUNS, .read = read_on_off, CFG(changelog), .rejected = ENRICH,
     .why_not = "--changelog is always on for enrich: without it a crash between the Kafka and "
                "the SQLite commit would emit that batch's orders twice"},
    {"snapshot-dir", VALUE, .accepted = ALL, .read = read_string, CFG(snapshot_dir)},
    {"snapshot-interval", VALUE, .accepted = ALL, .read = read_duration, CFG(snapshot_interval_ms)},
    {"snapshot-keep", VALUE, .accepted = ALL, .read = read_int, CFG(snapshot_keep), .min = 1,
     .max = 1000},
    {"changelog-retention", VALUE, .accepted = ALL, .read = read_duration,
     CFG(changelog_retention_ms)},
    {"allow-empty", .accepted = ALL, .read = read_set, CFG(allow_empty)},
    {"dry-run", .accepted = RECOVER, .read = read_set, EXTRA(dry_run), .rejected = RUN,
     .why_not = "--dry-run is a tally recover option"},
    {"http", VALUE, .accepted = ALL, .read = read_http},
    {"http-token", VALUE, .accepted = ALL, .read = read_string, CFG(http_token)},
    {"query-timeout-ms", VALUE, .accepted = ALL, .read = read_int64, CFG(query_timeout_ms),
     .min = 1, .max = 3600000},
    {"query-max-rows", VALUE, .accepted = ALL, .read = read_int64, CFG(query_max_rows), .min = 1,
     .max = 100000000},
    {"query-max-bytes", VALUE, .accepted = ALL, .read = read_int64, CFG(query_max_bytes),
     .min = 131072, .max = 1073741824},
    /* the log settings are process-wide: set as soon as they are read */
    {"log-level", VALUE, .accepted = ALL, .read = read_choice, .choice = tly_log_set_level,
     .error = "--log-level must be debug, info, warn or error, not \"%s\""},
    {"strategy", VALUE, .accepted = RUNS, .read = read_choice, CFG(strategy),
     .choice = tly_emit_strategy_parse,
     .error = "--strategy must be inline, log_compacted, window_stream or state_store, not \"%s\"",
     .rejected = ENRICH,
     .why_not = "--strategy is not an enrich option: each committed batch emits the orders it saw "
                "first"},
    {"allowed-lateness", VALUE, .accepted = RUNS, .read = read_duration, CFG(allowed_lateness_ms)},
    {"batch-size", VALUE, .accepted = RUNS, .read = read_int, CFG(batch_size), .min = 1,
     .max = 100000},
    {"flush-interval", VALUE, .accepted = RUNS, .read = read_duration, CFG(flush_interval_ms),
     .min = 1, .max = INT64_MAX, .error = "--flush-interval must be at least 1ms",
     .rejected = ENRICH,
     .why_not = "--flush-interval is not an enrich option: each committed batch emits the orders "
                "it saw first"},
    {"log-format", VALUE, .accepted = ALL, .read = read_choice, .choice = tly_log_set_format,
     .error = "--log-format must be logfmt or json, not \"%s\""},
    /* the broker's defaults: group.min/max.session.timeout.ms 6 s / 30 min,
     * transaction.max.timeout.ms 15 min */
    {"session-timeout", VALUE, .accepted = ALL, .read = read_duration, CFG(session_timeout_ms),
     .min = 6000, .max = 1800000,
     .error = "--session-timeout must be between 6s and 30m (the broker's limits), not \"%s\""},
    {"transaction-timeout", VALUE, .accepted = ALL, .read = read_duration,
     CFG(transaction_timeout_ms), .min = 1000, .max = 900000,
     .error = "--transaction-timeout must be between 1s and 15m (the broker's "
              "transaction.max.timeout.ms), not \"%s\""},
    {"kafka-config", VALUE, .accepted = ALL, .read = read_kafka},
    {NULL, 'X', VALUE, .accepted = ALL, .read = read_kafka},
    {"help", 'h', .accepted = ALL, .read = read_help},
};

#define NFLAGS (sizeof(flags) / sizeof(flags[0]))
_Static_assert(NFLAGS <= 64, "a parse notes the flags given in a uint64_t");

typedef int finish_fn(const struct parse *p, uint64_t given);
static finish_fn finish_run, finish_enrich;

/* Each command's defaults beyond tly_runner_config_init's, and what it
 * checks once every flag is read. */
static const struct daemon {
    const char *name;
    const char *pipeline;
    const char *topic_prefix, *group_id, *instance_id; /* NULL: tly_runner_config_init's */
    const char *http_listen;                           /* also the example in --http's message */
    finish_fn *finish;
} daemons[] = {
    [CLI_DAEMON_RUN] = {"run", NULL, NULL, NULL, NULL, "127.0.0.1:9464", finish_run},
    [CLI_DAEMON_RECOVER] = {"recover", NULL, NULL, NULL, NULL, "127.0.0.1:9464", finish_run},
    [CLI_DAEMON_ENRICH] = {"enrich", "enrich", "opa", "opa", "enrich-0", "127.0.0.1:9466",
                           finish_enrich},
};

static void *field_of(const struct parse *p, const struct flag *f)
{
    char *base = f->where == IN_EXTRA ? (char *)p->extra : (char *)p->cfg;
    return base + f->field;
}

static int read_string(const struct parse *p, const struct flag *f, const char *value)
{
    *(const char **)field_of(p, f) = value;
    return -1;
}

static int read_set(const struct parse *p, const struct flag *f, const char *value)
{
    (void)value;
    *(int *)field_of(p, f) = 1;
    return -1;
}

static int read_int64(const struct parse *p, const struct flag *f, const char *value)
{
    char flag[64];
    snprintf(flag, sizeof(flag), "--%s", f->name);
    return cli_parse_int64(p->name, flag, value, f->min, f->max, field_of(p, f)) < 0
               ? CLI_EXIT_USAGE
               : -1;
}

static int read_int(const struct parse *p, const struct flag *f, const char *value)
{
    char flag[64];
    int64_t n;
    snprintf(flag, sizeof(flag), "--%s", f->name);
    if (cli_parse_int64(p->name, flag, value, f->min, f->max, &n) < 0)
        return CLI_EXIT_USAGE;
    *(int *)field_of(p, f) = (int)n;
    return -1;
}

static int read_duration(const struct parse *p, const struct flag *f, const char *value)
{
    char flag[64];
    int64_t *ms = field_of(p, f);
    snprintf(flag, sizeof(flag), "--%s", f->name);
    if (cli_parse_duration_ms(p->name, flag, value, ms) < 0)
        return CLI_EXIT_USAGE;
    if (f->error && (*ms < f->min || *ms > f->max))
        return cli_usage_error(p->name, f->error, value);
    return -1;
}

static int read_on_off(const struct parse *p, const struct flag *f, const char *value)
{
    if (strcmp(value, "on") != 0 && strcmp(value, "off") != 0)
        return cli_usage_error(p->name, "--%s must be on or off, not \"%s\"", f->name, value);
    *(int *)field_of(p, f) = strcmp(value, "on") == 0;
    return -1;
}

static int read_choice(const struct parse *p, const struct flag *f, const char *value)
{
    int n = f->choice(value);
    if (n < 0)
        return cli_usage_error(p->name, f->error, value);
    if (f->where != NOWHERE)
        *(int *)field_of(p, f) = n;
    return -1;
}

/* --http HOST:PORT or off; either way, given, it must work. */
static int read_http(const struct parse *p, const struct flag *f, const char *value)
{
    char host[256];
    int port;
    (void)f;
    if (strcmp(value, "off") == 0) {
        p->cfg->http_listen = NULL;
    } else {
        if (tly_http_parse_listen(value, host, sizeof(host), &port) < 0)
            return cli_usage_error(p->name, "--http wants HOST:PORT (e.g. %s) or off, not \"%s\"",
                                   daemons[p->cmd].http_listen, value);
        p->cfg->http_listen = value;
    }
    p->cfg->http_required = 1;
    return -1;
}

static int read_kafka(const struct parse *p, const struct flag *f, const char *value)
{
    int opt = f->short_name == 'X' ? 'X' : CLI_OPT_KAFKA_CONFIG;
    return cli_kafka_option(p->name, opt, value) != 0 ? CLI_EXIT_USAGE : -1;
}

/* --set NAME=VALUE: one more @param override (repeatable). */
static int read_param(const struct parse *p, const struct flag *f, const char *value)
{
    struct cli_daemon_extra *x = p->extra;
    (void)f;
    if (!strchr(value, '=') || value[0] == '=')
        return cli_usage_error(p->name, "--set takes NAME=VALUE, not \"%s\"", value);
    if (x->nsettings == CLI_DAEMON_MAX_SETTINGS)
        return cli_usage_error(p->name, "--set: at most %d settings", CLI_DAEMON_MAX_SETTINGS);
    x->settings[x->nsettings++] = value;
    x->settings[x->nsettings] = NULL;
    p->cfg->pipeline_settings = x->settings;
    return -1;
}

static int read_help(const struct parse *p, const struct flag *f, const char *value)
{
    (void)f;
    (void)value;
    fputs(p->usage, stdout);
    return CLI_EXIT_OK;
}

static bool was_given(uint64_t given, const char *name)
{
    for (size_t i = 0; i < NFLAGS; i++)
        if (flags[i].name && strcmp(flags[i].name, name) == 0)
            return (given >> i) & 1;
    return false;
}

/* --pipeline FILE.sql: the whole file is checked here, on a scratch
 * database, so that a mistake is a usage error with its line before anything
 * connects; cfg->pipeline becomes its @pipeline name, which is also the
 * default topic prefix and group. Returns -1 to go on. */
static int own_pipeline(const struct parse *p, uint64_t given)
{
    tly_runner_config *cfg = p->cfg;
    tly_pipeline_info info;
    tly_store *scratch = NULL;
    tly_pipeline *check = NULL;
    char err[1024];
    int ok;

    if (tly_pipeline_describe(cfg->pipeline, &info, err, sizeof(err)) < 0)
        return cli_usage_error(p->name, "%s", err);
    for (const char *c = info.name; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
              *c == '_' || *c == '-'))
            return cli_usage_error(p->name,
                                   "%s: @pipeline %s: a pipeline name is letters, digits, _ and - "
                                   "(it names the database file and the metrics)",
                                   info.source, info.name);
    if (!info.builtin && (strcmp(info.name, "orders") == 0 || strcmp(info.name, "telemetry") == 0 ||
                          strcmp(info.name, "enrich") == 0))
        return cli_usage_error(p->name,
                               "%s: @pipeline %s is a built-in pipeline's name: pick another",
                               info.source, info.name);
    ok = tly_store_open(":memory:", NULL, &scratch, err, sizeof(err)) == 0 &&
         tly_pipeline_open(scratch, cfg->pipeline, cfg->pipeline_settings, 0, &check, err,
                           sizeof(err)) == 0;
    tly_pipeline_close(check);
    tly_store_close(scratch);
    if (!ok)
        return cli_usage_error(p->name, "%s", err);
    snprintf(p->extra->pipeline_name, sizeof(p->extra->pipeline_name), "%s", info.name);
    cfg->pipeline_file = cfg->pipeline;
    cfg->pipeline = p->extra->pipeline_name;
    /* Its own internal topics and group: another pipeline's changelog topic
     * may have another partition count, and one group would share its
     * members out between two inputs. */
    if (!was_given(given, "topic-prefix"))
        cfg->topic_prefix = cfg->pipeline;
    if (!was_given(given, "group-id"))
        cfg->group_id = cfg->pipeline;
    return -1;
}

/* tally run and tally recover: the pipeline, the brokers, then what the
 * strategy allows. */
static int finish_run(const struct parse *p, uint64_t given)
{
    tly_runner_config *cfg = p->cfg;
    const char *pipeline = cfg->pipeline;

    int rc;

    if (!pipeline)
        return cli_usage_error(
            p->name, "--pipeline is required (orders, telemetry or a pipeline .sql file)");
    if (tly_pipeline_is_file(pipeline)) {
        if ((rc = own_pipeline(p, given)) >= 0)
            return rc;
        pipeline = cfg->pipeline;
    } else if (strcmp(pipeline, "orders") && strcmp(pipeline, "telemetry")) {
        return cli_usage_error(p->name,
                               "--pipeline must be orders, telemetry or a pipeline .sql file, not "
                               "\"%s\"",
                               pipeline);
    }
    if (cli_kafka_settings(p->name, &cfg->brokers) != 0)
        return CLI_EXIT_USAGE;
    if (!was_given(given, "strategy"))
        cfg->strategy =
            strcmp(pipeline, "telemetry") == 0 ? TLY_EMIT_LOG_COMPACTED : TLY_EMIT_INLINE;
    if (cfg->strategy != TLY_EMIT_INLINE && strcmp(pipeline, "orders") == 0)
        return cli_usage_error(p->name,
                               "--strategy %s is for telemetry; orders emits each batch's "
                               "changed windows (--strategy inline)",
                               tly_emit_strategy_name(cfg->strategy));
    /* Measured with benchmarks/bench_telemetry (100k vehicles x 30 sensors):
     * 5000 231k readings/s, 20000 276k, 50000 316k; peak RSS 276 -> 498 MB. */
    if (!was_given(given, "max-batch") && strcmp(pipeline, "telemetry") == 0 &&
        (cfg->strategy == TLY_EMIT_LOG_COMPACTED || cfg->strategy == TLY_EMIT_STATE_STORE))
        cfg->max_batch = 50000;
    if (was_given(given, "allowed-lateness") && cfg->strategy != TLY_EMIT_WINDOW_STREAM)
        return cli_usage_error(p->name,
                               "--allowed-lateness applies to --strategy window_stream only");
    if (cfg->batch_size > 1 && cfg->strategy == TLY_EMIT_LOG_COMPACTED)
        return cli_usage_error(p->name,
                               "--batch-size %d packs several vehicles into one message, which a "
                               "compacted topic cannot keep per key: use --batch-size 1 with "
                               "log_compacted, or another --strategy",
                               cfg->batch_size);
    if (!cfg->instance_id) {
        snprintf(p->extra->default_instance, sizeof(p->extra->default_instance), "%s-0", pipeline);
        cfg->instance_id = p->extra->default_instance;
    }
    return -1;
}

static int finish_enrich(const struct parse *p, uint64_t given)
{
    (void)given;
    return cli_kafka_settings(p->name, &p->cfg->brokers) != 0 ? CLI_EXIT_USAGE : -1;
}

static void set_defaults(const struct parse *p)
{
    const struct daemon *d = &daemons[p->cmd];
    tly_runner_config *cfg = p->cfg;

    tly_runner_config_init(cfg, d->pipeline);
    cfg->brokers = NULL; /* cli_kafka_settings */
    if (d->topic_prefix)
        cfg->topic_prefix = d->topic_prefix;
    if (d->group_id)
        cfg->group_id = d->group_id;
    if (d->instance_id)
        cfg->instance_id = d->instance_id;
    cfg->http_listen = d->http_listen;
    cfg->http_token = getenv("TALLY_HTTP_TOKEN");
    memset(p->extra, 0, sizeof(*p->extra));
    p->extra->dedup_window_ms = DEFAULT_DEDUP_WINDOW_MS;
}

/* getopt_long's long and short options for cmd: the flags it accepts and
 * the ones it names to refuse. */
static void build_options(enum cli_daemon_cmd cmd, struct option *options, char *shorts)
{
    size_t n = 0, s = 0;

    shorts[s++] = ':'; /* a missing value returns ':', not '?' (cli_bad_option) */
    for (size_t i = 0; i < NFLAGS; i++) {
        const struct flag *f = &flags[i];
        if (!((f->accepted | f->rejected) & (1u << cmd)))
            continue;
        if (f->name)
            options[n++] = (struct option){f->name, f->has_arg, NULL, OPT_BASE + (int)i};
        if (f->short_name) {
            shorts[s++] = f->short_name;
            if (f->has_arg == required_argument)
                shorts[s++] = ':';
        }
    }
    options[n] = (struct option){NULL, 0, NULL, 0};
    shorts[s] = '\0';
}

/* The flag getopt_long returned opt for, or NULL for its complaints. */
static const struct flag *flag_of(enum cli_daemon_cmd cmd, int opt)
{
    if (opt >= OPT_BASE && opt < OPT_BASE + (int)NFLAGS)
        return &flags[opt - OPT_BASE];
    for (size_t i = 0; i < NFLAGS; i++)
        if (flags[i].short_name && flags[i].short_name == opt &&
            ((flags[i].accepted | flags[i].rejected) & (1u << cmd)))
            return &flags[i];
    return NULL;
}

int cli_daemon_flags_parse(enum cli_daemon_cmd cmd, const char *usage, int argc, char **argv,
                           tly_runner_config *cfg, struct cli_daemon_extra *extra)
{
    struct option options[NFLAGS + 1];
    char shorts[2 * NFLAGS + 2];
    struct parse p = {cmd, daemons[cmd].name, usage, cfg, extra};
    uint64_t given = 0;
    const struct flag *f;
    int opt, rc;

    set_defaults(&p);
    build_options(cmd, options, shorts);
    opterr = 0;
    /* 0 rather than 1: glibc and musl then also forget where an earlier
     * parse in this process stopped (the unit test parses many times) */
    optind = 0;
    while ((opt = getopt_long(argc, argv, shorts, options, NULL)) != -1) {
        if (!(f = flag_of(cmd, opt)))
            return cli_bad_option(p.name, opt, argv, optind);
        if (f->rejected & (1u << cmd))
            return cli_usage_error(p.name, "%s", f->why_not);
        if ((rc = f->read(&p, f, optarg)) >= 0)
            return rc;
        given |= UINT64_C(1) << (f - flags);
    }
    if (optind < argc)
        return cli_usage_error(p.name, "unexpected argument \"%s\"", argv[optind]);
    if (cfg->http_token && !*cfg->http_token)
        cfg->http_token = NULL;
    return daemons[cmd].finish(&p, given);
}

enum cli_daemon_flag_use cli_daemon_flag_use(enum cli_daemon_cmd cmd, const char *name)
{
    for (size_t i = 0; i < NFLAGS; i++) {
        if (!flags[i].name || strcmp(flags[i].name, name) != 0)
            continue;
        if (flags[i].accepted & (1u << cmd))
            return CLI_DAEMON_FLAG_ACCEPTED;
        if (flags[i].rejected & (1u << cmd))
            return CLI_DAEMON_FLAG_REJECTED;
    }
    return CLI_DAEMON_FLAG_UNKNOWN;
}

const char *cli_daemon_flag_name(size_t i)
{
    for (size_t k = 0; k < NFLAGS; k++)
        if (flags[k].name && i-- == 0)
            return flags[k].name;
    return NULL;
}
