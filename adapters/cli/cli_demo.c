/* adapters/cli/cli_demo.c - tally demo: the engine at work with nothing to
 * install or start.
 *
 * Generates orders and telemetry at a steady rate in process, applies them
 * through both built-in pipelines into a state database (the same calls the
 * daemon makes), slips in one malformed event a second to show rejection, and
 * prints a live view of the busiest windows and the key figures every second.
 * The database path is printed first, so `tally query` or `sqlite3` can read it
 * while the demo runs. */
#include "cli_common.h"
#include "commands.h"

#include "loadgen.h"
#include "pipeline.h"
#include "store.h"

#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define TICKS_PER_SECOND 10
#define MAX_BATCH 20000

static const char demo_usage[] =
    "usage: tally demo [--duration DUR] [--rate N] [--dir DIR]\n"
    "\n"
    "Runs the orders and telemetry pipelines on generated events, with no external\n"
    "service, and shows the busiest windows and key figures every second. The state\n"
    "database is printed first: query it with 'tally query' while the demo runs.\n"
    "\n"
    "  --duration DUR   stop by itself after DUR (e.g. 30s) and exit 0; default: until Ctrl-C\n"
    "  --rate N         events per second per pipeline (default 5000)\n"
    "  --dir DIR        where to put the state database (default: a new /tmp/tally-demo-*)\n";

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

struct demo_pipeline {
    tly_pipeline *pipeline;
    tly_loadgen *gen;
    tly_event *events;
    char *arena;
    tly_event_result *results;
    int64_t applied, skipped, rejected, readings;
};

static int setup(struct demo_pipeline *d, tly_store *store, const char *name, char *err, size_t errlen)
{
    tly_loadgen_options opts;
    tly_loadgen_options_init(&opts, name);
    opts.time_spread_ms = 5000; /* a little out-of-order, as real streams are */
    opts.skewed = 1;
    d->gen = tly_loadgen_new(&opts);
    d->events = calloc(MAX_BATCH + 1, sizeof(*d->events));
    d->results = calloc(MAX_BATCH + 1, sizeof(*d->results));
    d->arena = malloc((size_t)(MAX_BATCH + 1) * 1024);
    if (!d->gen || !d->events || !d->results || !d->arena) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return tly_pipeline_open(store, name, NULL, 0, &d->pipeline, err, errlen);
}

static void teardown(struct demo_pipeline *d)
{
    tly_pipeline_close(d->pipeline);
    tly_loadgen_free(d->gen);
    free(d->events);
    free(d->results);
    free(d->arena);
}

/* Generates and applies one tick's events; every `with_bad` adds one malformed. */
static int tick(struct demo_pipeline *d, int count, bool with_bad, char *err, size_t errlen)
{
    static const char *const bad[] = {"{\"orderId\":\"x\",\"price\":\"12.3.4\"}",
                                      "{\"data\":{\"id\":\"VIN1\"},\"received_at\":\"yesterday\"}",
                                      "not json at all", "{\"data\":{\"id\":\"\"},\"received_at\":1}"};
    static unsigned bad_index;
    size_t used = 0;
    int64_t now = wall_ms();
    tly_batch_stats stats;
    int n = 0;

    for (; n < count; n++) {
        int len = tly_loadgen_next(d->gen, now, d->arena + used, 1024);
        if (len < 0)
            break;
        d->events[n].data = d->arena + used;
        d->events[n].len = (size_t)len;
        d->readings += tly_loadgen_last_readings(d->gen);
        used += (size_t)len + 1;
    }
    if (with_bad) {
        d->events[n].data = bad[bad_index++ % 4];
        d->events[n].len = strlen(d->events[n].data);
        n++;
    }
    if (tly_pipeline_apply(d->pipeline, d->events, (size_t)n, d->results, &stats, err, errlen) < 0)
        return -1;
    d->applied += stats.applied;
    d->skipped += stats.skipped;
    d->rejected += stats.rejected;
    return 0;
}

