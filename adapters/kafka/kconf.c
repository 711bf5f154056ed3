/* adapters/kafka/kconf.c - every librdkafka configuration tally makes (see kconf.h
 * for the order in which settings apply). */
#include "kconf.h"
#include "clock.h"

#include "error.h"
#include "log.h"

#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Where a user setting came from: later ranks win over earlier ones. */
enum rank { RANK_ENV, RANK_FILE, RANK_FLAG, RANK_COUNT };

struct setting {
    char *name, *value;
    char origin[300];
    enum rank rank;
};

static struct setting *settings;
static int setting_count;
static int file_added;

/* The properties tally sets itself because exactly-once, fencing or the
 * partition take-over depend on them, and why (or which flag sets them). */
static const struct {
    const char *name, *why;
} owned[] = {
    {"isolation.level", "tally reads with read_committed: exactly-once depends on it"},
    {"transactional.id", "tally derives it from --group-id and --instance-id "
                         "(tally-<group>-<instance>): fencing a previous instance depends on it"},
    {"transaction.timeout.ms", "use --transaction-timeout"},
    {"enable.idempotence", "tally's producers are idempotent or transactional by design"},
    {"acks", "tally's producers are idempotent or transactional: they need acks=all"},
    {"enable.auto.commit", "tally commits input offsets inside its Kafka transactions"},
    {"enable.auto.offset.store", "tally commits input offsets inside its Kafka transactions"},
    {"auto.offset.reset", "a group without committed offsets must start at the earliest record, "
                          "or events would go uncounted"},
    {"enable.partition.eof", "tally's readers need it to know they reached a partition's end"},
    {"group.id", "use --group-id"},
    {"group.instance.id", "use --instance-id"},
    {"session.timeout.ms", "use --session-timeout"},
    {"partition.assignment.strategy", "taking partitions over one by one needs cooperative-sticky"},
};

/* Environment fallbacks, below the file and -X. */
static const struct {
    const char *variable, *name;
} environment[] = {
    {"KAFKA_SECURITY_PROTOCOL", "security.protocol"}, {"KAFKA_SASL_MECHANISM", "sasl.mechanisms"},
    {"KAFKA_SASL_USERNAME", "sasl.username"},         {"KAFKA_SASL_PASSWORD", "sasl.password"},
    {"KAFKA_SSL_CA_LOCATION", "ssl.ca.location"},     {"TALLY_KAFKA_DEBUG", "debug"},
};

int tly_kconf_is_secret(const char *name)
{
    return strstr(name, "password") || strstr(name, "secret") ||
           strcmp(name, "sasl.oauthbearer.config") == 0 || strcmp(name, "ssl.key.pem") == 0 ||
           strcmp(name, "ssl_key") == 0;
}

static const char *shown(const char *name, const char *value)
{
    return tly_kconf_is_secret(name) ? "[redacted]" : value;
}

/* Sets name=value on conf; the message names `origin` when not NULL. */
static int set_one(rd_kafka_conf_t *conf, const char *name, const char *value, const char *origin,
                   char *errbuf, size_t errlen)
{
    char err[512];
    rd_kafka_conf_res_t res = rd_kafka_conf_set(conf, name, value, err, sizeof(err));
    if (res == RD_KAFKA_CONF_OK)
        return 0;
    /* A misspelled name may be a misspelled secret (sasl.pasword): an
     * unknown property is named without its value. librdkafka does not
     * repeat string values, but a secret must not leak through its message
     * in any case. */
    if (res == RD_KAFKA_CONF_UNKNOWN)
        return tly_error(errbuf, errlen, "%s%skafka setting %s: %s", origin ? origin : "",
                         origin ? ": " : "", name, err);
    if (tly_kconf_is_secret(name) && *value && strstr(err, value))
        snprintf(err, sizeof(err), "invalid value for %s", name);
    return tly_error(errbuf, errlen, "%s%skafka setting %s=%s: %s", origin ? origin : "",
                     origin ? ": " : "", name, shown(name, value), err);
}

int tly_kconf_set(rd_kafka_conf_t *conf, const char *name, const char *value, char *errbuf,
                  size_t errlen)
{
    return set_one(conf, name, value, NULL, errbuf, errlen);
}

static char *trim(char *s)
{
    char *end;
    while (isspace((unsigned char)*s))
        s++;
    end = s + strlen(s);
    while (end > s && isspace((unsigned char)end[-1]))
        *--end = '\0';
    return s;
}

