/* tests/unit/test_daemon_flags.c - the flags of tally run, recover and enrich
 * (adapters/cli/cli_daemon_flags.c): each command's defaults, every value
 * landing in its field, the flags one command refuses with a reason, bad
 * values with their exact messages and exit status, -X and --kafka-config,
 * and run and recover taking the same flags. No broker: parsing connects to
 * nothing. */
#include "tly_test.h"

#include "cli_common.h"
#include "cli_daemon_flags.h"
#include "kconf.h"
#include "runner.h"

#include <stdarg.h>

#define USAGE "usage: tally test [OPTIONS]\n"
#define HINT(cmd) "\nRun 'tally " cmd " --help' for usage.\n"

/* One parse and what it printed. */
struct outcome {
    int rc;
    char out[4096], err[4096];
};

static void read_back(FILE *f, char *buf, size_t len)
{
    size_t n;
    rewind(f);
    n = fread(buf, 1, len - 1, f);
    buf[n] = '\0';
    fclose(f);
}

/* cli_daemon_flags_parse(cmd, argv) with argv[0] the command's name and the
 * rest the NULL-terminated strings after cfg; stdout and stderr go to o. The
 * Kafka settings are process-wide: each parse starts without any. */
static void parse(struct outcome *o, enum cli_daemon_cmd cmd, tly_runner_config *cfg,
                  struct cli_daemon_extra *extra, ...)
{
    static char *argv[64];
    int argc = 0, saved_out = dup(1), saved_err = dup(2);
    FILE *out = tmpfile(), *err = tmpfile();
    va_list ap;

    argv[argc++] = "tally-test";
    va_start(ap, extra);
    for (char *arg; (arg = va_arg(ap, char *)) != NULL && argc < 63;)
        argv[argc++] = arg;
    va_end(ap);
    argv[argc] = NULL;
    tly_kconf_reset();
    fflush(stdout);
    fflush(stderr);
    dup2(fileno(out), 1);
    dup2(fileno(err), 2);
    o->rc = cli_daemon_flags_parse(cmd, USAGE, argc, argv, cfg, extra);
    fflush(stdout);
    fflush(stderr);
    dup2(saved_out, 1);
    dup2(saved_err, 2);
    close(saved_out);
    close(saved_err);
    read_back(out, o->out, sizeof(o->out));
    read_back(err, o->err, sizeof(o->err));
}

/* The defaults tally run and tally recover share (pipeline orders). */
static int check_run_defaults(const tly_runner_config *c, const struct cli_daemon_extra *x)
{
    CHECK_STR(c->pipeline, "orders");
    CHECK_STR(c->brokers, "b:9092");
    CHECK_STR(c->topic_prefix, "opb");
    CHECK_STR(c->group_id, "opb");
    CHECK_STR(c->instance_id, "orders-0");
    CHECK(c->instance_id == x->default_instance);
    CHECK(c->input_topic == NULL && c->output_topic == NULL);
    CHECK_STR(c->state_dir, "state");
    CHECK_INT(c->window_ms, 0);
    CHECK(c->pipeline_settings == NULL);
    CHECK_INT(c->commit_interval_ms, 100);
    CHECK_INT(c->max_batch, 20000);
    CHECK_INT(c->changelog, 1);
    CHECK_INT(c->strategy, TLY_EMIT_INLINE);
    CHECK_INT(c->flush_interval_ms, 120000);
    CHECK_INT(c->allowed_lateness_ms, 0);
    CHECK_INT(c->batch_size, 1);
    CHECK(c->snapshot_dir == NULL);
    CHECK_INT(c->snapshot_interval_ms, 60000);
    CHECK_INT(c->snapshot_keep, 3);
    CHECK_INT(c->changelog_retention_ms, 0);
    CHECK_INT(c->allow_empty, 0);
    CHECK_INT(c->session_timeout_ms, 45000);
    CHECK_INT(c->transaction_timeout_ms, 60000);
    CHECK_INT(c->recover_only, 0);
    CHECK_STR(c->http_listen, "127.0.0.1:9464");
    CHECK_INT(c->http_required, 0);
    CHECK(c->http_token == NULL);
    CHECK_INT(c->query_timeout_ms, 5000);
    CHECK_INT(c->query_max_rows, 10000);
    CHECK_INT(c->query_max_bytes, 16 << 20);
    CHECK_INT(c->manage_topics, 1);
    CHECK_INT(x->dry_run, 0);
    return 0;
end:
    return -1;
}

