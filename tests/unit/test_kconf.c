/* tests/unit/test_kconf.c - the user's Kafka settings: the properties file,
 * -X, the environment, their order, refused and misspelled properties,
 * redaction, and the connection check's timeout; the idempotent producer and
 * the produce call that waits out a full local queue. No broker needed (the
 * wait for room uses librdkafka's in-process mock cluster). */
#include "tly_test.h"

#include "kconf.h"

#include <librdkafka/rdkafka_mock.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>

static int64_t cli_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The value conf holds for name ("" if unset). */
static const char *conf_value(const rd_kafka_conf_t *conf, const char *name)
{
    static char buf[512];
    size_t len = sizeof(buf);
    if (rd_kafka_conf_get(conf, name, buf, &len) != RD_KAFKA_CONF_OK)
        buf[0] = '\0';
    return buf;
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

static void test_file_then_flags(void)
{
    char path[256], err[1024] = "", summary[1024];
    static const char *const defaults[] = {"linger.ms", "5", "client.id", "tally-x", NULL};
    static const char *const required[] = {"enable.idempotence", "true", NULL};
    rd_kafka_conf_t *conf = NULL;

    tly_kconf_reset();
    snprintf(path, sizeof(path), "%s/client.properties", tly_test_dir());
    write_file(path, "# a comment\n"
                     "\n"
                     "  security.protocol = SASL_SSL  \n"
                     "sasl.mechanisms=SCRAM-SHA-512\n"
                     "sasl.username=from-file\n"
                     "sasl.password=s3cr3t=with=equals\n"
                     "bootstrap.servers=file-host:9093\n"
                     "linger.ms=50\n");
    CHECK_MSG(tly_kconf_add(" sasl.username = from-flag", "-X", err, sizeof(err)) == 0, "%s", err);
    /* the file comes after -X on the command line, and still loses to it */
    CHECK_MSG(tly_kconf_add_file(path, err, sizeof(err)) == 0, "%s", err);
    CHECK_STR(tly_kconf_brokers(NULL), "file-host:9093");
    CHECK_STR(tly_kconf_brokers(""), "file-host:9093");
    CHECK_STR(tly_kconf_brokers("flag-host:9092"), "flag-host:9092");

    conf = tly_kconf_new("flag-host:9092", defaults, required, err, sizeof(err));
    CHECK_MSG(conf != NULL, "%s", err);
    CHECK_STR(conf_value(conf, "security.protocol"), "sasl_ssl");
    CHECK_STR(conf_value(conf, "sasl.username"), "from-flag");
    CHECK_STR(conf_value(conf, "sasl.password"), "s3cr3t=with=equals");
    CHECK_STR(conf_value(conf, "bootstrap.servers"), "flag-host:9092");
    CHECK_STR(conf_value(conf, "linger.ms"), "50");      /* a user setting beats a default */
    CHECK_STR(conf_value(conf, "client.id"), "tally-x"); /* a default nobody changed */
    CHECK_STR(conf_value(conf, "enable.idempotence"), "true");
    rd_kafka_conf_destroy(conf);
    conf = NULL;

    /* without --brokers the file's bootstrap.servers stands */
    conf = tly_kconf_new(NULL, NULL, NULL, err, sizeof(err));
    CHECK_MSG(conf != NULL, "%s", err);
    CHECK_STR(conf_value(conf, "bootstrap.servers"), "file-host:9093");

    tly_kconf_summary(summary, sizeof(summary));
    CHECK_MSG(strstr(summary, "sasl.password=[redacted]") != NULL, "%s", summary);
    CHECK_MSG(strstr(summary, "s3cr3t") == NULL, "%s", summary);
    /* file first, then -X */
    CHECK_MSG(strstr(summary, "sasl.username=from-file") <
                  strstr(summary, "sasl.username=from-flag"),
              "%s", summary);
end:
    if (conf)
        rd_kafka_conf_destroy(conf);
    tly_kconf_reset();
}

static void test_refused(void)
{
    char path[256], err[1024] = "";
    static const char *const owned[] = {"isolation.level=read_uncommitted",
                                        "transactional.id=mine",
                                        "enable.auto.commit=true",
                                        "enable.idempotence=false",
                                        "group.instance.id=x",
                                        "partition.assignment.strategy=range",
                                        "group.id=g",
                                        NULL};
    static const char *const required[] = {"client.id", "tally-must", NULL};
    rd_kafka_conf_t *conf = NULL;

    tly_kconf_reset();
    for (int i = 0; owned[i]; i++) {
        err[0] = '\0';
        CHECK_MSG(tly_kconf_add(owned[i], "-X", err, sizeof(err)) < 0, "accepted %s", owned[i]);
        CHECK_MSG(strstr(err, "cannot be set: ") != NULL && strncmp(err, "-X: ", 4) == 0, "%s",
                  err);
    }
    CHECK_MSG(strstr(err, "--group-id") != NULL, "%s", err);

    /* librdkafka's own message, and where the property came from */
    snprintf(path, sizeof(path), "%s/typo.properties", tly_test_dir());
    write_file(path, "# line 1\nsecurity.protocol=SSL\n\nsasl.mechanizm=PLAIN\n");
    CHECK(tly_kconf_add_file(path, err, sizeof(err)) < 0);
    CHECK_MSG(strstr(err, "typo.properties:4: ") != NULL, "%s", err);
    CHECK_MSG(strstr(err, "No such configuration property") != NULL, "%s", err);
    CHECK(tly_kconf_add("security.protocol=TLS", "-X", err, sizeof(err)) < 0);
    CHECK_MSG(strstr(err, "-X: ") == err && strstr(err, "security.protocol") != NULL, "%s", err);
    CHECK(tly_kconf_add("security.protocol", "-X", err, sizeof(err)) < 0);
    CHECK_MSG(strstr(err, "is not name=value") != NULL, "%s", err);
    /* secrets in lines that are not name=value, or under a misspelled name,
     * are not repeated */
    CHECK(tly_kconf_add("sasl.password: hunter2", "-X", err, sizeof(err)) < 0);
    CHECK_MSG(strstr(err, "\"sasl.password...\" is not name=value") && !strstr(err, "hunter2"),
              "%s", err);
    CHECK(tly_kconf_add("sasl.pasword=hunter2", "-X", err, sizeof(err)) < 0);
    CHECK_MSG(strstr(err, "sasl.pasword: No such configuration property") &&
                  !strstr(err, "hunter2"),
              "%s", err);
    CHECK(tly_kconf_add("=x", "-X", err, sizeof(err)) < 0);
    CHECK_MSG(strstr(err, "name is missing") != NULL, "%s", err);
    snprintf(path, sizeof(path), "%s/missing.properties", tly_test_dir());
    CHECK(tly_kconf_add_file(path, err, sizeof(err)) < 0);
    CHECK_MSG(strstr(err, "missing.properties") != NULL && strstr(err, "No such file") != NULL,
              "%s", err);

    /* a setting a client needs, which the table does not list, is not
     * overridden silently either */
    CHECK_MSG(tly_kconf_add("client.id=mine", "-X", err, sizeof(err)) == 0, "%s", err);
    CHECK((conf = tly_kconf_new("h:1", NULL, required, err, sizeof(err))) == NULL);
    CHECK_MSG(strstr(err, "-X: client.id cannot be set") != NULL, "%s", err);
end:
    if (conf)
        rd_kafka_conf_destroy(conf);
    tly_kconf_reset();
}

static void test_environment(void)
{
    char path[256], err[1024] = "";
    rd_kafka_conf_t *conf = NULL;

    tly_kconf_reset();
    snprintf(path, sizeof(path), "%s/env.properties", tly_test_dir());
    write_file(path, "sasl.username=from-file\nbootstrap.servers=env-file:1\n");
    setenv("KAFKA_SASL_USERNAME", "from-env", 1);
    setenv("KAFKA_SASL_PASSWORD", "env-secret", 1);
    setenv("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT", 1);
    setenv("TALLY_KAFKA_CONFIG", path, 1);
    CHECK_MSG(tly_kconf_add_env(err, sizeof(err)) == 0, "%s", err);
    conf = tly_kconf_new(NULL, NULL, NULL, err, sizeof(err));
    CHECK_MSG(conf != NULL, "%s", err);
    CHECK_STR(conf_value(conf, "sasl.username"), "from-file"); /* the file beats the environment */
    CHECK_STR(conf_value(conf, "sasl.password"), "env-secret");
    CHECK_STR(conf_value(conf, "security.protocol"), "sasl_plaintext");
    CHECK_STR(tly_kconf_brokers(NULL), "env-file:1");
    /* $KAFKA_BROKERS stands in for --brokers only where nothing says more */
    setenv("KAFKA_BROKERS", "env-brokers:1", 1);
    CHECK_STR(tly_kconf_brokers(NULL), "env-file:1");
    CHECK_STR(tly_kconf_brokers("flag:1"), "flag:1");
    CHECK_MSG(strstr(tly_kconf_summary(err, sizeof(err)), "env-secret") == NULL, "%s", err);
    rd_kafka_conf_destroy(conf);
    conf = NULL;

    /* a bad environment value says which variable */
    tly_kconf_reset();
    CHECK_STR(tly_kconf_brokers(NULL), "env-brokers:1");
    setenv("KAFKA_SECURITY_PROTOCOL", "QUIC", 1);
    CHECK(tly_kconf_add_env(err, sizeof(err)) < 0);
    CHECK_MSG(strncmp(err, "$KAFKA_SECURITY_PROTOCOL: ", 26) == 0, "%s", err);
end:
    unsetenv("KAFKA_BROKERS");
    unsetenv("KAFKA_SASL_USERNAME");
    unsetenv("KAFKA_SASL_PASSWORD");
    unsetenv("KAFKA_SECURITY_PROTOCOL");
    unsetenv("TALLY_KAFKA_CONFIG");
    if (conf)
        rd_kafka_conf_destroy(conf);
    tly_kconf_reset();
}

static void test_secrets(void)
{
    CHECK(tly_kconf_is_secret("sasl.password"));
    CHECK(tly_kconf_is_secret("ssl.key.password"));
    CHECK(tly_kconf_is_secret("ssl.keystore.password"));
    CHECK(tly_kconf_is_secret("sasl.oauthbearer.client.secret"));
    CHECK(tly_kconf_is_secret("sasl.oauthbearer.config"));
    CHECK(tly_kconf_is_secret("ssl.key.pem"));
    CHECK(!tly_kconf_is_secret("sasl.username"));
    CHECK(!tly_kconf_is_secret("ssl.ca.location"));
end:;
}

/* Nothing listens: the check gives up at its deadline and says it was a
 * timeout (-2), not settings that cannot work (-1). */
static void test_check_unreachable(void)
{
    char err[1024] = "";
    int64_t started = cli_ms();
    int rc;

    tly_kconf_reset();
    rc = tly_kconf_check_cluster("127.0.0.1:1", 600, err, sizeof(err));
    CHECK_INT(rc, -2);
    CHECK_MSG(strstr(err, "no Kafka broker at 127.0.0.1:1 answered within 600 ms") != NULL, "%s",
              err);
    CHECK_MSG(cli_ms() - started < 5000, "took %lld ms", (long long)(cli_ms() - started));
end:;
}

static void quiet_log(const rd_kafka_t *rk, int level, const char *facility, const char *message)
{
    (void)rk, (void)level, (void)facility, (void)message;
}

static void quiet_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    (void)rk, (void)err, (void)reason, (void)opaque;
}