static void print_view(tly_store *store, const char *db_path, double seconds,
                       struct demo_pipeline *orders, struct demo_pipeline *telemetry,
                       int64_t last_total, bool tty)
{
    sqlite3_stmt *stmt = NULL;
    struct stat st;
    char wal[4200];
    long long db_bytes = stat(db_path, &st) == 0 ? (long long)st.st_size : 0;
    snprintf(wal, sizeof(wal), "%s-wal", db_path);
    if (stat(wal, &st) == 0)
        db_bytes += (long long)st.st_size;

    if (tty)
        fputs("\033[H\033[2J", stdout);
    printf("tally demo  t=%.0fs  state=%s\n", seconds, db_path);
    printf("  orders     applied=%lld rejected=%lld  (%lld events/s)\n", (long long)orders->applied,
           (long long)orders->rejected,
           (long long)(orders->applied + orders->rejected + telemetry->applied +
                       telemetry->rejected + telemetry->skipped - last_total));
    printf("  telemetry  applied=%lld readings=%lld skipped=%lld rejected=%lld\n",
           (long long)telemetry->applied, (long long)telemetry->readings,
           (long long)telemetry->skipped, (long long)telemetry->rejected);
    if (sqlite3_prepare_v2(tly_store_db(store),
                           "SELECT (SELECT count(*) FROM order_window_state), "
                           "(SELECT count(DISTINCT vin) FROM vehicle_sensor_state), "
                           "(SELECT coalesce(max(seq), 0) FROM changelog)",
                           -1, &stmt, NULL) == SQLITE_OK &&
        sqlite3_step(stmt) == SQLITE_ROW)
        printf("  state      windows=%lld vehicles=%lld changelog_seq=%lld db_bytes=%lld\n",
               (long long)sqlite3_column_int64(stmt, 0), (long long)sqlite3_column_int64(stmt, 1),
               (long long)sqlite3_column_int64(stmt, 2), db_bytes);
    sqlite3_finalize(stmt);
    stmt = NULL;
    printf("  busiest windows (order_windows):\n");
    printf("    %-8s %-8s %-24s %14s %7s\n", "store", "product", "window_start (UTC)", "sum", "count");
    if (sqlite3_prepare_v2(tly_store_db(store),
                           "SELECT store_id, product_id, strftime('%Y-%m-%d %H:%M:%S', window_start / 1000, 'unixepoch'), sum, count "
                           "FROM order_windows ORDER BY count DESC, window_start DESC LIMIT 5",
                           -1, &stmt, NULL) == SQLITE_OK)
        while (sqlite3_step(stmt) == SQLITE_ROW)
            printf("    %-8s %-8s %-24s %14s %7lld\n", sqlite3_column_text(stmt, 0),
                   sqlite3_column_text(stmt, 1), sqlite3_column_text(stmt, 2),
                   sqlite3_column_text(stmt, 3), (long long)sqlite3_column_int64(stmt, 4));
    sqlite3_finalize(stmt);
    printf("\n");
    fflush(stdout);
}

