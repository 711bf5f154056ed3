/* tests/unit/test_runner_mock.c - the daemon's failure paths, with faults
 * injected by librdkafka's mock cluster (in process, no broker).
 *
 * The mock cluster proves nothing about exactly-once (it does not filter
 * aborted records for read_committed readers, fence or compact: the Kafka
 * tests do that on a real broker). What it can do is fail one request on
 * demand, which a real broker cannot, so the runner's error paths run here:
 *   abortable   AddPartitionsToTxn refused once: the batch's transaction is
 *               aborted, SQLite rolled back, the consumer rewound, and the
 *               events applied once in the end;
 *   fatal       EndTxn answered "producer fenced": tly_runner_run returns -1
 *               with the reason, and SQLite holds nothing of the batch;
 *   assignment  a second instance joins the group: one partition moves to it
 *               (cooperative rebalance), the first drops that partition's rows
 *               (HELD -> UNASSIGNED), the second rebuilds them from the
 *               changelog; when the second stops, the first takes the
 *               partition back. */
#include "tly_test.h"

#include "runner.h"

#include <fcntl.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <pthread.h>
#include <signal.h>

#define API_ADD_PARTITIONS_TO_TXN 24 /* Kafka protocol ApiKeys */
#define API_END_TXN 26
#define EVENTS 200

struct fixture {
    rd_kafka_t *handle; /* the mock cluster lives in a librdkafka handle */
    rd_kafka_mock_cluster_t *mock;
    const char *bootstraps;
    char dir[64], db[128], log[128];
    tly_runner_config cfg;
    volatile sig_atomic_t stop;
    pthread_t thread;
    int rc;
    char err[1024];
    int saved_stderr;
};

/* A second runner on the same cluster and topics: its own state dir and
 * instance id. */
static void fixture_peer(struct fixture *peer, const struct fixture *f, const char *instance)
{
    *peer = (struct fixture){0};
    peer->bootstraps = f->bootstraps;
    snprintf(peer->dir, sizeof(peer->dir), "%s", tly_test_dir());
    snprintf(peer->db, sizeof(peer->db), "%s/orders.db", peer->dir);
    snprintf(peer->log, sizeof(peer->log), "%s", f->log); /* one stderr per process */
    peer->cfg = f->cfg;
    peer->cfg.instance_id = instance;
    peer->cfg.state_dir = peer->dir;
    peer->cfg.stop = &peer->stop;
}

static int fixture_open(struct fixture *f)
{
    static const char *const topics[] = {"in", "out", "t-changelog", "t-snapshots", "t-dlq"};
    char errstr[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_t *producer;

    rd_kafka_conf_set(conf, "log_level", "0", errstr, sizeof(errstr));
    if (!(f->handle = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr))) ||
        !(f->mock = rd_kafka_mock_cluster_new(f->handle, 1)))
        return -1;
    f->bootstraps = rd_kafka_mock_cluster_bootstraps(f->mock);
    for (size_t i = 0; i < sizeof(topics) / sizeof(*topics); i++)
        if (rd_kafka_mock_topic_create(f->mock, topics[i], 2, 1))
            return -1;
    /* EVENTS orders over 4 stores, 2 partitions: 50 per store */
    conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", f->bootstraps, errstr, sizeof(errstr));
    if (!(producer = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr))))
        return -1;
    for (int i = 0; i < EVENTS; i++) {
        char value[256], key[8];
        snprintf(key, sizeof(key), "s%d", i % 4);
        snprintf(value, sizeof(value),
                 "{\"orderId\":\"o%d\",\"productId\":\"p1\",\"storeId\":\"%s\",\"price\":1.5,"
                 "\"qty\":2,\"ts\":1700000040000,\"validated\":true}",
                 i, key);
        rd_kafka_producev(producer, RD_KAFKA_V_TOPIC("in"), RD_KAFKA_V_PARTITION(i % 2),
                          RD_KAFKA_V_KEY(key, strlen(key)), RD_KAFKA_V_VALUE(value, strlen(value)),
                          RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
    }
    rd_kafka_flush(producer, 10000);
    rd_kafka_destroy(producer);

    snprintf(f->dir, sizeof(f->dir), "%s", tly_test_dir());
    snprintf(f->db, sizeof(f->db), "%s/orders.db", f->dir);
    snprintf(f->log, sizeof(f->log), "%s/stderr.log", f->dir);
    tly_runner_config_init(&f->cfg, "orders");
    f->cfg.brokers = f->bootstraps;
    f->cfg.input_topic = "in";
    f->cfg.output_topic = "out";
    f->cfg.topic_prefix = "t";
    f->cfg.group_id = "g";
    f->cfg.instance_id = "i-0";
    f->cfg.state_dir = f->dir;
    f->cfg.manage_topics = 0; /* the mock cluster has no Admin API */
    f->cfg.snapshot_interval_ms = 0;
    f->cfg.commit_interval_ms = 50;
    f->cfg.session_timeout_ms = 6000;
    f->cfg.stop = &f->stop;
    return 0;
}