static void test_run_defaults(void)
{
    tly_runner_config c;
    struct cli_daemon_extra x;
    struct outcome o;

    parse(&o, CLI_DAEMON_RUN, &c, &x, "--pipeline", "orders", "--brokers", "b:9092", NULL);
    CHECK_MSG(o.rc == -1, "rc %d: %s", o.rc, o.err);
    CHECK_STR(o.out, "");
    CHECK_STR(o.err, "");
    CHECK(check_run_defaults(&c, &x) == 0);

    /* telemetry: log_compacted, and larger batches with it and state_store */
    parse(&o, CLI_DAEMON_RUN, &c, &x, "--pipeline", "telemetry", "--brokers", "b:9092", NULL);
    CHECK_MSG(o.rc == -1, "%s", o.err);
    CHECK_INT(c.strategy, TLY_EMIT_LOG_COMPACTED);
    CHECK_INT(c.max_batch, 50000);
    CHECK_STR(c.instance_id, "telemetry-0");
    parse(&o, CLI_DAEMON_RUN, &c, &x, "--pipeline", "telemetry", "--brokers", "b:9092",
          "--strategy", "state_store", NULL);
    CHECK_INT(c.strategy, TLY_EMIT_STATE_STORE);
    CHECK_INT(c.max_batch, 50000);
    parse(&o, CLI_DAEMON_RUN, &c, &x, "--pipeline", "telemetry", "--brokers", "b:9092",
          "--strategy", "window_stream", NULL);
    CHECK_INT(c.strategy, TLY_EMIT_WINDOW_STREAM);
    CHECK_INT(c.max_batch, 20000);
    /* a --max-batch given stands, even the default's value */
    parse(&o, CLI_DAEMON_RUN, &c, &x, "--pipeline", "telemetry", "--brokers", "b:9092",
          "--max-batch", "5000", NULL);
    CHECK_INT(c.strategy, TLY_EMIT_LOG_COMPACTED);
    CHECK_INT(c.max_batch, 5000);
end:;
}

static void test_recover_defaults(void)
{
    tly_runner_config c;
    struct cli_daemon_extra x;
    struct outcome o;

    parse(&o, CLI_DAEMON_RECOVER, &c, &x, "--pipeline", "orders", "--brokers", "b:9092", NULL);
    CHECK_MSG(o.rc == -1, "rc %d: %s", o.rc, o.err);
    CHECK_STR(o.err, "");
    CHECK(check_run_defaults(&c, &x) == 0);
    parse(&o, CLI_DAEMON_RECOVER, &c, &x, "--dry-run", "--pipeline", "orders", "--brokers",
          "b:9092", NULL);
    CHECK_MSG(o.rc == -1, "%s", o.err);
    CHECK_INT(x.dry_run, 1);
    /* the dry run of an earlier parse does not leak into the next */
    parse(&o, CLI_DAEMON_RECOVER, &c, &x, "--pipeline", "orders", "--brokers", "b:9092", NULL);
    CHECK_INT(x.dry_run, 0);
end:;
}

static void test_enrich_defaults(void)
{
    tly_runner_config c;
    struct cli_daemon_extra x;
    struct outcome o;

    parse(&o, CLI_DAEMON_ENRICH, &c, &x, "--brokers", "b:9092", NULL);
    CHECK_MSG(o.rc == -1, "rc %d: %s", o.rc, o.err);
    CHECK_STR(o.err, "");
    CHECK_STR(c.pipeline, "enrich");
    CHECK_STR(c.brokers, "b:9092");
    CHECK_STR(c.topic_prefix, "opa");
    CHECK_STR(c.group_id, "opa");
    CHECK_STR(c.instance_id, "enrich-0");
    CHECK(c.input_topic == NULL && c.output_topic == NULL);
    CHECK_STR(c.state_dir, "state");
    CHECK_INT(x.dedup_window_ms, 24LL * 3600 * 1000);
    CHECK_INT(c.commit_interval_ms, 100);
    CHECK_INT(c.max_batch, 20000);
    CHECK_INT(c.changelog, 1);
    CHECK_INT(c.strategy, TLY_EMIT_INLINE);
    CHECK_INT(c.batch_size, 1);
    CHECK_INT(c.snapshot_interval_ms, 60000);
    CHECK_INT(c.snapshot_keep, 3);
    CHECK_INT(c.session_timeout_ms, 45000);
    CHECK_INT(c.transaction_timeout_ms, 60000);
    CHECK_STR(c.http_listen, "127.0.0.1:9466");
    CHECK_INT(c.http_required, 0);
    CHECK(c.http_token == NULL);
    CHECK_INT(c.query_timeout_ms, 5000);
    CHECK_INT(c.query_max_rows, 10000);
    CHECK_INT(x.dry_run, 0);
end:;
}