int cmd_demo(int argc, char **argv)
{
    static const struct option options[] = {
        {"duration", required_argument, NULL, 'd'}, {"rate", required_argument, NULL, 'r'},
        {"dir", required_argument, NULL, 'D'}, {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    int64_t duration_ms = 0, rate = 5000, started, next_tick, next_view, last_total = 0;
    char dir_buf[64], db_path[4096], err[512];
    const char *dir = NULL;
    struct demo_pipeline orders = {0}, telemetry = {0};
    tly_store *store = NULL;
    int opt, status = CLI_EXIT_FAILURE;
    unsigned ticks = 0;
    bool tty = isatty(STDOUT_FILENO);

    opterr = 0;
    optind = 1;
    while ((opt = getopt_long(argc, argv, ":h", options, NULL)) != -1) {
        switch (opt) {
        case 'd':
            if (cli_parse_duration_ms("demo", "--duration", optarg, &duration_ms) < 0)
                return CLI_EXIT_USAGE;
            break;
        case 'r':
            if (cli_parse_int64("demo", "--rate", optarg, 1, 100000, &rate) < 0)
                return CLI_EXIT_USAGE;
            break;
        case 'D': dir = optarg; break;
        case 'h': fputs(demo_usage, stdout); return CLI_EXIT_OK;
        default: return cli_bad_option("demo", opt, argv, optind);
        }
    }
    if (optind < argc)
        return cli_usage_error("demo", "unexpected argument \"%s\"", argv[optind]);
    if (!dir) {
        snprintf(dir_buf, sizeof(dir_buf), "/tmp/tally-demo-XXXXXX");
        if (!mkdtemp(dir_buf)) {
            fprintf(stderr, "tally demo: cannot create a directory in /tmp: %m\n");
            return CLI_EXIT_FAILURE;
        }
        dir = dir_buf;
    } else if (mkdir(dir, 0755) != 0 && access(dir, W_OK) != 0) {
        fprintf(stderr, "tally demo: cannot use directory %s: %m\n", dir);
        return CLI_EXIT_FAILURE;
    }
    snprintf(db_path, sizeof(db_path), "%s/state.db", dir);
    if (tly_store_open(db_path, NULL, &store, err, sizeof(err)) < 0 ||
        setup(&orders, store, "orders", err, sizeof(err)) < 0 ||
        setup(&telemetry, store, "telemetry", err, sizeof(err)) < 0) {
        fprintf(stderr, "tally demo: %s\n", err);
        goto done;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    printf("tally demo: state database %s\n"
           "  query it while the demo runs, e.g.\n"
           "    tally query --db %s 'SELECT * FROM order_windows ORDER BY count DESC LIMIT 5'\n"
           "    tally query --db %s 'SELECT record FROM vehicle_latest LIMIT 1'\n"
           "  (the Kafka-backed daemon demo arrives with 'tally run'; this one is offline)\n\n",
           db_path, db_path, db_path);
    fflush(stdout);
    started = next_tick = next_view = cli_now_ms();
    next_view += 1000;
    while (!stop_requested && (duration_ms == 0 || cli_now_ms() - started < duration_ms)) {
        int per_tick = (int)(rate / TICKS_PER_SECOND);
        bool bad = ticks % TICKS_PER_SECOND == 0;
        int64_t now;
        if (tly_store_begin(store, err, sizeof(err)) < 0 ||
            tick(&orders, per_tick, bad, err, sizeof(err)) < 0 ||
            tick(&telemetry, per_tick, bad, err, sizeof(err)) < 0 ||
            tly_store_commit(store, err, sizeof(err)) < 0) {
            tly_store_rollback(store);
            fprintf(stderr, "tally demo: %s\n", err);
            goto done;
        }
        ticks++;
        now = cli_now_ms();
        if (now >= next_view) {
            int64_t total = orders.applied + orders.rejected + telemetry.applied +
                            telemetry.rejected + telemetry.skipped;
            print_view(store, db_path, (now - started) / 1000.0, &orders, &telemetry, last_total, tty);
            last_total = total;
            next_view += 1000;
        }
        next_tick += 1000 / TICKS_PER_SECOND;
        if (next_tick > now)
            usleep((useconds_t)(next_tick - now) * 1000);
        else
            next_tick = now; /* running behind: do not try to catch up in a burst */
    }
    printf("tally demo: stopped after %.1fs; orders applied=%lld rejected=%lld; telemetry "
           "applied=%lld readings=%lld skipped=%lld rejected=%lld\nstate database: %s\n",
           (cli_now_ms() - started) / 1000.0, (long long)orders.applied, (long long)orders.rejected,
           (long long)telemetry.applied, (long long)telemetry.readings, (long long)telemetry.skipped,
           (long long)telemetry.rejected, db_path);
    status = CLI_EXIT_OK;
done:
    teardown(&orders);
    teardown(&telemetry);
    tly_store_close(store);
    return status;
}