static int add_setting(const char *assignment, const char *origin, enum rank rank, char *errbuf,
                       size_t errlen)
{
    char *copy = strdup(assignment), *eq, *name, *value;
    rd_kafka_conf_t *scratch = NULL;
    struct setting *grown;
    int rc = -1;

    if (!copy)
        return tly_error(errbuf, errlen, "out of memory");
    if (!(eq = strchr(copy, '='))) {
        /* only what looks like the name: the rest may be a secret written
         * the Java way ("sasl.password: ...") */
        tly_error(errbuf, errlen,
                  "%s: \"%.*s...\" is not name=value (a librdkafka property, "
                  "e.g. security.protocol=SASL_SSL)",
                  origin, (int)strcspn(copy, " \t:"), copy);
        goto done;
    }
    *eq = '\0';
    name = trim(copy);
    value = trim(eq + 1);
    if (!*name) {
        tly_error(errbuf, errlen, "%s: the property name is missing before '='", origin);
        goto done;
    }
    for (size_t i = 0; i < sizeof(owned) / sizeof(*owned); i++)
        if (strcmp(name, owned[i].name) == 0) {
            tly_error(errbuf, errlen, "%s: %s cannot be set: %s", origin, name, owned[i].why);
            goto done;
        }
    /* librdkafka judges the name and value now, so a misspelling fails at
     * start with its own message and where it came from */
    scratch = rd_kafka_conf_new();
    if (set_one(scratch, name, value, origin, errbuf, errlen) < 0)
        goto done;
    if (!(grown = realloc(settings, (size_t)(setting_count + 1) * sizeof(*settings)))) {
        tly_error(errbuf, errlen, "out of memory");
        goto done;
    }
    settings = grown;
    settings[setting_count].name = strdup(name);
    settings[setting_count].value = strdup(value);
    if (!settings[setting_count].name || !settings[setting_count].value) {
        free(settings[setting_count].name);
        free(settings[setting_count].value);
        tly_error(errbuf, errlen, "out of memory");
        goto done;
    }
    snprintf(settings[setting_count].origin, sizeof(settings[setting_count].origin), "%s", origin);
    settings[setting_count].rank = rank;
    setting_count++;
    rc = 0;
done:
    if (scratch)
        rd_kafka_conf_destroy(scratch);
    free(copy);
    return rc;
}

int tly_kconf_add(const char *assignment, const char *origin, char *errbuf, size_t errlen)
{
    return add_setting(assignment, origin, RANK_FLAG, errbuf, errlen);
}

int tly_kconf_add_file(const char *path, char *errbuf, size_t errlen)
{
    FILE *f = fopen(path, "r");
    char *line = NULL, origin[300];
    size_t cap = 0;
    int number = 0, rc = -1;

    if (!f)
        return tly_error(errbuf, errlen, "cannot read the Kafka settings file %s: %s", path,
                         strerror(errno));
    while (getline(&line, &cap, f) > 0) {
        char *text = trim(line);
        number++;
        if (!*text || *text == '#')
            continue;
        snprintf(origin, sizeof(origin), "%s:%d", path, number);
        if (add_setting(text, origin, RANK_FILE, errbuf, errlen) < 0)
            goto done;
    }
    if (ferror(f)) {
        tly_error(errbuf, errlen, "cannot read the Kafka settings file %s: %s", path,
                  strerror(errno));
        goto done;
    }
    file_added = 1;
    rc = 0;
done:
    free(line);
    fclose(f);
    return rc;
}

int tly_kconf_add_env(char *errbuf, size_t errlen)
{
    const char *file = getenv("TALLY_KAFKA_CONFIG");
    for (size_t i = 0; i < sizeof(environment) / sizeof(*environment); i++) {
        const char *value = getenv(environment[i].variable);
        char assignment[4096], origin[64];
        if (!value || !*value)
            continue;
        snprintf(assignment, sizeof(assignment), "%s=%s", environment[i].name, value);
        snprintf(origin, sizeof(origin), "$%s", environment[i].variable);
        if (add_setting(assignment, origin, RANK_ENV, errbuf, errlen) < 0)
            return -1;
    }
    if (file && *file && !file_added)
        return tly_kconf_add_file(file, errbuf, errlen);
    return 0;
}

void tly_kconf_reset(void)
{
    for (int i = 0; i < setting_count; i++) {
        free(settings[i].name);
        free(settings[i].value);
    }
    free(settings);
    settings = NULL;
    setting_count = 0;
    file_added = 0;
}