/* Every run flag with a value, as tally run and tally recover read it. */
#define RUN_EVERY_FLAG                                                                             \
    "--pipeline", "telemetry", "--brokers", "b:9092", "--topic-prefix", "p", "--group-id", "g",    \
        "--instance-id", "i-7", "--input-topic", "in", "--output-topic", "out", "--state-dir",     \
        "/s", "--window-size", "90s", "--commit-interval-ms", "250", "--max-batch", "77",          \
        "--changelog", "off", "--snapshot-dir", "/snap", "--snapshot-interval", "0",               \
        "--snapshot-keep", "9", "--changelog-retention", "1h", "--allow-empty", "--http",          \
        "0.0.0.0:9999", "--http-token", "tok", "--query-timeout-ms", "1500", "--query-max-rows",   \
        "42", "--query-max-bytes", "200000", "--log-level", "info", "--strategy", "window_stream", \
        "--allowed-lateness", "5s", "--batch-size", "8", "--flush-interval", "3s", "--log-format", \
        "logfmt", "--session-timeout", "10s", "--transaction-timeout", "2m"

static int check_run_every_flag(const tly_runner_config *c)
{
    CHECK_STR(c->pipeline, "telemetry");
    CHECK_STR(c->brokers, "b:9092");
    CHECK_STR(c->topic_prefix, "p");
    CHECK_STR(c->group_id, "g");
    CHECK_STR(c->instance_id, "i-7");
    CHECK_STR(c->input_topic, "in");
    CHECK_STR(c->output_topic, "out");
    CHECK_STR(c->state_dir, "/s");
    CHECK_INT(c->window_ms, 90000);
    CHECK_INT(c->commit_interval_ms, 250);
    CHECK_INT(c->max_batch, 77);
    CHECK_INT(c->changelog, 0);
    CHECK_STR(c->snapshot_dir, "/snap");
    CHECK_INT(c->snapshot_interval_ms, 0);
    CHECK_INT(c->snapshot_keep, 9);
    CHECK_INT(c->changelog_retention_ms, 3600000);
    CHECK_INT(c->allow_empty, 1);
    CHECK_STR(c->http_listen, "0.0.0.0:9999");
    CHECK_INT(c->http_required, 1);
    CHECK_STR(c->http_token, "tok");
    CHECK_INT(c->query_timeout_ms, 1500);
    CHECK_INT(c->query_max_rows, 42);
    CHECK_INT(c->query_max_bytes, 200000);
    CHECK_INT(c->strategy, TLY_EMIT_WINDOW_STREAM);
    CHECK_INT(c->allowed_lateness_ms, 5000);
    CHECK_INT(c->batch_size, 8);
    CHECK_INT(c->flush_interval_ms, 3000);
    CHECK_INT(c->session_timeout_ms, 10000);
    CHECK_INT(c->transaction_timeout_ms, 120000);
    return 0;
end:
    return -1;
}

static void test_every_value(void)
{
    tly_runner_config c;
    struct cli_daemon_extra x;
    struct outcome o;

    parse(&o, CLI_DAEMON_RUN, &c, &x, RUN_EVERY_FLAG, NULL);
    CHECK_MSG(o.rc == -1, "rc %d: %s", o.rc, o.err);
    CHECK(check_run_every_flag(&c) == 0);
    parse(&o, CLI_DAEMON_RECOVER, &c, &x, RUN_EVERY_FLAG, "--dry-run", NULL);
    CHECK_MSG(o.rc == -1, "rc %d: %s", o.rc, o.err);
    CHECK(check_run_every_flag(&c) == 0);
    CHECK_INT(x.dry_run, 1);

    parse(&o, CLI_DAEMON_ENRICH, &c, &x, "--brokers", "e:1", "--topic-prefix", "ep", "--group-id",
          "eg", "--instance-id", "e-3", "--input-topic", "raw", "--output-topic", "clean",
          "--state-dir", "/es", "--dedup-window", "90m", "--commit-interval-ms", "20",
          "--max-batch", "600", "--snapshot-dir", "/esnap", "--snapshot-interval", "5m",
          "--snapshot-keep", "1", "--changelog-retention", "30s", "--allow-empty", "--http", "off",
          "--http-token", "et", "--query-timeout-ms", "7", "--query-max-rows", "8", "--log-level",
          "info", "--log-format", "logfmt", "--session-timeout", "30m", "--transaction-timeout",
          "15m", NULL);
    CHECK_MSG(o.rc == -1, "rc %d: %s", o.rc, o.err);
    CHECK_STR(c.pipeline, "enrich");
    CHECK_STR(c.brokers, "e:1");
    CHECK_STR(c.topic_prefix, "ep");
    CHECK_STR(c.group_id, "eg");
    CHECK_STR(c.instance_id, "e-3");
    CHECK_STR(c.input_topic, "raw");
    CHECK_STR(c.output_topic, "clean");
    CHECK_STR(c.state_dir, "/es");
    CHECK_INT(x.dedup_window_ms, 90 * 60000);
    CHECK_INT(c.commit_interval_ms, 20);
    CHECK_INT(c.max_batch, 600);
    CHECK_STR(c.snapshot_dir, "/esnap");
    CHECK_INT(c.snapshot_interval_ms, 300000);
    CHECK_INT(c.snapshot_keep, 1);
    CHECK_INT(c.changelog_retention_ms, 30000);
    CHECK_INT(c.allow_empty, 1);
    CHECK(c.http_listen == NULL);
    CHECK_INT(c.http_required, 1);
    CHECK_STR(c.http_token, "et");
    CHECK_INT(c.query_timeout_ms, 7);
    CHECK_INT(c.query_max_rows, 8);
    CHECK_INT(c.session_timeout_ms, 1800000);
    CHECK_INT(c.transaction_timeout_ms, 900000);
    CHECK_INT(c.changelog, 1);
end:;
}