/* Counts the delivered messages whose opaque is the counter itself. */
static void count_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    int *delivered = opaque;
    (void)rk;
    if (!m->err && m->_private == delivered)
        (*delivered)++;
}

/* Counts the messages purged from the queue. */
static void count_purged(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    int *purged = opaque;
    (void)rk;
    if (m->err == RD_KAFKA_RESP_ERR__PURGE_QUEUE)
        (*purged)++;
}

/* The defaults, the user's settings, and idempotence, which nobody turns off. */
static void test_idempotent_producer(void)
{
    static const char *const defaults[] = {"client.id", "tally-x", "linger.ms", "5", NULL};
    char err[1024] = "";
    int delivered = 0;
    rd_kafka_t *rk = NULL;
    const rd_kafka_conf_t *conf;

    tly_kconf_reset();
    CHECK_MSG(tly_kconf_add("linger.ms=50", "-X", err, sizeof(err)) == 0, "%s", err);
    rk = tly_kconf_idempotent_producer("127.0.0.1:1", defaults, &delivered, count_delivery,
                                       quiet_error, quiet_log, err, sizeof(err));
    CHECK_MSG(rk != NULL, "%s", err);
    conf = rd_kafka_conf(rk);
    CHECK_STR(conf_value(conf, "enable.idempotence"), "true");
    CHECK_STR(conf_value(conf, "client.id"), "tally-x");
    CHECK_STR(conf_value(conf, "linger.ms"), "50");
    CHECK_STR(conf_value(conf, "bootstrap.servers"), "127.0.0.1:1");
    CHECK(rd_kafka_opaque(rk) == &delivered);
end:
    if (rk)
        rd_kafka_destroy(rk);
    tly_kconf_reset();
}