/* The value the user settings give `name` (the last of the highest rank). */
static const char *user_value(const char *name)
{
    const char *found = NULL;
    for (int rank = 0; rank < RANK_COUNT; rank++)
        for (int i = 0; i < setting_count; i++)
            if (settings[i].rank == (enum rank)rank && strcmp(settings[i].name, name) == 0)
                found = settings[i].value;
    return found;
}

const char *tly_kconf_brokers(const char *given)
{
    const char *v;
    if (given && *given)
        return given;
    if ((v = user_value("bootstrap.servers")) && *v)
        return v;
    if ((v = user_value("metadata.broker.list")) && *v)
        return v;
    if ((v = getenv("KAFKA_BROKERS")) && *v)
        return v;
    return NULL;
}

const char *tly_kconf_summary(char *buf, size_t len)
{
    size_t used = 0;
    if (len)
        buf[0] = '\0';
    for (int rank = 0; rank < RANK_COUNT; rank++)
        for (int i = 0; i < setting_count && used < len; i++)
            if (settings[i].rank == (enum rank)rank) {
                int n = snprintf(buf + used, len - used, "%s%s=%s", used ? " " : "",
                                 settings[i].name, shown(settings[i].name, settings[i].value));
                used = n < 0 ? len : used + (size_t)n;
            }
    return buf;
}

rd_kafka_conf_t *tly_kconf_new(const char *brokers, const char *const *defaults,
                               const char *const *required, char *errbuf, size_t errlen)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();

    for (; defaults && defaults[0]; defaults += 2)
        if (tly_kconf_set(conf, defaults[0], defaults[1], errbuf, errlen) < 0)
            goto err;
    for (int rank = 0; rank < RANK_COUNT; rank++)
        for (int i = 0; i < setting_count; i++)
            if (settings[i].rank == (enum rank)rank &&
                set_one(conf, settings[i].name, settings[i].value, settings[i].origin, errbuf,
                        errlen) < 0)
                goto err;
    if (brokers && *brokers &&
        tly_kconf_set(conf, "bootstrap.servers", brokers, errbuf, errlen) < 0)
        goto err;
    for (; required && required[0]; required += 2) {
        /* the owned table refuses these when they are read; a setting this
         * client needs and the table misses must not be overridden silently */
        for (int i = 0; i < setting_count; i++)
            if (strcmp(settings[i].name, required[0]) == 0) {
                tly_error(errbuf, errlen,
                          "%s: %s cannot be set: tally sets it to %s for this client",
                          settings[i].origin, required[0], shown(required[0], required[1]));
                goto err;
            }
        if (tly_kconf_set(conf, required[0], required[1], errbuf, errlen) < 0)
            goto err;
    }
    return conf;
err:
    rd_kafka_conf_destroy(conf);
    return NULL;
}

rd_kafka_t *tly_kconf_client(rd_kafka_type_t type, rd_kafka_conf_t *conf, const char *what,
                             char *errbuf, size_t errlen)
{
    char err[512];
    rd_kafka_t *rk = rd_kafka_new(type, conf, err, sizeof(err));
    if (!rk) {
        /* rd_kafka_new() takes ownership of conf only on success */
        rd_kafka_conf_destroy(conf);
        tly_error(errbuf, errlen, "cannot create %s: %s", what, err);
    }
    return rk;
}

/* ------------------------------------------------------------------------ */
/* Producers                                                                 */
/* ------------------------------------------------------------------------ */

rd_kafka_t *tly_kconf_idempotent_producer(
    const char *brokers, const char *const *defaults, void *opaque,
    void (*on_delivery)(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque),
    void (*on_error)(rd_kafka_t *rk, int err, const char *reason, void *opaque),
    void (*on_log)(const rd_kafka_t *rk, int level, const char *facility, const char *message),
    char *errbuf, size_t errlen)
{
    /* A retry after a lost acknowledgement must not write a message twice. */
    static const char *const required[] = {"enable.idempotence", "true", NULL};
    rd_kafka_conf_t *conf = tly_kconf_new(brokers, defaults, required, errbuf, errlen);

    if (!conf)
        return NULL;
    rd_kafka_conf_set_opaque(conf, opaque);
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rd_kafka_conf_set_error_cb(conf, on_error);
    if (on_log)
        rd_kafka_conf_set_log_cb(conf, on_log);
    return tly_kconf_client(RD_KAFKA_PRODUCER, conf, "the producer", errbuf, errlen);
}

