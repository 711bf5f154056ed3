/* benchmarks/bench_enrich.c - throughput and latency of `tally enrich` on a
 * real broker.
 *
 *   bench_enrich --brokers B --tally PATH [--rate N] [--duration S]
 *                [--dup-percent P] [--commit-interval-ms N] [--max-batch N]
 *
 * Creates fresh topics (one input partition), starts `tally enrich` as a child
 * process and produces raw orders at a steady rate after a warm-up of 1000:
 * ts in turn as epoch ms, epoch seconds and RFC 3339 with an offset, and P% of
 * the records (default 10) copies of a recent order, keyed by orderId. An
 * independent read_committed consumer reads the output topic; an order's
 * latency is from the moment its first copy was produced to the moment its
 * enriched record is visible. Prints one line:
 *
 *   bench=enrich rate=... duration_s=... events=... distinct=... visible=...
 *   duplicates=... throughput_eps=... p50_ms=... p95_ms=... p99_ms=...
 *   max_ms=... held=yes|no
 *
 * events counts every record offered (copies too) in the measured part;
 * throughput_eps is events over the time until the last enriched record was
 * visible. duplicates counts orders that came out more than once (0 unless
 * exactly-once is broken). held=yes when every distinct order came out,
 * none twice, and the p95 stayed under 1 s. */
#include <getopt.h>
#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

struct producer_state {
    rd_kafka_t *rk;
    const char *topic;
    int64_t warmup, rate, duration_ms, dup_percent;
    int64_t *sent_at;          /* produce time of order i's first copy (ms) */
    volatile int64_t distinct; /* orders produced so far (their ids are 0..distinct-1) */
    int64_t events;            /* records produced in the measured part, copies too */
    volatile int go, done;
};