static volatile sig_atomic_t alarm_stop;

static void on_alarm(int sig)
{
    (void)sig;
    alarm_stop = 1;
}

/* No broker and room for one message: the second waits for room that never
 * comes, until the stop flag is set (by SIGALRM, 300 ms later); it is not
 * queued (purging the queue reports the first alone), and its headers stay
 * the caller's. */
static void test_produce_stops(void)
{
    static const char *const defaults[] = {"queue.buffering.max.messages", "1", NULL};
    struct itimerval in_300ms = {{0, 0}, {0, 300000}};
    struct sigaction sa, saved;
    char err[1024] = "";
    int purged = 0, alarm_set = 0;
    rd_kafka_t *rk = NULL;
    rd_kafka_headers_t *headers = rd_kafka_headers_new(1);
    int64_t started;
    rd_kafka_resp_err_t kerr;

    tly_kconf_reset();
    rk = tly_kconf_idempotent_producer("127.0.0.1:1", defaults, &purged, count_purged, quiet_error,
                                       quiet_log, err, sizeof(err));
    CHECK_MSG(rk != NULL, "%s", err);
    kerr = tly_kconf_produce(rk, NULL, "t", RD_KAFKA_PARTITION_UA, "k", 1, "v1", 2, NULL, NULL,
                             &alarm_stop);
    CHECK_MSG(kerr == RD_KAFKA_RESP_ERR_NO_ERROR, "%s", rd_kafka_err2str(kerr));

    /* a stop set before the call: nothing is tried */
    alarm_stop = 1;
    CHECK_INT(tly_kconf_produce(rk, NULL, "t", RD_KAFKA_PARTITION_UA, "k", 1, "v2", 2, NULL, NULL,
                                &alarm_stop),
              RD_KAFKA_RESP_ERR__INTR);
    alarm_stop = 0;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_alarm;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGALRM, &sa, &saved);
    alarm_set = 1;
    rd_kafka_header_add(headers, "h", -1, "x", 1);
    started = cli_ms();
    setitimer(ITIMER_REAL, &in_300ms, NULL);
    kerr = tly_kconf_produce(rk, NULL, "t", RD_KAFKA_PARTITION_UA, "k", 1, "v3", 2, headers, NULL,
                             &alarm_stop);
    CHECK_MSG(kerr == RD_KAFKA_RESP_ERR__INTR, "%s", rd_kafka_err2str(kerr));
    CHECK_MSG(cli_ms() - started >= 250, "returned after %lld ms", (long long)(cli_ms() - started));
    CHECK_MSG(cli_ms() - started < 5000, "returned after %lld ms", (long long)(cli_ms() - started));
    CHECK_INT(rd_kafka_header_cnt(headers), 1);
    rd_kafka_purge(rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    rd_kafka_flush(rk, 2000); /* serves the purged messages' reports */
    CHECK_INT(purged, 1);
end:
    if (alarm_set) {
        struct itimerval off = {{0, 0}, {0, 0}};
        setitimer(ITIMER_REAL, &off, NULL);
        sigaction(SIGALRM, &saved, NULL);
    }
    rd_kafka_headers_destroy(headers);
    if (rk)
        rd_kafka_destroy(rk);
    tly_kconf_reset();
}