rd_kafka_resp_err_t tly_kconf_produce(rd_kafka_t *rk, rd_kafka_topic_t *rkt, const char *topic,
                                      int32_t partition, const void *key, size_t key_len,
                                      const void *value, size_t value_len,
                                      rd_kafka_headers_t *headers, void *msg_opaque,
                                      const volatile sig_atomic_t *stop)
{
    rd_kafka_resp_err_t err;

    for (;;) {
        if (stop && *stop)
            return RD_KAFKA_RESP_ERR__INTR;
        /* A NULL headers list or opaque, or RD_KAFKA_PARTITION_UA, is what
         * librdkafka assumes when they are left out. */
        if (rkt)
            err = rd_kafka_producev(
                rk, RD_KAFKA_V_RKT(rkt), RD_KAFKA_V_PARTITION(partition),
                RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_KEY(key, key_len),
                RD_KAFKA_V_VALUE((void *)value, value_len), RD_KAFKA_V_HEADERS(headers),
                RD_KAFKA_V_OPAQUE(msg_opaque), RD_KAFKA_V_END);
        else
            err = rd_kafka_producev(
                rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(partition),
                RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_KEY(key, key_len),
                RD_KAFKA_V_VALUE((void *)value, value_len), RD_KAFKA_V_HEADERS(headers),
                RD_KAFKA_V_OPAQUE(msg_opaque), RD_KAFKA_V_END);
        if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL)
            return err;
        rd_kafka_poll(rk, 10);
    }
}

/* ------------------------------------------------------------------------ */
/* The connection check                                                      */
/* ------------------------------------------------------------------------ */

struct check {
    char error[700]; /* what ends the wait at once, with a hint */
    char last[512];  /* the last other error, for the timeout message */
    int mismatches;  /* connections the listener refused for their protocol */
};

static void check_on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    struct check *c = opaque;
    (void)rk;
    if (c->error[0])
        return;
    switch (err) {
    case RD_KAFKA_RESP_ERR__AUTHENTICATION:
        snprintf(c->error, sizeof(c->error),
                 "%s (check sasl.mechanisms, sasl.username and sasl.password)", reason);
        break;
    case RD_KAFKA_RESP_ERR__SSL:
        snprintf(c->error, sizeof(c->error),
                 "%s (check ssl.ca.location, and that security.protocol matches the listener)",
                 reason);
        break;
    default:
        /* A plaintext client talking to a TLS listener sees the connection
         * drop during its first request, and a TLS 1.3 client whose
         * certificate the broker refuses sees the broker's alert on its
         * first read; librdkafka says which. Twice in a row is not a broker
         * that happens to be restarting. */
        if (err == RD_KAFKA_RESP_ERR__TRANSPORT && strstr(reason, "security.protocol") &&
            ++c->mismatches >= 2)
            snprintf(c->error, sizeof(c->error),
                     "%s (check security.protocol: SSL or SASL_SSL for a TLS listener, "
                     "SASL_SSL or SASL_PLAINTEXT where the broker wants authentication)",
                     reason);
        else if (err == RD_KAFKA_RESP_ERR__TRANSPORT && strstr(reason, "SSL routines") &&
                 ++c->mismatches >= 2)
            snprintf(c->error, sizeof(c->error),
                     "%s (the broker ended the TLS session: if it wants a client certificate, "
                     "check ssl.certificate.location, ssl.key.location and ssl.key.password)",
                     reason);
        else
            snprintf(c->last, sizeof(c->last), "%s", reason);
    }
}

static void check_quiet_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    /* the check reports what matters itself */
    (void)rk, (void)level, (void)fac, (void)buf;
}

