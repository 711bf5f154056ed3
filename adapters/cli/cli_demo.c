/* adapters/cli/cli_demo.c - tally demo: the daemon at work with nothing to
 * install or start.
 *
 * Starts librdkafka's mock cluster in process, creates both pipelines' topics
 * on it, produces generated orders and telemetry at a steady rate (plus one
 * malformed event a second per pipeline, which lands in the dead-letter topic),
 * and runs `tally run` for both pipelines in threads against it. Every second it
 * prints the busiest windows and the key figures, read from the state databases
 * with SQL. The database paths are printed first so `tally query` or `sqlite3`
 * can read them while the demo runs.
 *
 * The mock cluster is a demo's broker only: it does not implement
 * read_committed filtering, fencing or compaction, so exactly-once is proven by
 * the tests against a real broker (tests/kafka), never here. */
#include "cli_common.h"
#include "clock.h"
#include "commands.h"
#include "changelog.h"
#include "meta.h"

#include "kconf.h"
#include "loadgen.h"
#include "log.h"
#include "runner.h"
#include "topics.h"

#include <getopt.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define TICKS_PER_SECOND 20
#define DEMO_PARTITIONS 2

static const char demo_usage[] =
    "usage: tally demo [--duration DUR] [--rate N] [--dir DIR] [--http-port P]\n"
    "\n"
    "Runs both pipelines (orders, telemetry) as daemons against an in-process Kafka\n"
    "mock cluster fed by the load generator - no external service - and shows the\n"
    "busiest windows and key figures every second. The state databases are printed\n"
    "first: query them with 'tally query' while the demo runs.\n"
    "\n"
    "  --duration DUR   stop by itself after DUR (e.g. 30s) and exit 0; default: until Ctrl-C\n"
    "  --rate N         events per second per pipeline (default 2000)\n"
    "  --dir DIR        where the state databases go (default: a new /tmp/tally-demo-*)\n"
    "  --http-port P    each pipeline's live page, /metrics and /query on 127.0.0.1:P\n"
    "                   (orders) and P+1 (telemetry); default 9464, 0 = none\n";

static volatile sig_atomic_t stop_requested;
static volatile sig_atomic_t runners_stop;

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

struct demo_runner {
    pthread_t thread;
    tly_runner_config cfg;
    char instance[64];
    char http[32];
    int rc;
    char err[1024];
};

static void *run_pipeline(void *arg)
{
    struct demo_runner *d = arg;
    d->rc = tly_runner_run(&d->cfg, d->err, sizeof(d->err));
    if (d->rc < 0) {
        fprintf(stderr, "tally demo: %s pipeline stopped: %s\n", d->cfg.pipeline, d->err);
        stop_requested = 1;
    }
    return NULL;
}

static int create_topics(rd_kafka_mock_cluster_t *mock, const tly_topic_layout *t, char *err,
                         size_t errlen)
{
    const tly_topic_spec *all[] = {&t->input, &t->output, &t->changelog, &t->snapshots, &t->dlq};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
        rd_kafka_resp_err_t e = rd_kafka_mock_topic_create(mock, all[i]->name, DEMO_PARTITIONS, 1);
        if (e) {
            snprintf(err, errlen, "cannot create %s on the mock cluster: %s", all[i]->name,
                     rd_kafka_err2str(e));
            return -1;
        }
    }
    return 0;
}