/* A mock cluster and room for one message: librdkafka refuses the second
 * (the queue is full until the first's delivery report is served), and
 * tly_kconf_produce waits until it fits, every time. */
static void test_produce_waits_for_room(void)
{
    static const char *const defaults[] = {"queue.buffering.max.messages", "1", NULL};
    enum { MESSAGES = 20 };
    char err[1024] = "", errstr[256], value[32];
    int delivered = 0;
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_t *handle = NULL, *rk = NULL;
    rd_kafka_mock_cluster_t *mock = NULL;
    rd_kafka_resp_err_t kerr;

    tly_kconf_reset();
    rd_kafka_conf_set(conf, "log_level", "0", errstr, sizeof(errstr));
    handle = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    CHECK_MSG(handle != NULL, "%s", errstr);
    CHECK((mock = rd_kafka_mock_cluster_new(handle, 1)) != NULL);
    CHECK_INT(rd_kafka_mock_topic_create(mock, "t", 1, 1), RD_KAFKA_RESP_ERR_NO_ERROR);
    rk = tly_kconf_idempotent_producer(rd_kafka_mock_cluster_bootstraps(mock), defaults, &delivered,
                                       count_delivery, quiet_error, quiet_log, err, sizeof(err));
    CHECK_MSG(rk != NULL, "%s", err);

    for (int i = 0; i < MESSAGES; i++) {
        snprintf(value, sizeof(value), "v%d", i);
        kerr = tly_kconf_produce(rk, NULL, "t", RD_KAFKA_PARTITION_UA, "k", 1, value, strlen(value),
                                 NULL, &delivered, NULL);
        CHECK_MSG(kerr == RD_KAFKA_RESP_ERR_NO_ERROR, "message %d: %s", i, rd_kafka_err2str(kerr));
        if (i == 0) /* nothing has served the first's report: there is no room */
            CHECK_INT(rd_kafka_producev(rk, RD_KAFKA_V_TOPIC("t"), RD_KAFKA_V_VALUE("x", 1),
                                        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END),
                      RD_KAFKA_RESP_ERR__QUEUE_FULL);
    }
    CHECK_INT(rd_kafka_flush(rk, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);
    CHECK_INT(delivered, MESSAGES);
end:
    if (rk)
        rd_kafka_destroy(rk);
    if (mock)
        rd_kafka_mock_cluster_destroy(mock);
    if (handle)
        rd_kafka_destroy(handle);
    else
        rd_kafka_conf_destroy(conf);
    tly_kconf_reset();
}

static const tly_testcase cases[] = {{"file_then_flags", test_file_then_flags},
                                     {"refused", test_refused},
                                     {"environment", test_environment},
                                     {"secrets", test_secrets},
                                     {"check_unreachable", test_check_unreachable},
                                     {"idempotent_producer", test_idempotent_producer},
                                     {"produce_stops", test_produce_stops},
                                     {"produce_waits_for_room", test_produce_waits_for_room},
                                     {NULL, NULL}};

int main(int argc, char **argv)
{
    return tly_test_main(argc, argv, cases);
}