int tly_kconf_check_cluster(const char *brokers, int timeout_ms, char *errbuf, size_t errlen)
{
    static const char *const defaults[] = {"client.id", "tally-check", NULL};
    struct check c = {"", "", 0};
    rd_kafka_conf_t *conf = tly_kconf_new(brokers, defaults, NULL, errbuf, errlen);
    rd_kafka_t *rk;
    int64_t deadline = tly_clock_mono_ms() + timeout_ms;
    int rc = -1;

    if (!conf)
        return -1;
    rd_kafka_conf_set_opaque(conf, &c);
    rd_kafka_conf_set_error_cb(conf, check_on_error);
    rd_kafka_conf_set_log_cb(conf, check_quiet_log);
    if (!(rk = tly_kconf_client(RD_KAFKA_PRODUCER, conf, "a Kafka client", errbuf, errlen)))
        return -1;
    for (;;) {
        const struct rd_kafka_metadata *md = NULL;
        rd_kafka_resp_err_t err = rd_kafka_metadata(rk, 0, NULL, &md, 200);
        if (!err) {
            rd_kafka_metadata_destroy(md);
            rc = 0;
            break;
        }
        rd_kafka_poll(rk, 0); /* serves check_on_error */
        if (c.error[0]) {
            tly_error(errbuf, errlen, "cannot connect to Kafka at %s: %s", brokers, c.error);
            break;
        }
        if (tly_clock_mono_ms() >= deadline) {
            tly_error(errbuf, errlen, "no Kafka broker at %s answered within %d ms%s%s%s", brokers,
                      timeout_ms, c.last[0] ? " (last error: " : "", c.last, c.last[0] ? ")" : "");
            rc = -2;
            break;
        }
    }
    rd_kafka_destroy(rk);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Readers                                                                   */
/* ------------------------------------------------------------------------ */

rd_kafka_t *tly_kconf_reader(const char *brokers, const char *group_id, char *errbuf, size_t errlen)
{
    return tly_kconf_reader_isolation(brokers, group_id, "read_committed", errbuf, errlen);
}

/* A reader is short-lived and its failures come back from the calls that
 * use it; what librdkafka logs meanwhile (a coordinator connection cut by
 * the reader's own end, say) is for debugging only. */
static void reader_log(const rd_kafka_t *rk, int level, const char *facility, const char *message)
{
    char quoted[1100];
    (void)rk;
    tly_log("debug", "kafka_reader_log", "syslog_level=%d facility=%s message=%s", level, facility,
            tly_log_quote(message, quoted, sizeof(quoted)));
}

rd_kafka_t *tly_kconf_reader_isolation(const char *brokers, const char *group_id,
                                       const char *isolation, char *errbuf, size_t errlen)
{
    /* A reader runs to the end and stops. A partition whose last record is a
     * transaction marker returns no data, and the end-of-partition event
     * waits for the next fetch: with the default 500 ms wait, every recovery
     * paid half a second for nothing.
     * Readers read whole changelog partitions: with the default 1 MiB a
     * partition per fetch, a rebuild of 1M changelog records (250 MB) waited
     * about 250 round trips for the broker. */
    const char *const defaults[] = {"client.id",
                                    "tally-reader",
                                    "fetch.wait.max.ms",
                                    "10",
                                    "max.partition.fetch.bytes",
                                    "33554432",
                                    "fetch.max.bytes",
                                    "67108864",
                                    "queued.max.messages.kbytes",
                                    "262144",
                                    NULL};
    /* librdkafka wants a group.id for any consumer handle; an unused one is
     * harmless as long as nothing subscribes or commits. */
    const char *const required[] = {"group.id",
                                    group_id ? group_id : "tally-reader",
                                    "isolation.level",
                                    isolation,
                                    "enable.auto.commit",
                                    "false",
                                    "enable.partition.eof",
                                    "true",
                                    NULL};
    rd_kafka_conf_t *conf = tly_kconf_new(brokers, defaults, required, errbuf, errlen);
    if (!conf)
        return NULL;
    rd_kafka_conf_set_log_cb(conf, reader_log);
    return tly_kconf_client(RD_KAFKA_CONSUMER, conf, "a Kafka reader", errbuf, errlen);
}

void tly_kconf_drop_log(const rd_kafka_t *rk, int level, const char *facility, const char *message)
{
    (void)rk;
    (void)level;
    (void)facility;
    (void)message;
}

int tly_kconf_topic_exists(rd_kafka_t *rk, const char *brokers, const char *topic, int timeout_ms,
                           char *errbuf, size_t errlen)
{
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t kerr;
    int found = 0;

    if ((kerr = rd_kafka_metadata(rk, 1, NULL, &md, timeout_ms))) {
        snprintf(errbuf, errlen, "cannot read the topic list from %s: %s", brokers,
                 rd_kafka_err2str(kerr));
        return -1;
    }
    for (int i = 0; i < md->topic_cnt; i++)
        if (strcmp(md->topics[i].topic, topic) == 0 &&
            md->topics[i].err != RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
            found = 1;
    rd_kafka_metadata_destroy(md);
    return found;
}
