/* benchmarks/bench_apply.c - offline apply throughput, JSON decoding included.
 *
 * Generates events in memory (not timed), then times tly_pipeline_apply in
 * batches, one SQLite transaction per batch, on a fresh WAL database: the
 * same path `tally ingest` and the daemon take. Single-threaded, so the figure
 * is per core.
 *
 *   bench_apply [--scenario NAME|all] [--events N] [--batch N] [--dir DIR]
 *               [--pageviews FILE] [--records]
 *
 * --input FILE: the events are FILE's lines (JSON Lines, e.g. what
 * ../peer-kstreams/gen_orders.py writes) instead of generated ones, applied by
 * the scenario's pipeline (orders_* or telemetry_*); --events caps how many.
 *
 * --records: per batch, also what the daemon does with the batch's changes
 * before its Kafka commit, minus Kafka: read back the changelog records it
 * produces and run the pipeline's @emit (the output records). Their bytes are
 * counted (records_bytes=) so nothing is optimised away.
 *
 * Scenarios:
 *   orders_many_keys   1,000 stores x 1,000 products, events spread over 10
 *                      windows: almost every event touches a new key
 *                      (events come from adapters/common/loadgen.c)
 *   orders_few_keys    10 stores x 10 products, one window: heavy coalescing
 *   telemetry_full     100,000 VINs x 30 sensors, every event carries all 30
 *                      sensors (one full record per vehicle)
 *   telemetry_single   100,000 VINs x 30 sensors, one sensor per event
 *   pageviews          the pipeline file examples/pipelines/pageviews.sql
 *                      (@state and @fold; --pageviews names another copy):
 *                      {"page":"/p<N>","user":"u<M>","ts":<ms>} with 10,000
 *                      pages and 100,000 users drawn uniformly, event time
 *                      spread over 10 minutes (ten one-minute windows), so
 *                      100,000 keys: about 90% of the events in a batch of
 *                      20,000 touch a key new to their batch; over a run
 *                      a key sees about events / 100,000 of them
 *
 * Prints one line per scenario:
 *   scenario=... events=... readings=... batch=... seconds=... events_per_s=...
 *   readings_per_s=... changes=... db_bytes=...
 */
#include "changelog.h"
#include "loadgen.h"
#include "pipeline.h"
#include "store.h"

#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifndef TALLY_SOURCE_DIR /* CMakeLists.txt sets it to the source tree */
#define TALLY_SOURCE_DIR "."
#endif

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

struct events {
    size_t count;
    int64_t readings;
    tly_event *list;
    char *arena;
};

/* The pageviews scenario's events: splitmix64, a fixed seed. */
static uint64_t next_random(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void generate_pageviews(size_t count, int64_t base_ms, struct events *out)
{
    const size_t cap = count * 64 + 8192;
    size_t used = 0;
    uint64_t state = 42;

    out->count = count;
    out->readings = (int64_t)count;
    out->list = calloc(count, sizeof(tly_event));
    out->arena = malloc(cap);
    if (!out->list || !out->arena) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < count; i++) {
        /* event time = base - uniform[0, 10 min), as orders_many_keys */
        int n = snprintf(out->arena + used, cap - used,
                         "{\"page\":\"/p%d\",\"user\":\"u%d\",\"ts\":%lld}",
                         (int)(next_random(&state) % 10000), (int)(next_random(&state) % 100000),
                         (long long)(base_ms - (int64_t)(next_random(&state) % 600000)));
        if (n < 0 || (size_t)n >= cap - used) {
            fprintf(stderr, "event arena too small\n");
            exit(1);
        }
        out->list[i].data = out->arena + used;
        out->list[i].len = (size_t)n;
        used += (size_t)n + 1;
    }
}

/* The lines of path, at most count of them; exits on failure. */
static void read_lines(const char *path, size_t count, struct events *out)
{
    FILE *f = fopen(path, "rb");
    long size;
    size_t n = 0;
    char *p, *end;

    if (!f || fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fprintf(stderr, "bench_apply: cannot read %s\n", path);
        exit(1);
    }
    out->arena = malloc((size_t)size + 1);
    out->list = calloc(count, sizeof(tly_event));
    if (!out->arena || !out->list || fread(out->arena, 1, (size_t)size, f) != (size_t)size) {
        fprintf(stderr, "bench_apply: cannot read %s\n", path);
        exit(1);
    }
    fclose(f);
    out->arena[size] = '\0';
    for (p = out->arena, end = p + size; p < end && n < count; p++) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl)
            nl = end;
        out->list[n].data = p;
        out->list[n++].len = (size_t)(nl - p);
        p = nl;
    }
    out->count = n;
    out->readings = (int64_t)n;
}