/* Sends one tick of events for a pipeline, keyed like the real streams. */
static void produce_tick(rd_kafka_t *producer, tly_loadgen *gen, const char *topic, int count,
                         bool with_bad, int64_t *sent)
{
    static const char *const bad[] = {"{\"orderId\":\"x\",\"price\":\"12.3.4\"}", "not json at all",
                                      "{\"data\":{\"id\":\"VIN1\"},\"received_at\":\"yesterday\"}"};
    static unsigned bad_index;
    char buf[4096];
    int64_t now = tly_clock_wall_ms();
    for (int i = 0; i < count; i++) {
        int len = tly_loadgen_next(gen, now, buf, sizeof(buf));
        const char *key = strstr(buf, "\"storeId\":\"");
        size_t key_len = 0;
        if (len < 0)
            break;
        if (key) {
            key += 11;
        } else if ((key = strstr(buf, "\"id\":\""))) {
            key += 6;
        }
        if (key)
            key_len = strcspn(key, "\"");
        tly_kconf_produce(producer, NULL, topic, RD_KAFKA_PARTITION_UA, key, key_len, buf,
                          (size_t)len, NULL, NULL, NULL);
        (*sent)++;
    }
    if (with_bad) {
        const char *b = bad[bad_index++ % 3];
        rd_kafka_producev(producer, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_VALUE((void *)b, strlen(b)),
                          RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
        (*sent)++;
    }
    rd_kafka_poll(producer, 0);
}

static int64_t scalar(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *stmt = NULL;
    int64_t v = 0;
    if (db && sqlite3_prepare_v2(db, sql, -1, &stmt, NULL) == SQLITE_OK &&
        sqlite3_step(stmt) == SQLITE_ROW)
        v = sqlite3_column_int64(stmt, 0);
    sqlite3_finalize(stmt);
    return v;
}

static sqlite3 *open_read_only(const char *path)
{
    sqlite3 *db = NULL;
    if (access(path, F_OK) != 0 ||
        sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        sqlite3_close(db);
        return NULL;
    }
    sqlite3_busy_timeout(db, 1000);
    return db;
}

/* A pipeline's event counter (meta.h), 0 when db is NULL or has none yet. */
static int64_t events(sqlite3 *db, const char *pipeline, const char *kind)
{
    char key[256];
    int64_t n = 0;
    tly_meta_key_events(pipeline, kind, key, sizeof(key));
    if (!db || tly_meta_get_int(db, key, &n) != 1)
        n = 0;
    return n;
}

/* Events a pipeline has finished with: applied, skipped or dead-lettered. */
static int64_t events_done(const char *db_path, const char *pipeline)
{
    sqlite3 *db = open_read_only(db_path);
    int64_t n = events(db, pipeline, "applied") + events(db, pipeline, "skipped") +
                events(db, pipeline, "rejected");
    sqlite3_close(db);
    return n;
}

static void print_view(const char *orders_db, const char *telemetry_db, double seconds,
                       int64_t produced, int64_t last_applied, bool tty, int64_t *applied_now)
{
    sqlite3 *orders = open_read_only(orders_db), *telemetry = open_read_only(telemetry_db);
    sqlite3_stmt *stmt = NULL;
    int64_t o_applied = events(orders, "orders", "applied");
    int64_t o_rejected = events(orders, "orders", "rejected");
    int64_t t_applied = events(telemetry, "telemetry", "applied");
    int64_t t_rejected = events(telemetry, "telemetry", "rejected");
    int64_t t_skipped = events(telemetry, "telemetry", "skipped");

    *applied_now = o_applied + t_applied;
    if (tty)
        fputs("\033[H\033[2J", stdout);
    printf("tally demo  t=%.0fs  produced=%lld  committed %lld events/s\n", seconds,
           (long long)produced, (long long)(*applied_now - last_applied));
    printf("  orders     applied=%lld dead-lettered=%lld windows=%lld changelog_seq=%lld\n",
           (long long)o_applied, (long long)o_rejected,
           (long long)scalar(orders, "SELECT count(*) FROM order_window_state"),
           (long long)tly_changelog_max_seq(orders));
    printf("  telemetry  applied=%lld dead-lettered=%lld skipped=%lld vehicles=%lld sensors=%lld\n",
           (long long)t_applied, (long long)t_rejected, (long long)t_skipped,
           (long long)scalar(telemetry, "SELECT count(DISTINCT vin) FROM vehicle_sensor_state"),
           (long long)scalar(telemetry, "SELECT count(*) FROM vehicle_sensor_state"));
    printf("  busiest windows (order_windows):\n");
    printf("    %-8s %-8s %-22s %12s %7s\n", "store", "product", "window_start (UTC)", "sum",
           "count");
    if (orders &&
        sqlite3_prepare_v2(
            orders,
            "SELECT store_id, product_id, strftime('%Y-%m-%d %H:%M:%S', window_start / 1000, "
            "'unixepoch'), sum, count FROM order_windows "
            "ORDER BY count DESC, window_start DESC LIMIT 5",
            -1, &stmt, NULL) == SQLITE_OK)
        while (sqlite3_step(stmt) == SQLITE_ROW)
            printf("    %-8s %-8s %-22s %12s %7lld\n", sqlite3_column_text(stmt, 0),
                   sqlite3_column_text(stmt, 1), sqlite3_column_text(stmt, 2),
                   sqlite3_column_text(stmt, 3), (long long)sqlite3_column_int64(stmt, 4));
    sqlite3_finalize(stmt);
    printf("\n");
    fflush(stdout);
    sqlite3_close(orders);
    sqlite3_close(telemetry);
}

static const char *const pipelines[2] = {"orders", "telemetry"};

/* One demo: its options, the mock cluster, the two daemons and the figures. */
struct demo {
    int64_t duration_ms, rate, http_port, started, produced, last_applied;
    int64_t produced_by[2];
    const char *dir, *bootstraps;
    char dir_buf[64], db_paths[2][4200], prefixes[2][32];
    struct demo_runner runners[2];
    int started_runners;
    tly_topic_layout layouts[2];
    tly_loadgen *gens[2];
    rd_kafka_t *mock_handle, *producer;
    rd_kafka_mock_cluster_t *mock;
};

/* Returns -1 to go on, or the exit status (usage error, --help). */
static int parse_demo_options(struct demo *d, int argc, char **argv)
{
    static const struct option options[] = {
        {"duration", required_argument, NULL, 'd'}, {"rate", required_argument, NULL, 'r'},
        {"dir", required_argument, NULL, 'D'},      {"http-port", required_argument, NULL, 'H'},
        {"help", no_argument, NULL, 'h'},           {NULL, 0, NULL, 0}};
    int opt;

    opterr = 0;
    optind = 1;
    while ((opt = getopt_long(argc, argv, ":h", options, NULL)) != -1) {
        switch (opt) {
        case 'd':
            if (cli_parse_duration_ms("demo", "--duration", optarg, &d->duration_ms) < 0)
                return CLI_EXIT_USAGE;
            break;
        case 'r':
            if (cli_parse_int64("demo", "--rate", optarg, 1, 100000, &d->rate) < 0)
                return CLI_EXIT_USAGE;
            break;
        case 'D': d->dir = optarg; break;
        case 'H':
            if (cli_parse_int64("demo", "--http-port", optarg, 0, 65534, &d->http_port) < 0)
                return CLI_EXIT_USAGE;
            break;
        case 'h': fputs(demo_usage, stdout); return CLI_EXIT_OK;
        default: return cli_bad_option("demo", opt, argv, optind);
        }
    }
    if (optind < argc)
        return cli_usage_error("demo", "unexpected argument \"%s\"", argv[optind]);
    return -1;
}

/* --dir, or a new directory under /tmp; returns -1 to go on or the exit status. */
static int prepare_dir(struct demo *d)
{
    char err[1024];
    if (!d->dir) {
        snprintf(d->dir_buf, sizeof(d->dir_buf), "/tmp/tally-demo-XXXXXX");
        if (!mkdtemp(d->dir_buf)) {
            fprintf(stderr, "tally demo: cannot create a directory in /tmp: %m\n");
            return CLI_EXIT_FAILURE;
        }
        d->dir = d->dir_buf;
    } else if (mkdir(d->dir, 0755) != 0 && access(d->dir, W_OK) != 0) {
        fprintf(stderr, "tally demo: cannot use directory %s: %m\n", d->dir);
        return CLI_EXIT_FAILURE;
    }
    /* The demo takes no Kafka settings but librdkafka's debug contexts. */
    if (getenv("TALLY_KAFKA_DEBUG") && *getenv("TALLY_KAFKA_DEBUG")) {
        char assignment[300];
        snprintf(assignment, sizeof(assignment), "debug=%s", getenv("TALLY_KAFKA_DEBUG"));
        if (tly_kconf_add(assignment, "$TALLY_KAFKA_DEBUG", err, sizeof(err)) < 0) {
            fprintf(stderr, "tally demo: %s\n", err);
            return CLI_EXIT_USAGE;
        }
    }
    return -1;
}

/* The mock cluster (inside a librdkafka handle of its own), both pipelines'
 * topics, their load generators and the producer; errors are printed. */
static int start_cluster(struct demo *d)
{
    static const char *const mock_defaults[] = {"log_level", "0", NULL};
    static const char *const producer_defaults[] = {"client.id", "tally-demo", "linger.ms", "5",
                                                    NULL};
    rd_kafka_conf_t *conf;
    char err[1024];

    if (!(conf = tly_kconf_new(NULL, mock_defaults, NULL, err, sizeof(err))) ||
        !(d->mock_handle = tly_kconf_client(RD_KAFKA_PRODUCER, conf, "the mock cluster's handle",
                                            err, sizeof(err)))) {
        fprintf(stderr, "tally demo: %s\n", err);
        return -1;
    }
    if (!(d->mock = rd_kafka_mock_cluster_new(d->mock_handle, 1))) {
        fprintf(stderr, "tally demo: cannot start the mock cluster\n");
        return -1;
    }
    d->bootstraps = rd_kafka_mock_cluster_bootstraps(d->mock);
    tly_log_set_level("warn"); /* the view below replaces the daemons' info lines */
    for (int i = 0; i < 2; i++) {
        tly_loadgen_options gopts;
        snprintf(d->prefixes[i], sizeof(d->prefixes[i]), "demo-%s", pipelines[i]);
        if (tly_topics_layout(pipelines[i], d->prefixes[i], NULL, NULL, &d->layouts[i], err,
                              sizeof(err)) < 0 ||
            create_topics(d->mock, &d->layouts[i], err, sizeof(err)) < 0) {
            fprintf(stderr, "tally demo: %s\n", err);
            return -1;
        }
        tly_loadgen_options_init(&gopts, pipelines[i]);
        gopts.time_spread_ms = 3000;
        gopts.skewed = 1;
        d->gens[i] = tly_loadgen_new(&gopts);
        snprintf(d->db_paths[i], sizeof(d->db_paths[i]), "%s/%s.db", d->dir, pipelines[i]);
    }
    if (!(conf = tly_kconf_new(d->bootstraps, producer_defaults, NULL, err, sizeof(err))) ||
        !(d->producer =
              tly_kconf_client(RD_KAFKA_PRODUCER, conf, "the demo's producer", err, sizeof(err)))) {
        fprintf(stderr, "tally demo: %s\n", err);
        return -1;
    }
    return 0;
}

/* One daemon thread per pipeline; errors are printed. */
static int start_runners(struct demo *d)
{
    for (int i = 0; i < 2; i++) {
        struct demo_runner *r = &d->runners[i];
        tly_runner_config_init(&r->cfg, pipelines[i]);
        snprintf(r->instance, sizeof(r->instance), "demo-%s-0", pipelines[i]);
        r->cfg.brokers = d->bootstraps;
        r->cfg.topic_prefix = d->prefixes[i];
        r->cfg.group_id = d->prefixes[i];
        r->cfg.instance_id = r->instance;
        r->cfg.state_dir = d->dir;
        r->cfg.manage_topics = 0;
        r->cfg.stop = &runners_stop;
        if (d->http_port > 0) {
            /* best effort: a taken port logs event=http_off and the demo goes on */
            snprintf(r->http, sizeof(r->http), "127.0.0.1:%lld", (long long)d->http_port + i);
            r->cfg.http_listen = r->http;
        }
        if (pthread_create(&r->thread, NULL, run_pipeline, r) != 0) {
            fprintf(stderr, "tally demo: cannot start a thread\n");
            return -1;
        }
        d->started_runners++;
    }
    return 0;
}

static void print_intro(const struct demo *d)
{
    printf("tally demo: Kafka mock cluster at %s; state databases\n  %s\n  %s\n"
           "  query them while the demo runs, e.g.\n"
           "    tally query --db %s 'SELECT * FROM order_windows ORDER BY count DESC LIMIT 5'\n"
           "    tally query --db %s 'SELECT record FROM vehicle_latest LIMIT 1'\n\n",
           d->bootstraps, d->db_paths[0], d->db_paths[1], d->db_paths[0], d->db_paths[1]);
    if (d->http_port > 0)
        printf(
            "  live pages: http://127.0.0.1:%lld/ (orders), http://127.0.0.1:%lld/ (telemetry);\n"
            "  also /metrics and /query?sql=... on each\n\n",
            (long long)d->http_port, (long long)d->http_port + 1);
    fflush(stdout);
}

/* Produces at --rate until --duration or a signal, redrawing the view each
 * second, then lets the daemons drain what was produced (every event ends
 * applied, skipped or dead-lettered) so the figures add up. */
static void produce_and_watch(struct demo *d)
{
    int64_t next_tick, next_view;
    unsigned ticks = 0;
    bool tty = isatty(STDOUT_FILENO);

    d->started = next_tick = tly_clock_mono_ms();
    next_view = d->started + 1000;
    while (!stop_requested &&
           (d->duration_ms == 0 || tly_clock_mono_ms() - d->started < d->duration_ms)) {
        int64_t now;
        bool bad = ticks % TICKS_PER_SECOND == 0;
        for (int i = 0; i < 2; i++)
            produce_tick(d->producer, d->gens[i], d->layouts[i].input.name,
                         (int)(d->rate / TICKS_PER_SECOND), bad, &d->produced_by[i]);
        d->produced = d->produced_by[0] + d->produced_by[1];
        ticks++;
        now = tly_clock_mono_ms();
        if (now >= next_view) {
            print_view(d->db_paths[0], d->db_paths[1], (now - d->started) / 1000.0, d->produced,
                       d->last_applied, tty, &d->last_applied);
            next_view += 1000;
        }
        next_tick += 1000 / TICKS_PER_SECOND;
        if (next_tick > now)
            usleep((useconds_t)(next_tick - now) * 1000);
        else
            next_tick = now;
    }
    rd_kafka_flush(d->producer, 5000);
    for (int64_t deadline = tly_clock_mono_ms() + 15000;
         tly_clock_mono_ms() < deadline && !d->runners[0].rc && !d->runners[1].rc;) {
        if (events_done(d->db_paths[0], "orders") + events_done(d->db_paths[1], "telemetry") >=
            d->produced)
            break;
        usleep(100000);
    }
}

/* Stops and joins the daemons; with status OK prints the final figures.
 * Returns the exit status. */
static int finish(struct demo *d, int status)
{
    runners_stop = 1;
    for (int i = 0; i < d->started_runners; i++) {
        pthread_join(d->runners[i].thread, NULL);
        if (d->runners[i].rc < 0)
            status = CLI_EXIT_FAILURE;
    }
    if (status == CLI_EXIT_OK) {
        int64_t applied;
        print_view(d->db_paths[0], d->db_paths[1], (tly_clock_mono_ms() - d->started) / 1000.0,
                   d->produced, d->last_applied, false, &applied);
        printf("tally demo: stopped; produced orders=%lld telemetry=%lld; done orders=%lld "
               "telemetry=%lld\nstate databases: %s %s\n",
               (long long)d->produced_by[0], (long long)d->produced_by[1],
               (long long)events_done(d->db_paths[0], "orders"),
               (long long)events_done(d->db_paths[1], "telemetry"), d->db_paths[0], d->db_paths[1]);
    }
    if (d->producer)
        rd_kafka_destroy(d->producer);
    for (int i = 0; i < 2; i++)
        tly_loadgen_free(d->gens[i]);
    if (d->mock)
        rd_kafka_mock_cluster_destroy(d->mock);
    if (d->mock_handle)
        rd_kafka_destroy(d->mock_handle);
    return status;
}

int cmd_demo(int argc, char **argv)
{
    struct demo d = {.rate = 2000, .http_port = 9464};
    int status;

    if ((status = parse_demo_options(&d, argc, argv)) >= 0 || (status = prepare_dir(&d)) >= 0)
        return status;
    if (start_cluster(&d) < 0 || start_runners(&d) < 0)
        return finish(&d, CLI_EXIT_FAILURE);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    print_intro(&d);
    produce_and_watch(&d);
    return finish(&d, CLI_EXIT_OK);
}