/* A usage error: exit status 2, nothing on stdout, exactly `err` on stderr. */
#define CHECK_USAGE(o, expected_err)                                                               \
    do {                                                                                           \
        CHECK_INT((o).rc, CLI_EXIT_USAGE);                                                         \
        CHECK_STR((o).out, "");                                                                    \
        CHECK_STR((o).err, expected_err);                                                          \
    } while (0)

static void test_enrich_refuses_run_flags(void)
{
    tly_runner_config c;
    struct cli_daemon_extra x;
    struct outcome o;

    parse(&o, CLI_DAEMON_ENRICH, &c, &x, "--brokers", "b:1", "--window-size", "5s", NULL);
    CHECK_USAGE(o, "tally enrich: --window-size is not an enrich option: windows belong to tally "
                   "run --pipeline orders; the dedup window is --dedup-window" HINT("enrich"));
    parse(&o, CLI_DAEMON_ENRICH, &c, &x, "--changelog", "off", NULL);
    CHECK_USAGE(o, "tally enrich: --changelog is always on for enrich: without it a crash between "
                   "the Kafka and the SQLite commit would emit that batch's orders "
                   "twice" HINT("enrich"));
    parse(&o, CLI_DAEMON_ENRICH, &c, &x, "--pipeline", "orders", NULL);
    CHECK_USAGE(o, "tally enrich: --pipeline is not an enrich option: tally enrich always runs "
                   "the enrich pipeline (tally run --pipeline orders|telemetry runs the "
                   "others)" HINT("enrich"));
    parse(&o, CLI_DAEMON_ENRICH, &c, &x, "--strategy", "inline", NULL);
    CHECK_USAGE(o, "tally enrich: --strategy is not an enrich option: each committed batch emits "
                   "the orders it saw first" HINT("enrich"));
    parse(&o, CLI_DAEMON_ENRICH, &c, &x, "--flush-interval", "1s", NULL);
    CHECK_USAGE(o, "tally enrich: --flush-interval is not an enrich option: each committed batch "
                   "emits the orders it saw first" HINT("enrich"));
    /* refused, yet a value it takes must still be there */
    parse(&o, CLI_DAEMON_ENRICH, &c, &x, "--window-size", NULL);
    CHECK_USAGE(o, "tally enrich: option --window-size needs a value" HINT("enrich"));
    /* the run flags enrich does not name at all, and the other way round */
    parse(&o, CLI_DAEMON_ENRICH, &c, &x, "--batch-size", "2", NULL);
    CHECK_USAGE(o, "tally enrich: unknown option --batch-size" HINT("enrich"));
    parse(&o, CLI_DAEMON_ENRICH, &c, &x, "--dry-run", NULL);
    CHECK_USAGE(o, "tally enrich: unknown option --dry-run" HINT("enrich"));
    parse(&o, CLI_DAEMON_RUN, &c, &x, "--dedup-window", "1h", NULL);
    CHECK_USAGE(o, "tally run: unknown option --dedup-window" HINT("run"));
    parse(&o, CLI_DAEMON_RUN, &c, &x, "--dry-run", NULL);
    CHECK_USAGE(o, "tally run: --dry-run is a tally recover option" HINT("run"));
end:;
}