static void generate(const char *scenario, size_t count, struct events *out)
{
    int orders = strncmp(scenario, "orders", 6) == 0;
    size_t cap = count * (strcmp(scenario, "telemetry_full") == 0 ? 1100 : 240) + 8192;
    size_t used = 0;
    const int64_t base_ms = 1700000000000LL;
    tly_loadgen_options opts;
    tly_loadgen *gen;

    if (strcmp(scenario, "pageviews") == 0) {
        generate_pageviews(count, base_ms, out);
        return;
    }
    tly_loadgen_options_init(&opts, orders ? "orders" : "telemetry");
    if (strcmp(scenario, "orders_many_keys") == 0) {
        opts.stores = 1000;
        opts.products = 1000;
        opts.time_spread_ms = 600000; /* ten one-minute windows */
    } else if (strcmp(scenario, "orders_few_keys") == 0) {
        opts.stores = 10;
        opts.products = 10;
    } else {
        opts.vins = 100000;
        opts.sensors = 30;
        opts.sensors_per_event = strcmp(scenario, "telemetry_full") == 0 ? 30 : 1;
    }
    gen = tly_loadgen_new(&opts);
    out->count = count;
    out->readings = 0;
    out->list = calloc(count, sizeof(tly_event));
    out->arena = malloc(cap);
    if (!gen || !out->list || !out->arena) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < count; i++) {
        /* orders: one fixed "now" (windows come from the spread);
         * telemetry: time moves on, one millisecond per event */
        int n = tly_loadgen_next(gen, orders ? base_ms : base_ms + (int64_t)i, out->arena + used,
                                 cap - used);
        if (n < 0) {
            fprintf(stderr, "event arena too small\n");
            exit(1);
        }
        out->list[i].data = out->arena + used;
        out->list[i].len = (size_t)n;
        out->readings += tly_loadgen_last_readings(gen);
        used += (size_t)n + 1;
    }
    tly_loadgen_free(gen);
}

static int count_row(void *ctx, int64_t seq, const char *key, size_t key_len, int part,
                     const char *line, size_t line_len)
{
    (void)seq, (void)key, (void)part, (void)line;
    *(int64_t *)ctx += (int64_t)(key_len + line_len);
    return 0;
}

static int count_output(void *ctx, const char *key, size_t key_len, const char *value,
                        size_t value_len)
{
    (void)key, (void)value;
    *(int64_t *)ctx += (int64_t)(key_len + value_len);
    return 0;
}