static void fixture_close(struct fixture *f)
{
    if (f->mock)
        rd_kafka_mock_cluster_destroy(f->mock);
    if (f->handle)
        rd_kafka_destroy(f->handle);
}

static void *run(void *arg)
{
    struct fixture *f = arg;
    f->rc = tly_runner_run(&f->cfg, f->err, sizeof(f->err));
    return NULL;
}

/* The daemon's log goes to a file the test reads (its stderr). */
static void start(struct fixture *f)
{
    int fd = open(f->log, O_CREAT | O_WRONLY | O_TRUNC, 0644);
    fflush(stderr);
    f->saved_stderr = dup(2);
    dup2(fd, 2);
    close(fd);
    pthread_create(&f->thread, NULL, run, f);
}

/* Waits until `done` holds for the database or the runner returned: the
 * observable end of a run, not a sleep. Returns 1 when it held. */
static int wait_for(struct fixture *f, const char *sql, int64_t want, int seconds)
{
    for (int i = 0; i < seconds * 20; i++) {
        if (access(f->db, F_OK) == 0 && tly_test_scalar(f->db, NULL, sql) == want)
            return 1;
        if (pthread_tryjoin_np(f->thread, NULL) == 0) {
            f->thread = 0;
            return 0;
        }
        usleep(50000);
    }
    return 0;
}

static void finish(struct fixture *f)
{
    f->stop = 1;
    if (f->thread)
        pthread_join(f->thread, NULL);
    fflush(stderr);
    dup2(f->saved_stderr, 2);
    close(f->saved_stderr);
}

/* Lines of the daemon's log that contain needle. */
static int log_lines(const struct fixture *f, const char *needle)
{
    FILE *in = fopen(f->log, "r");
    char line[4096];
    int n = 0;
    while (in && fgets(line, sizeof(line), in))
        n += strstr(line, needle) != NULL;
    if (in)
        fclose(in);
    return n;
}

static void test_abortable_error_aborts_and_rewinds(void)
{
    struct fixture f = {0};
    CHECK(fixture_open(&f) == 0);
    rd_kafka_mock_push_request_errors(f.mock, API_ADD_PARTITIONS_TO_TXN, 1,
                                      RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED);
    start(&f);
    CHECK_MSG(wait_for(&f, "SELECT coalesce(sum(count), 0) FROM order_window_state", EVENTS, 60),
              "the events were not all applied (runner: %d %s)", f.rc, f.err);
    finish(&f);
    CHECK_MSG(f.rc == 0, "%s", f.err);
    /* each event once, although its first batch was aborted */
    CHECK_INT(tly_test_scalar(f.db, NULL, "SELECT sum(count) FROM order_window_state"), EVENTS);
    CHECK_INT(tly_test_scalar(f.db, NULL,
                              "SELECT sum(count) FROM order_window_state "
                              "WHERE store_id = 's1'"),
              EVENTS / 4);
    CHECK_INT(tly_test_scalar(f.db, NULL, "SELECT value FROM meta WHERE key = 'kafka.input.in.0'"),
              EVENTS / 2);
    CHECK_INT(tly_test_scalar(f.db, NULL, "SELECT value FROM meta WHERE key = 'kafka.input.in.1'"),
              EVENTS / 2);
    CHECK_INT(log_lines(&f, "event=transaction_aborted"), 1);
    CHECK(log_lines(&f, "event=rewind") >= 1);
end:
    if (f.thread)
        finish(&f);
    fixture_close(&f);
}