static void test_bad_values(void)
{
    tly_runner_config c;
    struct cli_daemon_extra x;
    struct outcome o;

    parse(&o, CLI_DAEMON_RUN, &c, &x, "--max-batch", "x", NULL);
    CHECK_USAGE(o, "tally run: --max-batch must be an integer between 1 and 1000000, not "
                   "\"x\"" HINT("run"));
    parse(&o, CLI_DAEMON_RECOVER, &c, &x, "--commit-interval-ms", "600001", NULL);
    CHECK_USAGE(o, "tally recover: --commit-interval-ms must be an integer between 1 and 600000, "
                   "not \"600001\"" HINT("recover"));
    parse(&o, CLI_DAEMON_ENRICH, &c, &x, "--snapshot-keep", "0", NULL);
    CHECK_USAGE(o, "tally enrich: --snapshot-keep must be an integer between 1 and 1000, not "
                   "\"0\"" HINT("enrich"));
    parse(&o, CLI_DAEMON_RUN, &c, &x, "--window-size", "abc", NULL);
    CHECK_USAGE(o, "tally run: --window-size: invalid duration \"abc\": use seconds (\"60\") or a "
                   "number with a unit (\"500ms\", \"10s\", \"2m\", \"24h\", "
                   "\"1h30m\")" HINT("run"));
    parse(&o, CLI_DAEMON_RUN, &c, &x, "--window-size", "0", NULL);
    CHECK_USAGE(o, "tally run: --window-size must be at least 1ms" HINT("run"));
    parse(&o, CLI_DAEMON_RUN, &c, &x, "--flush-interval", "0", NULL);
    CHECK_USAGE(o, "tally run: --flush-interval must be at least 1ms" HINT("run"));
    parse(&o, CLI_DAEMON_ENRICH, &c, &x, "--dedup-window", "367d", NULL);
    CHECK_USAGE(o, "tally enrich: --dedup-window must be between 1ms and 366d, not \"367d\" (e.g. "
                   "24h, 90m)" HINT("enrich"));
    parse(&o, CLI_DAEMON_ENRICH, &c, &x, "--session-timeout", "1s", NULL);
    CHECK_USAGE(o, "tally enrich: --session-timeout must be between 6s and 30m (the broker's "
                   "limits), not \"1s\"" HINT("enrich"));
    parse(&o, CLI_DAEMON_RUN, &c, &x, "--transaction-timeout", "20m", NULL);
    CHECK_USAGE(o, "tally run: --transaction-timeout must be between 1s and 15m (the broker's "
                   "transaction.max.timeout.ms), not \"20m\"" HINT("run"));
    parse(&o, CLI_DAEMON_RUN, &c, &x, "--changelog", "maybe", NULL);
    CHECK_USAGE(o, "tally run: --changelog must be on or off, not \"maybe\"" HINT("run"));
    parse(&o, CLI_DAEMON_RUN, &c, &x, "--strategy", "bogus", NULL);
    CHECK_USAGE(o, "tally run: --strategy must be inline, log_compacted, window_stream or "
                   "state_store, not \"bogus\"" HINT("run"));
    parse(&o, CLI_DAEMON_ENRICH, &c, &x, "--log-format", "xml", NULL);
    CHECK_USAGE(o, "tally enrich: --log-format must be logfmt or json, not \"xml\"" HINT("enrich"));
    parse(&o, CLI_DAEMON_RECOVER, &c, &x, "--log-level", "loud", NULL);
    CHECK_USAGE(o, "tally recover: --log-level must be debug, info, warn or error, not "
                   "\"loud\"" HINT("recover"));
    /* --http's example is the command's own default address */
    parse(&o, CLI_DAEMON_RUN, &c, &x, "--http", "foo", NULL);
    CHECK_USAGE(o, "tally run: --http wants HOST:PORT (e.g. 127.0.0.1:9464) or off, not "
                   "\"foo\"" HINT("run"));
    parse(&o, CLI_DAEMON_ENRICH, &c, &x, "--http", "127.0.0.1:99999", NULL);
    CHECK_USAGE(o, "tally enrich: --http wants HOST:PORT (e.g. 127.0.0.1:9466) or off, not "
                   "\"127.0.0.1:99999\"" HINT("enrich"));
end:;
}

/* What getopt_long complains about, and what the flags leave wrong. */
static void test_usage_errors(void)
{
    tly_runner_config c;
    struct cli_daemon_extra x;
    struct outcome o;

    parse(&o, CLI_DAEMON_RUN, &c, &x, "--no-such-flag", NULL);
    CHECK_USAGE(o, "tally run: unknown option --no-such-flag" HINT("run"));
    parse(&o, CLI_DAEMON_RUN, &c, &x, "--snap", "3", NULL); /* three --snapshot-* flags */
    CHECK_USAGE(o, "tally run: unknown option --snap" HINT("run"));
    parse(&o, CLI_DAEMON_RECOVER, &c, &x, "--pipeline", "orders", "--brokers", NULL);
    CHECK_USAGE(o, "tally recover: option --brokers needs a value" HINT("recover"));
    parse(&o, CLI_DAEMON_RUN, &c, &x, "--pipeline", "orders", "--brokers", "b:1", "extra", NULL);
    CHECK_USAGE(o, "tally run: unexpected argument \"extra\"" HINT("run"));
    parse(&o, CLI_DAEMON_RUN, &c, &x, "--brokers", "b:1", NULL);
    CHECK_USAGE(
        o, "tally run: --pipeline is required (orders, telemetry or a pipeline .sql file)" HINT(
               "run"));
    parse(&o, CLI_DAEMON_RUN, &c, &x, "--pipeline", "enrich", NULL);
    CHECK_USAGE(
        o,
        "tally run: --pipeline must be orders, telemetry or a pipeline .sql file, not \"enrich\"" HINT(
            "run"));
    parse(&o, CLI_DAEMON_ENRICH, &c, &x, "--brokers", "", NULL);
    CHECK_USAGE(o, "tally enrich: --brokers must not be empty, e.g. --brokers "
                   "127.0.0.1:9092" HINT("enrich"));
    parse(&o, CLI_DAEMON_RUN, &c, &x, "--pipeline", "orders", "--brokers", "b:1", "--strategy",
          "log_compacted", NULL);
    CHECK_USAGE(o, "tally run: --strategy log_compacted is for telemetry; orders emits each "
                   "batch's changed windows (--strategy inline)" HINT("run"));
    parse(&o, CLI_DAEMON_RUN, &c, &x, "--pipeline", "telemetry", "--brokers", "b:1",
          "--allowed-lateness", "0", NULL);
    CHECK_USAGE(o, "tally run: --allowed-lateness applies to --strategy window_stream "
                   "only" HINT("run"));
    parse(&o, CLI_DAEMON_RUN, &c, &x, "--pipeline", "telemetry", "--brokers", "b:1", "--batch-size",
          "2", NULL);
    CHECK_USAGE(o, "tally run: --batch-size 2 packs several vehicles into one message, which a "
                   "compacted topic cannot keep per key: use --batch-size 1 with log_compacted, "
                   "or another --strategy" HINT("run"));
    /* the first problem on the command line is the one reported */
    parse(&o, CLI_DAEMON_RUN, &c, &x, "--max-batch", "0", "--window-size", "0", NULL);
    CHECK_USAGE(o, "tally run: --max-batch must be an integer between 1 and 1000000, not "
                   "\"0\"" HINT("run"));
end:;
}