static int run(const char *scenario, size_t count, size_t batch, const char *dir,
               const char *pageviews, const char *input, bool records)
{
    char path[512], err[1024];
    struct events ev;
    tly_store *store = NULL;
    tly_pipeline *pipeline = NULL;
    tly_event_result *results = calloc(batch, sizeof(*results));
    int64_t changes = 0, rejected = 0, record_bytes = 0;
    struct stat st;
    double start, elapsed;
    int rc = 1;
    const char *name = strcmp(scenario, "pageviews") == 0    ? pageviews
                       : strncmp(scenario, "orders", 6) == 0 ? "orders"
                                                             : "telemetry";

    if (input) {
        read_lines(input, count, &ev);
        count = ev.count;
    } else {
        generate(scenario, count, &ev);
    }
    snprintf(path, sizeof(path), "%s/bench-%s.db", dir, scenario);
    unlink(path);
    snprintf(err, sizeof(err), "%s-wal", path);
    unlink(err);
    if (tly_store_open(path, NULL, &store, err, sizeof(err)) < 0 ||
        tly_pipeline_open(store, name, NULL, 0, &pipeline, err, sizeof(err)) < 0) {
        fprintf(stderr, "bench_apply: %s\n", err);
        goto done;
    }
    start = now_s();
    for (size_t i = 0; i < count; i += batch) {
        size_t n = count - i < batch ? count - i : batch;
        tly_batch_stats stats;
        int64_t seq_before = tly_store_last_seq(store);
        if (tly_store_begin(store, err, sizeof(err)) < 0 ||
            tly_pipeline_apply(pipeline, ev.list + i, n, results, &stats, err, sizeof(err)) < 0 ||
            (records && (tly_changelog_scan(store, seq_before, tly_store_last_seq(store), count_row,
                                            &record_bytes, err, sizeof(err)) < 0 ||
                         tly_pipeline_emit(pipeline, seq_before, tly_store_last_seq(store),
                                           count_output, &record_bytes, err, sizeof(err)) < 0)) ||
            tly_store_commit(store, err, sizeof(err)) < 0) {
            fprintf(stderr, "bench_apply: %s\n", err);
            goto done;
        }
        changes += stats.changes;
        rejected += stats.rejected;
    }
    elapsed = now_s() - start;
    if (rejected && !input) {
        fprintf(stderr, "bench_apply: %lld generated events were rejected\n", (long long)rejected);
        goto done;
    }
    tly_store_exec(store, "PRAGMA wal_checkpoint(TRUNCATE)", NULL, 0);
    printf("scenario=%s events=%zu readings=%lld batch=%zu seconds=%.3f events_per_s=%.0f "
           "readings_per_s=%.0f changes=%lld db_bytes=%lld%s",
           scenario, count, (long long)ev.readings, batch, elapsed, count / elapsed,
           ev.readings / elapsed, (long long)changes,
           stat(path, &st) == 0 ? (long long)st.st_size : -1LL, records ? "" : "\n");
    if (records)
        printf(" records_bytes=%lld\n", (long long)record_bytes);
    fflush(stdout);
    rc = 0;
done:
    tly_pipeline_close(pipeline);
    tly_store_close(store);
    unlink(path);
    snprintf(err, sizeof(err), "%s-wal", path);
    unlink(err);
    snprintf(err, sizeof(err), "%s-shm", path);
    unlink(err);
    free(results);
    free(ev.list);
    free(ev.arena);
    return rc;
}

int main(int argc, char **argv)
{
    static const char *all[] = {"orders_many_keys", "orders_few_keys", "telemetry_full",
                                "telemetry_single", "pageviews",       NULL};
    static const struct option options[] = {{"scenario", required_argument, NULL, 's'},
                                            {"events", required_argument, NULL, 'e'},
                                            {"batch", required_argument, NULL, 'b'},
                                            {"dir", required_argument, NULL, 'd'},
                                            {"pageviews", required_argument, NULL, 'p'},
                                            {"records", no_argument, NULL, 'r'},
                                            {"input", required_argument, NULL, 'i'},
                                            {"help", no_argument, NULL, 'h'},
                                            {NULL, 0, NULL, 0}};
    const char *scenario = "all", *dir = "/tmp";
    const char *pageviews = TALLY_SOURCE_DIR "/examples/pipelines/pageviews.sql";
    long events = 1000000, batch = 20000;
    int opt, rc = 0, found = 0;
    bool records = false;
    const char *input = NULL;

    while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        switch (opt) {
        case 's': scenario = optarg; break;
        case 'e': events = atol(optarg); break;
        case 'b': batch = atol(optarg); break;
        case 'd': dir = optarg; break;
        case 'p': pageviews = optarg; break;
        case 'r': records = true; break;
        case 'i': input = optarg; break;
        default:
            fprintf(stderr, "usage: bench_apply [--scenario NAME|all] [--events N] [--batch N] "
                            "[--dir DIR] [--pageviews FILE] [--input FILE] [--records]\n");
            return opt == 'h' ? 0 : 2;
        }
    }
    if (events < 1 || batch < 1) {
        fprintf(stderr, "bench_apply: --events and --batch must be positive\n");
        return 2;
    }
    for (const char **s = all; *s; s++) {
        if (strcmp(scenario, "all") != 0 && strcmp(scenario, *s) != 0)
            continue;
        /* Full telemetry events carry 30 readings each: a tenth as many events
         * keeps the run about as long as the others. */
        size_t n = strcmp(*s, "telemetry_full") == 0 ? (size_t)events / 10 : (size_t)events;
        rc |= run(*s, n ? n : 1, (size_t)batch, dir, pageviews, input, records);
        found = 1;
    }
    if (!found) {
        fprintf(stderr, "bench_apply: unknown scenario \"%s\"\n", scenario);
        return 2;
    }
    return rc;
}