static void test_fatal_error_stops_with_nothing_applied(void)
{
    struct fixture f = {0};
    CHECK(fixture_open(&f) == 0);
    rd_kafka_mock_push_request_errors(f.mock, API_END_TXN, 1, RD_KAFKA_RESP_ERR_PRODUCER_FENCED);
    start(&f);
    /* the runner returns by itself */
    CHECK(pthread_join(f.thread, NULL) == 0);
    f.thread = 0;
    finish(&f);
    CHECK_INT(f.rc, -1);
    CHECK_MSG(strstr(f.err, "commit_transaction") != NULL, "%s", f.err);
    /* the batch's rows and positions were rolled back */
    CHECK_INT(tly_test_scalar(f.db, NULL, "SELECT count(*) FROM order_window_state"), 0);
    CHECK_INT(
        tly_test_scalar(f.db, NULL, "SELECT count(*) FROM meta WHERE key LIKE 'kafka.input.%'"), 0);
    CHECK_INT(log_lines(&f, "event=transaction_aborted"), 0);
end:
    if (f.thread)
        finish(&f);
    fixture_close(&f);
}

static void test_partition_moves_and_comes_back(void)
{
    struct fixture f = {0}, g = {0};
    static const char *const total = "SELECT coalesce(sum(count), 0) FROM order_window_state";

    CHECK(fixture_open(&f) == 0);
    start(&f);
    CHECK_MSG(wait_for(&f, total, EVENTS, 60), "a did not apply everything: %s", f.err);
    CHECK_INT(tly_test_scalar(f.db, NULL, "SELECT count(*) FROM partitions"), 2);
    fixture_peer(&g, &f, "i-1");
    pthread_create(&g.thread, NULL, run, &g);
    /* a keeps one partition, b takes the other over from the changelog */
    CHECK_MSG(wait_for(&f, "SELECT count(*) FROM partitions", 1, 60), "a kept both: %s", f.err);
    CHECK_MSG(wait_for(&g, "SELECT count(*) FROM partitions", 1, 60), "b took none: %s", g.err);
    CHECK_MSG(wait_for(&g, total, EVENTS / 2, 60), "b's rows: %lld",
              (long long)tly_test_scalar(g.db, NULL, total));
    CHECK_INT(tly_test_scalar(f.db, NULL, total), EVENTS / 2);
    CHECK_INT(tly_test_scalar(f.db, NULL, "SELECT count(DISTINCT part) FROM order_window_state"),
              1);
    CHECK(tly_test_scalar(f.db, NULL, "SELECT part FROM partitions") !=
          tly_test_scalar(g.db, NULL, "SELECT part FROM partitions"));
    CHECK_INT(
        tly_test_scalar(g.db, NULL, "SELECT count(*) FROM partitions WHERE source = 'changelog'"),
        1);
    CHECK(log_lines(&f, "event=partition_dropped") >= 1);
    /* b stops: a takes the partition back, rebuilt from the changelog */
    g.stop = 1;
    pthread_join(g.thread, NULL);
    g.thread = 0;
    CHECK_MSG(g.rc == 0, "%s", g.err);
    CHECK_MSG(wait_for(&f, "SELECT count(*) FROM partitions", 2, 60), "a did not take it back");
    CHECK_MSG(wait_for(&f, total, EVENTS, 60), "a's rows after the take-back: %lld",
              (long long)tly_test_scalar(f.db, NULL, total));
    finish(&f);
    CHECK_MSG(f.rc == 0, "%s", f.err);
    CHECK_INT(log_lines(&f, "event=partition_state_invalid"), 0);
end:
    if (g.thread) {
        g.stop = 1;
        pthread_join(g.thread, NULL);
    }
    if (f.thread)
        finish(&f);
    fixture_close(&f);
}

static const tly_testcase cases[] = {
    {"abortable_error_aborts_and_rewinds", test_abortable_error_aborts_and_rewinds},
    {"fatal_error_stops_with_nothing_applied", test_fatal_error_stops_with_nothing_applied},
    {"partition_moves_and_comes_back", test_partition_moves_and_comes_back},
    {NULL, NULL}};

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    return tly_test_main(argc, argv, cases);
}
