/* benchmarks/bench_e2e.c - end-to-end throughput and latency of `tally run`
 * on a real broker.
 *
 *   bench_e2e --brokers B --tally PATH [--pipeline orders|FILE.sql] [--rate N]
 *             [--duration DUR] [--keys K] [--commit-interval-ms N] [--max-batch N]
 *
 * Creates fresh topics (one input partition, so the input has one order),
 * starts `tally run --pipeline orders` as a child process, produces orders at a
 * steady rate after a warm-up of 1000 orders, and reads the output topic with an independent
 * read_committed consumer. The consumer keeps the latest count per window key; their sum is the
 * number of orders whose effect is visible. When that sum passes order i, order
 * i's latency is now - the moment it was produced: "event produced -> visible to
 * a read_committed consumer of the output". Prints one line:
 *
 *   bench=e2e pipeline=orders rate=... duration_s=... events=... visible=...
 *   throughput_eps=... p50_ms=... p95_ms=... p99_ms=... max_ms=... held=yes|no
 *
 * held=yes when every order became visible and the p95 stayed under 1 s.
 *
 * --pipeline FILE.sql runs a pipeline file instead, one whose @pipeline is
 * pageviews (examples/pipelines/pageviews.sql): `tally run --pipeline FILE.sql`
 * on fresh topics named as above, fed {"page":"/p<N>","user":"u<M>","ts":<now>}
 * keyed by page (--keys pages, 100,000 users). The consumer keeps the latest
 * "views" of each page#window_start_ms key and sums them as it sums orders'
 * counts, so the figures mean the same; the line says pipeline=pageviews. */
#include "loadgen.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TABLE_SIZE (1u << 20)

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* key -> latest count, open addressing; keys are copied. */
struct entry {
    char *key;
    int64_t count;
};
static struct entry *table;

static uint64_t hash(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
    return h;
}

/* Stores count for key; returns count - previous count. */
static int64_t update(const char *key, size_t n, int64_t count)
{
    uint64_t i = hash(key, n) & (TABLE_SIZE - 1);
    while (table[i].key && (strlen(table[i].key) != n || memcmp(table[i].key, key, n)))
        i = (i + 1) & (TABLE_SIZE - 1);
    if (!table[i].key) {
        table[i].key = strndup(key, n);
        table[i].count = 0;
    }
    int64_t delta = count - table[i].count;
    if (delta > 0)
        table[i].count = count;
    return delta > 0 ? delta : 0;
}

/* Events to produce: the orders of tly_loadgen, or page views. */
struct source {
    int pageviews;
    tly_loadgen *orders;
    int64_t pages;
    uint64_t random; /* splitmix64 state */
};