static void test_help(void)
{
    tly_runner_config c;
    struct cli_daemon_extra x;
    struct outcome o;

    parse(&o, CLI_DAEMON_RUN, &c, &x, "--pipeline", "orders", "--help", NULL);
    CHECK_INT(o.rc, CLI_EXIT_OK);
    CHECK_STR(o.out, USAGE);
    CHECK_STR(o.err, "");
    parse(&o, CLI_DAEMON_ENRICH, &c, &x, "-h", "--bogus", NULL);
    CHECK_INT(o.rc, CLI_EXIT_OK);
    CHECK_STR(o.out, USAGE);
    parse(&o, CLI_DAEMON_RECOVER, &c, &x, "--bogus", "--help", NULL);
    CHECK_USAGE(o, "tally recover: unknown option --bogus" HINT("recover"));
end:;
}

/* Unique prefixes of a command's long flags are the flags. */
static void test_abbreviations(void)
{
    tly_runner_config c;
    struct cli_daemon_extra x;
    struct outcome o;

    parse(&o, CLI_DAEMON_RECOVER, &c, &x, "--pipe", "telemetry", "--brok", "b:1", "--dry", NULL);
    CHECK_MSG(o.rc == -1, "%s", o.err);
    CHECK_STR(c.pipeline, "telemetry");
    CHECK_INT(x.dry_run, 1);
    parse(&o, CLI_DAEMON_ENRICH, &c, &x, "--brokers", "b:1", "--dedup", "2h", NULL);
    CHECK_MSG(o.rc == -1, "%s", o.err);
    CHECK_INT(x.dedup_window_ms, 7200000);
    /* --window names --window-size, refused by enrich with its reason */
    parse(&o, CLI_DAEMON_ENRICH, &c, &x, "--window", "5s", NULL);
    CHECK_INT(o.rc, CLI_EXIT_USAGE);
    CHECK(strstr(o.err, "--window-size is not an enrich option") != NULL);
end:;
}

static void test_http_token(void)
{
    tly_runner_config c;
    struct cli_daemon_extra x;
    struct outcome o;

    setenv("TALLY_HTTP_TOKEN", "from-env", 1);
    parse(&o, CLI_DAEMON_ENRICH, &c, &x, "--brokers", "b:1", NULL);
    CHECK_STR(c.http_token, "from-env");
    parse(&o, CLI_DAEMON_RUN, &c, &x, "--pipeline", "orders", "--brokers", "b:1", "--http-token",
          "flag", NULL);
    CHECK_STR(c.http_token, "flag");
    /* empty, from either: no token */
    parse(&o, CLI_DAEMON_RUN, &c, &x, "--pipeline", "orders", "--brokers", "b:1", "--http-token",
          "", NULL);
    CHECK_MSG(o.rc == -1, "%s", o.err);
    CHECK(c.http_token == NULL);
    setenv("TALLY_HTTP_TOKEN", "", 1);
    parse(&o, CLI_DAEMON_ENRICH, &c, &x, "--brokers", "b:1", NULL);
    CHECK(c.http_token == NULL);
end:
    unsetenv("TALLY_HTTP_TOKEN");
}