static uint64_t rng = 88172645463325252ULL;
static uint64_t next_random(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* A raw order; its ts form rotates with the id. */
static int format_order(char *buf, size_t len, int64_t id, int64_t ts)
{
    char when[64];
    unsigned cents = (unsigned)(id * 7919 % 20000) + 100;
    switch (id % 3) {
    case 0: snprintf(when, sizeof(when), "%lld", (long long)ts); break;
    case 1: snprintf(when, sizeof(when), "%lld", (long long)(ts / 1000)); break;
    default: {
        time_t local = (time_t)(ts / 1000) + 7 * 3600;
        struct tm tm;
        char date[40];
        gmtime_r(&local, &tm);
        strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%S", &tm);
        snprintf(when, sizeof(when), "\"%s.%03d+07:00\"", date, (int)(ts % 1000));
    }
    }
    return snprintf(buf, len,
                    "{\"orderId\":\"o-%lld\",\"productId\":\"p-%lld\",\"storeId\":\"s-%lld\","
                    "\"price\":\"%u.%02u\",\"qty\":%lld,\"ts\":%s}",
                    (long long)id, (long long)(id % 200), (long long)(id % 50), cents / 100,
                    cents % 100, (long long)(id % 5 + 1), when);
}

static void send_one(struct producer_state *p, int64_t now)
{
    char buf[512], key[32];
    int64_t id;
    int len, key_len;
    /* a copy of one of the last 1000 orders, or a new one */
    if (p->distinct > p->warmup && (int64_t)(next_random() % 100) < p->dup_percent) {
        int64_t back = (int64_t)(next_random() % 1000);
        id = p->distinct - 1 - (back < p->distinct ? back : 0);
    } else {
        id = p->distinct;
        p->sent_at[id] = now;
        p->distinct++;
    }
    len = format_order(buf, sizeof(buf), id, now);
    key_len = snprintf(key, sizeof(key), "o-%lld", (long long)id);
    while (rd_kafka_producev(
               p->rk, RD_KAFKA_V_TOPIC(p->topic), RD_KAFKA_V_KEY(key, (size_t)key_len),
               RD_KAFKA_V_VALUE(buf, (size_t)len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
               RD_KAFKA_V_END) == RD_KAFKA_RESP_ERR__QUEUE_FULL)
        rd_kafka_poll(p->rk, 5);
}

static void *produce(void *arg)
{
    struct producer_state *p = arg;
    int64_t start, total;

    for (int64_t i = 0; i < p->warmup; i++)
        send_one(p, now_ms());
    rd_kafka_flush(p->rk, 30000);
    while (!p->go)
        usleep(10000);
    start = now_ms();
    total = p->rate * p->duration_ms / 1000;
    for (int64_t i = 0; i < total; i++) {
        int64_t due = start + i * 1000 / p->rate, now = now_ms();
        if (due > now)
            usleep((useconds_t)(due - now) * 1000);
        send_one(p, now_ms());
        rd_kafka_poll(p->rk, 0);
        p->events = i + 1;
    }
    rd_kafka_flush(p->rk, 30000);
    p->done = 1;
    return NULL;
}

static int compare(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
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
                                            {"rate", required_argument, NULL, 'r'},
                                            {"duration", required_argument, NULL, 'd'},
                                            {"dup-percent", required_argument, NULL, 'u'},
                                            {"commit-interval-ms", required_argument, NULL, 'c'},
                                            {"max-batch", required_argument, NULL, 'm'},
                                            {NULL, 0, NULL, 0}};
    const char *brokers = getenv("KAFKA_BROKERS"), *tally = "build/tally";
    const char *commit_interval = "50", *max_batch = "10000";
    int64_t rate = 10000, duration_s = 30, capacity, visible = 0, duplicates = 0, n = 0;
    int64_t *latency, first_sent = 0, last_visible = 0, deadline;
    char prefix[64], input[96], output[96], state_dir[128], reader_group[96], errstr[256];
    unsigned char *seen;
    struct producer_state p = {0};
    rd_kafka_conf_t *conf;
    rd_kafka_t *consumer = NULL;
    pthread_t thread;
    pid_t daemon_pid;
    int opt;

    p.dup_percent = 10;
    while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
        switch (opt) {
        case 'b': brokers = optarg; break;
        case 't': tally = optarg; break;
        case 'r': rate = atoll(optarg); break;
        case 'd': duration_s = atoll(optarg); break;
        case 'u': p.dup_percent = atoll(optarg); break;
        case 'c': commit_interval = optarg; break;
        case 'm': max_batch = optarg; break;
        default:
            fprintf(stderr,
                    "usage: bench_enrich --brokers B --tally PATH [--rate N] [--duration S] "
                    "[--dup-percent P] [--commit-interval-ms N] [--max-batch N]\n");
            return 2;
        }
    }
    if (!brokers || rate < 1 || duration_s < 1 || p.dup_percent < 0 || p.dup_percent > 90) {
        fprintf(stderr, "bench_enrich: --brokers (or KAFKA_BROKERS), a positive --rate and "
                        "--duration, and --dup-percent 0..90 are required\n");
        return 2;
    }
    p.warmup = 1000;
    capacity = p.warmup + rate * duration_s;
    p.sent_at = calloc((size_t)capacity, sizeof(int64_t));
    latency = calloc((size_t)capacity, sizeof(int64_t));
    seen = calloc((size_t)capacity, 1);
    if (!p.sent_at || !latency || !seen) {
        fprintf(stderr, "bench_enrich: out of memory\n");
        return 1;
    }
    snprintf(prefix, sizeof(prefix), "benchenrich%ld%d", (long)time(NULL), (int)getpid());
    snprintf(input, sizeof(input), "%s.orders", prefix);
    snprintf(output, sizeof(output), "%s.enriched", prefix);
    snprintf(state_dir, sizeof(state_dir), "/tmp/%s", prefix);
    {
        char *create[] = {(char *)tally,
                          "topics",
                          "create",
                          "--brokers",
                          (char *)brokers,
                          "--pipeline",
                          "enrich",
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
            fprintf(stderr, "bench_enrich: tally topics create failed\n");
            return 1;
        }
    }
    daemon_pid = fork();
    if (daemon_pid == 0) {
        execl(tally, tally, "enrich", "--brokers", brokers, "--topic-prefix", prefix, "--group-id",
              prefix, "--instance-id", "bench", "--input-topic", input, "--output-topic", output,
              "--state-dir", state_dir, "--commit-interval-ms", commit_interval, "--max-batch",
              max_batch, "--http", "off", (char *)NULL);
        _exit(127);
    }

    snprintf(reader_group, sizeof(reader_group), "%s-reader", prefix);
    conf = rd_kafka_conf_new();
    if (rd_kafka_conf_set(conf, "bootstrap.servers", brokers, errstr, sizeof(errstr)) ||
        rd_kafka_conf_set(conf, "group.id", reader_group, errstr, sizeof(errstr)) ||
        rd_kafka_conf_set(conf, "isolation.level", "read_committed", errstr, sizeof(errstr)) ||
        rd_kafka_conf_set(conf, "auto.offset.reset", "earliest", errstr, sizeof(errstr)) ||
        rd_kafka_conf_set(conf, "fetch.wait.max.ms", "10", errstr, sizeof(errstr)) ||
        !(consumer = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr)))) {
        fprintf(stderr, "bench_enrich: consumer: %s\n", errstr);
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
    pthread_create(&thread, NULL, produce, &p);
    deadline = now_ms() + 120000;
    for (;;) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(consumer, 50);
        if (!p.go && visible >= p.warmup) {
            p.go = 1; /* warm: group joined, first transactions done */
            first_sent = now_ms();
            deadline = 0;
        }
        if (p.done && !deadline)
            deadline = now_ms() + 60000;
        if (p.done && visible >= p.distinct && !m)
            break;
        if (deadline && now_ms() > deadline) {
            if (!p.go)
                fprintf(stderr, "bench_enrich: the warm-up orders never came out\n");
            p.go = 1;
            break;
        }
        if (!m)
            continue;
        if (!m->err && m->payload) {
            const char *id = memmem(m->payload, m->len, "\"orderId\":\"o-", 13);
            int64_t i = id ? atoll(id + 13) : -1;
            if (i >= 0 && i < capacity) {
                if (seen[i]) {
                    duplicates++;
                } else {
                    int64_t now = now_ms();
                    seen[i] = 1;
                    latency[i] = now - p.sent_at[i];
                    visible++;
                    last_visible = now;
                }
            }
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
        int64_t measured_distinct = p.distinct - p.warmup, measured_visible = 0;
        double seconds = (last_visible - first_sent) / 1000.0;
        int64_t *lat = latency + p.warmup;
        for (int64_t i = p.warmup; i < p.distinct; i++)
            if (seen[i])
                latency[p.warmup + measured_visible++] = latency[i];
        n = measured_visible;
        qsort(lat, (size_t)n, sizeof(int64_t), compare);
        int64_t p50 = n ? lat[n / 2] : -1, p95 = n ? lat[n * 95 / 100] : -1,
                p99 = n ? lat[n * 99 / 100] : -1, max = n ? lat[n - 1] : -1;
        printf("bench=enrich rate=%lld duration_s=%lld events=%lld distinct=%lld visible=%lld "
               "duplicates=%lld throughput_eps=%.0f p50_ms=%lld p95_ms=%lld p99_ms=%lld "
               "max_ms=%lld held=%s\n",
               (long long)rate, (long long)duration_s, (long long)p.events,
               (long long)measured_distinct, (long long)n, (long long)duplicates,
               seconds > 0 ? p.events / seconds : 0.0, (long long)p50, (long long)p95,
               (long long)p99, (long long)max,
               n >= measured_distinct && duplicates == 0 && p95 < 1000 ? "yes" : "no");
    }
    {
        char cmd[256];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", state_dir);
        if (system(cmd) != 0)
            fprintf(stderr, "bench_enrich: could not remove %s\n", state_dir);
    }
    return duplicates == 0 && visible >= p.distinct ? 0 : 1;
}