static uint64_t next_random(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Writes the next event with event time now into buf and its message key
 * (none for orders: *key_len = 0) into key. Returns its length. */
static int next_event(struct source *src, int64_t now, char *buf, size_t buflen, char *key,
                      size_t keylen, size_t *key_len)
{
    int page, n;
    if (!src->pageviews) {
        *key_len = 0;
        return tly_loadgen_next(src->orders, now, buf, buflen);
    }
    page = (int)(next_random(&src->random) % (uint64_t)src->pages);
    n = snprintf(key, keylen, "/p%d", page);
    *key_len = n > 0 ? (size_t)n : 0;
    return snprintf(buf, buflen, "{\"page\":\"/p%d\",\"user\":\"u%d\",\"ts\":%lld}", page,
                    (int)(next_random(&src->random) % 100000), (long long)now);
}

struct producer_state {
    rd_kafka_t *rk;
    int pageviews;   /* produce page views rather than orders */
    int64_t warmup;  /* events sent first, before the clock starts */
    volatile int go; /* set once the warmup events are visible */
    const char *topic;
    int64_t rate, duration_ms, keys;
    int64_t *sent_at; /* produce time of order i (ms) */
    volatile int64_t sent;
    volatile int done;
};

static void *produce(void *arg)
{
    struct producer_state *p = arg;
    tly_loadgen_options opts;
    struct source src = {.pageviews = p->pageviews, .pages = p->keys, .random = 42};
    char buf[1024], key[64];
    size_t key_len;
    int64_t start, total = p->warmup + p->rate * p->duration_ms / 1000;

    tly_loadgen_options_init(&opts, "orders");
    opts.stores = (int)(p->keys / 20 > 0 ? p->keys / 20 : 1);
    opts.products = 20;
    src.orders = tly_loadgen_new(&opts);
    for (int64_t i = 0; i < p->warmup; i++) {
        int len = next_event(&src, now_ms(), buf, sizeof(buf), key, sizeof(key), &key_len);
        p->sent_at[i] = now_ms();
        rd_kafka_producev(p->rk, RD_KAFKA_V_TOPIC(p->topic), RD_KAFKA_V_VALUE(buf, (size_t)len),
                          RD_KAFKA_V_KEY(key_len ? key : NULL, key_len),
                          RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
    }
    rd_kafka_flush(p->rk, 30000);
    while (!p->go)
        usleep(10000);
    start = now_ms();
    for (int64_t i = p->warmup; i < total; i++) {
        int64_t due = start + (i - p->warmup) * 1000 / p->rate, now = now_ms();
        int len;
        if (due > now)
            usleep((useconds_t)(due - now) * 1000);
        now = now_ms();
        len = next_event(&src, now, buf, sizeof(buf), key, sizeof(key), &key_len);
        p->sent_at[i] = now;
        while (rd_kafka_producev(p->rk, RD_KAFKA_V_TOPIC(p->topic),
                                 RD_KAFKA_V_VALUE(buf, (size_t)len),
                                 RD_KAFKA_V_KEY(key_len ? key : NULL, key_len),
                                 RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                 RD_KAFKA_V_END) == RD_KAFKA_RESP_ERR__QUEUE_FULL)
            rd_kafka_poll(p->rk, 5);
        rd_kafka_poll(p->rk, 0);
        p->sent = i + 1;
    }
    rd_kafka_flush(p->rk, 30000);
    tly_loadgen_free(src.orders);
    p->done = 1;
    return NULL;
}

static int compare(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* The @pipeline name a pipeline file gives itself into name, or "" if it
 * has none; -1 if it cannot be read. */
static int pipeline_name(const char *path, char *name, size_t len)
{
    FILE *f = fopen(path, "r");
    char line[1024];
    name[0] = 0;
    if (!f)
        return -1;
    while (fgets(line, sizeof(line), f)) {
        const char *s = line;
        size_t n = 0;
        if (strncmp(s, "-- @pipeline", 12) != 0 || !isspace((unsigned char)s[12]))
            continue;
        for (s += 12; isspace((unsigned char)*s);)
            s++;
        while (s[n] && !isspace((unsigned char)s[n]))
            n++;
        snprintf(name, len, "%.*s", (int)n, s);
        break;
    }
    fclose(f);
    return 0;
}

static int run_command(char *const argv[])
{
    pid_t pid = fork();
    int status;
    if (pid == 0) {
        execv(argv[0], argv);
        _exit(127);
    }
    if (pid < 0 || waitpid(pid, &status, 0) < 0)
        return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

int main(int argc, char **argv)
{
    static const struct option options[] = {{"brokers", required_argument, NULL, 'b'},
                                            {"tally", required_argument, NULL, 't'},
                                            {"pipeline", required_argument, NULL, 'p'},
                                            {"rate", required_argument, NULL, 'r'},
                                            {"duration", required_argument, NULL, 'd'},
                                            {"keys", required_argument, NULL, 'k'},
                                            {"commit-interval-ms", required_argument, NULL, 'c'},
                                            {"max-batch", required_argument, NULL, 'm'},
                                            {NULL, 0, NULL, 0}};
    const char *brokers = getenv("KAFKA_BROKERS"), *tally = "build/tally";
    const char *commit_interval = "50", *max_batch = "10000", *pipeline = "orders";
    const char *count_field = "\"count\":";
    char label[64] = "orders";
    int64_t rate = 10000, duration_s = 60, keys = 2000;
    char prefix[64], input[96], output[96], state_dir[128], reader_group[96], errstr[256];
    struct producer_state p = {0};
    rd_kafka_conf_t *conf;
    rd_kafka_t *consumer = NULL;
    pthread_t thread;
    pid_t daemon_pid;
    int64_t total, visible = 0, *latency, first_sent, last_visible = 0, deadline;
    int opt;

    while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
        switch (opt) {
        case 'b': brokers = optarg; break;
        case 't': tally = optarg; break;
        case 'p': pipeline = optarg; break;
        case 'r': rate = atoll(optarg); break;
        case 'd': duration_s = atoll(optarg); break;
        case 'k': keys = atoll(optarg); break;
        case 'c': commit_interval = optarg; break;
        case 'm': max_batch = optarg; break;
        default:
            fprintf(stderr,
                    "usage: bench_e2e --brokers B --tally PATH [--pipeline orders|FILE.sql] "
                    "[--rate N] [--duration S] [--keys K] [--commit-interval-ms N] "
                    "[--max-batch N]\n");
            return 2;
        }
    }
    if (!brokers || rate < 1 || duration_s < 1 || keys < 1) {
        fprintf(stderr, "bench_e2e: --brokers (or KAFKA_BROKERS), a positive --rate, --duration "
                        "and --keys are required\n");
        return 2;
    }
    if (strcmp(pipeline, "orders") != 0) {
        if (pipeline_name(pipeline, label, sizeof(label)) < 0) {
            fprintf(stderr, "bench_e2e: cannot read the pipeline file %s\n", pipeline);
            return 2;
        }
        if (strcmp(label, "pageviews") != 0) {
            fprintf(stderr,
                    "bench_e2e: --pipeline is orders or a pipeline file whose @pipeline is "
                    "pageviews (its events are generated here); %s is \"%s\"\n",
                    pipeline, label);
            return 2;
        }
        p.pageviews = 1;
        count_field = "\"views\":";
    }
    p.warmup = 1000;
    total = p.warmup + rate * duration_s;
    table = calloc(TABLE_SIZE, sizeof(*table));
    p.sent_at = calloc((size_t)total, sizeof(int64_t));
    latency = calloc((size_t)total, sizeof(int64_t));
    if (!table || !p.sent_at || !latency) {
        fprintf(stderr, "bench_e2e: out of memory\n");
        return 1;
    }
    snprintf(prefix, sizeof(prefix), "bench%ld%d", (long)time(NULL), (int)getpid());
    snprintf(input, sizeof(input), "%s.in", prefix);
    snprintf(output, sizeof(output), "%s.out", prefix);
    snprintf(state_dir, sizeof(state_dir), "/tmp/%s", prefix);
    {
        char *create[] = {(char *)tally,
                          "topics",
                          "create",
                          "--brokers",
                          (char *)brokers,
                          "--pipeline",
                          (char *)pipeline,
                          "--partitions",
                          "1",
                          "--topic-prefix",
                          prefix,
                          "--input-topic",
                          input,
                          "--output-topic",
                          output,
                          NULL};
        if (run_command(create) != 0) {
            fprintf(stderr, "bench_e2e: tally topics create failed\n");
            return 1;
        }
    }
    daemon_pid = fork();
    if (daemon_pid == 0) {
        execl(tally, tally, "run", "--pipeline", pipeline, "--brokers", brokers, "--topic-prefix",
              prefix, "--group-id", prefix, "--instance-id", "bench", "--input-topic", input,
              "--output-topic", output, "--state-dir", state_dir, "--commit-interval-ms",
              commit_interval, "--max-batch", max_batch, (char *)NULL);
        _exit(127);
    }

    /* the reader is independent of the daemon: its own group */
    snprintf(reader_group, sizeof(reader_group), "%s-reader", prefix);
    conf = rd_kafka_conf_new();
    if (rd_kafka_conf_set(conf, "bootstrap.servers", brokers, errstr, sizeof(errstr)) ||
        rd_kafka_conf_set(conf, "group.id", reader_group, errstr, sizeof(errstr)) ||
        rd_kafka_conf_set(conf, "isolation.level", "read_committed", errstr, sizeof(errstr)) ||
        rd_kafka_conf_set(conf, "auto.offset.reset", "earliest", errstr, sizeof(errstr)) ||
        rd_kafka_conf_set(conf, "fetch.wait.max.ms", "10", errstr, sizeof(errstr)) ||
        !(consumer = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr)))) {
        fprintf(stderr, "bench_e2e: consumer: %s\n", errstr);
        return 1;
    }
    {
        rd_kafka_topic_partition_list_t *topics = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(topics, output, RD_KAFKA_PARTITION_UA);
        rd_kafka_subscribe(consumer, topics);
        rd_kafka_topic_partition_list_destroy(topics);
    }
    conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", brokers, errstr, sizeof(errstr));
    rd_kafka_conf_set(conf, "linger.ms", "2", errstr, sizeof(errstr));
    rd_kafka_conf_set(conf, "enable.idempotence", "true", errstr, sizeof(errstr));
    p.rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    p.topic = input;
    p.rate = rate;
    p.duration_ms = duration_s * 1000;
    p.keys = keys;
    /* Warm up first - group join, the first transaction, the first fetches -
     * so the figures describe the steady state, not the start. */
    pthread_create(&thread, NULL, produce, &p);
    first_sent = 0;
    deadline = now_ms() + 120000;
    while (visible < total) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(consumer, 50);
        if (!p.go && visible >= p.warmup) {
            p.go = 1;
            first_sent = now_ms();
            deadline = 0;
        }
        if (p.done && !deadline)
            deadline = now_ms() + 60000;
        if (!p.go && now_ms() > deadline) {
            fprintf(stderr, "bench_e2e: the warm-up events never became visible\n");
            p.go = 1;
            break;
        }
        if (deadline && now_ms() > deadline)
            break;
        if (!m)
            continue;
        if (!m->err && m->key && m->payload) {
            size_t field_len = strlen(count_field);
            const char *count = memmem(m->payload, m->len, count_field, field_len);
            int64_t delta = count ? update(m->key, m->key_len, atoll(count + field_len)) : 0;
            int64_t now = now_ms();
            for (int64_t i = visible; i < visible + delta && i < total; i++)
                latency[i] = now - p.sent_at[i];
            visible += delta;
            if (delta)
                last_visible = now;
        }
        rd_kafka_message_destroy(m);
    }
    pthread_join(thread, NULL);
    kill(daemon_pid, SIGTERM);
    waitpid(daemon_pid, NULL, 0);
    rd_kafka_consumer_close(consumer);
    rd_kafka_destroy(consumer);
    rd_kafka_destroy(p.rk);
    {
        int64_t measured = rate * duration_s;
        int64_t n = (visible < total ? visible : total) - p.warmup;
        double seconds = (last_visible - first_sent) / 1000.0;
        int64_t *lat = latency + p.warmup;
        if (n < 0)
            n = 0;
        qsort(lat, (size_t)n, sizeof(int64_t), compare);
        int64_t p50 = n ? lat[n / 2] : -1, p95 = n ? lat[n * 95 / 100] : -1,
                p99 = n ? lat[n * 99 / 100] : -1, max = n ? lat[n - 1] : -1;
        printf("bench=e2e pipeline=%s rate=%lld duration_s=%lld events=%lld visible=%lld "
               "throughput_eps=%.0f p50_ms=%lld p95_ms=%lld p99_ms=%lld max_ms=%lld held=%s\n",
               label, (long long)rate, (long long)duration_s, (long long)measured, (long long)n,
               seconds > 0 ? n / seconds : 0.0, (long long)p50, (long long)p95, (long long)p99,
               (long long)max, n >= measured && p95 < 1000 ? "yes" : "no");
    }
    {
        char cmd[256];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", state_dir);
        if (system(cmd) != 0)
            fprintf(stderr, "bench_e2e: could not remove %s\n", state_dir);
    }
    return visible >= total ? 0 : 1;
}