static void test_kafka_properties(void)
{
    tly_runner_config c;
    struct cli_daemon_extra x;
    struct outcome o;
    char summary[1024], path[256];
    FILE *f;

    /* -X repeats, in the order given */
    parse(&o, CLI_DAEMON_RUN, &c, &x, "--pipeline", "orders", "-X", "client.id=one", "--brokers",
          "b:1", "-X", "linger.ms=7", "-Xclient.id=two", NULL);
    CHECK_MSG(o.rc == -1, "%s", o.err);
    tly_kconf_summary(summary, sizeof(summary));
    CHECK_STR(summary, "client.id=one linger.ms=7 client.id=two");
    parse(&o, CLI_DAEMON_ENRICH, &c, &x, "-X", "foo", NULL);
    CHECK_USAGE(o, "tally enrich: -X: \"foo...\" is not name=value (a librdkafka property, e.g. "
                   "security.protocol=SASL_SSL)" HINT("enrich"));
    parse(&o, CLI_DAEMON_RUN, &c, &x, "-X", NULL);
    CHECK_USAGE(o, "tally run: option -X needs a value" HINT("run"));

    /* without --brokers, the file's bootstrap.servers */
    snprintf(path, sizeof(path), "%s/client.properties", tly_test_dir());
    CHECK((f = fopen(path, "w")) != NULL);
    fputs("bootstrap.servers=file-host:9093\nlinger.ms=50\n", f);
    fclose(f);
    parse(&o, CLI_DAEMON_RECOVER, &c, &x, "--pipeline", "orders", "--kafka-config", path, NULL);
    CHECK_MSG(o.rc == -1, "%s", o.err);
    CHECK_STR(c.brokers, "file-host:9093");
    parse(&o, CLI_DAEMON_ENRICH, &c, &x, "--kafka-config", path, "--brokers", "flag:1", NULL);
    CHECK_MSG(o.rc == -1, "%s", o.err);
    CHECK_STR(c.brokers, "flag:1");
    parse(&o, CLI_DAEMON_RUN, &c, &x, "--pipeline", "orders", NULL);
    CHECK_USAGE(o, "tally run: --brokers is required (or set KAFKA_BROKERS, or bootstrap.servers "
                   "in --kafka-config), e.g. --brokers 127.0.0.1:9092" HINT("run"));
end:
    tly_kconf_reset();
}

/* tally recover takes every tally run flag (a run's command line recovers
 * it) and --dry-run, which tally run refuses with its reason. */
static void test_run_and_recover_alike(void)
{
    const char *name;
    int n = 0;

    for (size_t i = 0; (name = cli_daemon_flag_name(i)) != NULL; i++, n++) {
        enum cli_daemon_flag_use run = cli_daemon_flag_use(CLI_DAEMON_RUN, name);
        enum cli_daemon_flag_use recover = cli_daemon_flag_use(CLI_DAEMON_RECOVER, name);
        if (strcmp(name, "dry-run") == 0) {
            CHECK_INT(run, CLI_DAEMON_FLAG_REJECTED);
            CHECK_INT(recover, CLI_DAEMON_FLAG_ACCEPTED);
        } else {
            CHECK_MSG(run == recover, "--%s: run %d, recover %d", name, run, recover);
            CHECK_MSG(run == CLI_DAEMON_FLAG_ACCEPTED ||
                          cli_daemon_flag_use(CLI_DAEMON_ENRICH, name) == CLI_DAEMON_FLAG_ACCEPTED,
                      "--%s: taken by none", name);
        }
    }
    CHECK_INT(n, 35); /* every long flag; -X has none */
    CHECK_INT(cli_daemon_flag_use(CLI_DAEMON_ENRICH, "window-size"), CLI_DAEMON_FLAG_REJECTED);
    CHECK_INT(cli_daemon_flag_use(CLI_DAEMON_ENRICH, "batch-size"), CLI_DAEMON_FLAG_UNKNOWN);
    CHECK_INT(cli_daemon_flag_use(CLI_DAEMON_ENRICH, "dedup-window"), CLI_DAEMON_FLAG_ACCEPTED);
    CHECK_INT(cli_daemon_flag_use(CLI_DAEMON_RUN, "dedup-window"), CLI_DAEMON_FLAG_UNKNOWN);
    CHECK_INT(cli_daemon_flag_use(CLI_DAEMON_RUN, "no-such-flag"), CLI_DAEMON_FLAG_UNKNOWN);
end:;
}

/* --set NAME=VALUE is repeatable and reaches pipeline_settings; a pipeline
 * file's @pipeline name becomes the pipeline, topic prefix and group. */
static void test_pipeline_files(void)
{
    tly_runner_config c;
    struct cli_daemon_extra x;
    struct outcome o;
    char path[512];
    FILE *f;

    parse(&o, CLI_DAEMON_RUN, &c, &x, "--pipeline", "orders", "--brokers", "b:1", "--set",
          "window_ms=120000", "--set", "other=x", NULL);
    CHECK_MSG(o.rc == -1, "rc %d: %s", o.rc, o.err);
    CHECK(c.pipeline_settings != NULL);
    CHECK_STR(c.pipeline_settings[0], "window_ms=120000");
    CHECK_STR(c.pipeline_settings[1], "other=x");
    CHECK(c.pipeline_settings[2] == NULL);
    CHECK(c.pipeline_file == NULL);
    CHECK_STR(c.topic_prefix, "opb");
    parse(&o, CLI_DAEMON_RUN, &c, &x, "--pipeline", "orders", "--brokers", "b:1", "--set", "x",
          NULL);
    CHECK_USAGE(o, "tally run: --set takes NAME=VALUE, not \"x\"" HINT("run"));
    parse(&o, CLI_DAEMON_ENRICH, &c, &x, "--brokers", "b:1", "--set", "a=1", NULL);
    CHECK_USAGE(o, "tally enrich: --set is not an enrich option: the enrich pipeline's settings "
                   "are its flags" HINT("enrich"));

    snprintf(path, sizeof(path), "%s/views.sql", tly_test_dir());
    CHECK((f = fopen(path, "w")) != NULL);
    fputs(
        "-- @pipeline views\n-- @param window_ms 60000\n-- @field page page text required\n"
        "-- @state\nCREATE TABLE v (page TEXT PRIMARY KEY, n INTEGER NOT NULL);\n"
        "-- @fold\nINSERT INTO v (page, n) VALUES (:page, 1) ON CONFLICT DO UPDATE SET n = n + 1;\n",
        f);
    fclose(f);
    parse(&o, CLI_DAEMON_RUN, &c, &x, "--pipeline", path, "--brokers", "b:1", NULL);
    CHECK_MSG(o.rc == -1, "rc %d: %s", o.rc, o.err);
    CHECK_STR(c.pipeline, "views");
    CHECK_STR(c.pipeline_file, path);
    CHECK_STR(c.topic_prefix, "views");
    CHECK_STR(c.group_id, "views");
    CHECK_STR(c.instance_id, "views-0");
    parse(&o, CLI_DAEMON_RUN, &c, &x, "--pipeline", path, "--brokers", "b:1", "--topic-prefix",
          "tp", "--group-id", "g", "--set", "nope=1", NULL);
    CHECK(o.rc == 2);
    CHECK_MSG(strstr(o.err, "no setting \"nope\"") != NULL, "%s", o.err);
    parse(&o, CLI_DAEMON_RUN, &c, &x, "--pipeline", path, "--brokers", "b:1", "--topic-prefix",
          "tp", "--group-id", "g", NULL);
    CHECK_MSG(o.rc == -1, "rc %d: %s", o.rc, o.err);
    CHECK_STR(c.topic_prefix, "tp");
    CHECK_STR(c.group_id, "g");

    CHECK((f = fopen(path, "w")) != NULL);
    fputs("-- @pipeline views\n-- @field page page text required\n-- @state\n"
          "CREATE TABLE v (page TEXT, n INTEGER NOT NULL);\n"
          "-- @fold\nINSERT INTO v (page, n) VALUES (:page, 1);\n",
          f);
    fclose(f);
    parse(&o, CLI_DAEMON_RUN, &c, &x, "--pipeline", path, "--brokers", "b:1", NULL);
    CHECK(o.rc == 2);
    CHECK_MSG(strstr(o.err, ":4: @state: table v has no PRIMARY KEY") != NULL, "%s", o.err);
    parse(&o, CLI_DAEMON_RUN, &c, &x, "--pipeline", "./missing.sql", "--brokers", "b:1", NULL);
    CHECK(o.rc == 2);
    CHECK_MSG(strstr(o.err, "cannot open pipeline file ./missing.sql") != NULL, "%s", o.err);
end:;
}

int main(int argc, char **argv)
{
    static const tly_testcase cases[] = {
        {"run_defaults", test_run_defaults},
        {"recover_defaults", test_recover_defaults},
        {"enrich_defaults", test_enrich_defaults},
        {"every_value", test_every_value},
        {"enrich_refuses_run_flags", test_enrich_refuses_run_flags},
        {"bad_values", test_bad_values},
        {"usage_errors", test_usage_errors},
        {"help", test_help},
        {"abbreviations", test_abbreviations},
        {"http_token", test_http_token},
        {"kafka_properties", test_kafka_properties},
        {"run_and_recover_alike", test_run_and_recover_alike},
        {"pipeline_files", test_pipeline_files},
        {NULL, NULL}};
    /* the parse reads these; the cases set what they need */
    static const char *const env[] = {"KAFKA_BROKERS",        "TALLY_KAFKA_CONFIG",
                                      "TALLY_HTTP_TOKEN",     "KAFKA_SECURITY_PROTOCOL",
                                      "KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME",
                                      "KAFKA_SASL_PASSWORD",  "KAFKA_SSL_CA_LOCATION",
                                      "TALLY_KAFKA_DEBUG",    "POSIXLY_CORRECT"};
    for (size_t i = 0; i < sizeof(env) / sizeof(env[0]); i++)
        unsetenv(env[i]);
    return tly_test_main(argc, argv, cases);
}
