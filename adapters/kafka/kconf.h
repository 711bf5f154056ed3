/* adapters/kafka/kconf.h - every librdkafka configuration tally makes.
 *
 * One place builds the configuration of every Kafka client tally creates
 * (the daemon's group consumer and transactional producer, the idempotent
 * producers of produce / publish / ingest influxdb, the admin client, the
 * assign-only readers of recovery, the demo's clients), so a user's
 * settings reach all of them. A client's configuration is, later wins:
 *
 *   1. tally's defaults for that client (linger.ms, client.id, ...)
 *   2. environment fallbacks: KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_MECHANISM,
 *      KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD, KAFKA_SSL_CA_LOCATION,
 *      TALLY_KAFKA_DEBUG (debug)
 *   3. --kafka-config FILE (or $TALLY_KAFKA_CONFIG): librdkafka properties,
 *      one `name=value` per line, `#` starts a comment line, blank lines and
 *      the whitespace around name and value are ignored
 *   4. -X name=value, in the order given
 *   5. bootstrap.servers: --brokers when given, else -X's or the file's
 *      bootstrap.servers, else $KAFKA_BROKERS (tly_kconf_brokers)
 *   6. the settings tally owns for correctness (isolation.level,
 *      transactional.id, ...): a user setting of one of them is refused when
 *      it is read, with the reason, never silently overridden.
 *
 * A property librdkafka does not know, or a value it refuses, fails when it
 * is read, with librdkafka's message and where it came from (FILE:LINE, -X,
 * or the environment variable). Secret values (passwords, secrets, private
 * keys) never appear in a message tally prints: they read "[redacted]".
 *
 * The user settings are process-wide: the CLI adds them once, before any
 * client exists; they must not change while clients are being made. */
#ifndef TLY_KCONF_H
#define TLY_KCONF_H

#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>

/* Adds one user setting "name=value". origin says where it came from
 * ("-X", "FILE:LINE") for messages. Returns 0, or -1 with errbuf for a
 * malformed assignment, a property tally owns, or one librdkafka refuses. */
int tly_kconf_add(const char *assignment, const char *origin, char *errbuf, size_t errlen);

/* Adds every setting of a properties file (format above). Returns 0, or -1
 * with errbuf naming FILE:LINE. */
int tly_kconf_add_file(const char *path, char *errbuf, size_t errlen);

/* Adds the environment fallbacks, and $TALLY_KAFKA_CONFIG unless a file was
 * added. Call once, after the flags. Returns 0 or -1 with errbuf. */
int tly_kconf_add_env(char *errbuf, size_t errlen);

/* Forgets every user setting (tests). */
void tly_kconf_reset(void);

/* The bootstrap servers to use: `given` (--brokers), else the user
 * settings' bootstrap.servers, else $KAFKA_BROKERS, else NULL. */
const char *tly_kconf_brokers(const char *given);

/* The user settings as "name=value name=value ..." with secrets redacted,
 * for a log line; "" when there are none. */
const char *tly_kconf_summary(char *buf, size_t len);

/* Whether a property's value is a secret (never printed). */
int tly_kconf_is_secret(const char *name);

/* A new configuration: `defaults` (name, value pairs, NULL-terminated; may
 * be NULL), then the user settings, then bootstrap.servers = brokers (if not
 * NULL), then `required` (the same shape), which a user setting may not
 * override. Returns the conf (the caller passes it to tly_kconf_client or
 * destroys it), or NULL with errbuf. */
rd_kafka_conf_t *tly_kconf_new(const char *brokers, const char *const *defaults,
                               const char *const *required, char *errbuf, size_t errlen);

/* rd_kafka_new() of `conf`, which it takes ownership of in every case.
 * `what` names the client in the error ("the producer"). Returns the
 * handle, or NULL with errbuf. */
rd_kafka_t *tly_kconf_client(rd_kafka_type_t type, rd_kafka_conf_t *conf, const char *what,
                             char *errbuf, size_t errlen);

/* Sets name=value on conf. Returns 0, or -1 with errbuf naming the setting
 * (its value redacted if secret). */
int tly_kconf_set(rd_kafka_conf_t *conf, const char *name, const char *value, char *errbuf,
                  size_t errlen);

/* An idempotent producer (enable.idempotence=true, which a user setting may
 * not change): `defaults` as for tly_kconf_new, then the user settings and
 * brokers. Its callbacks: opaque is the opaque of all three, on_delivery gets
 * every message's delivery report, on_error librdkafka's errors (a fatal one
 * included); on_log NULL leaves librdkafka's own logging to stderr. Returns
 * the handle, or NULL with errbuf ("cannot create the producer: ..."). */
rd_kafka_t *tly_kconf_idempotent_producer(
    const char *brokers, const char *const *defaults, void *opaque,
    void (*on_delivery)(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque),
    void (*on_error)(rd_kafka_t *rk, int err, const char *reason, void *opaque),
    void (*on_log)(const rd_kafka_t *rk, int level, const char *facility, const char *message),
    char *errbuf, size_t errlen);

/* A log callback that drops librdkafka's own log lines, for clients whose
 * error callback already reports what those lines would repeat in
 * librdkafka's format. */
void tly_kconf_drop_log(const rd_kafka_t *rk, int level, const char *facility, const char *message);

/* Whether `topic` exists on the cluster rk is connected to (brokers names it
 * in the error): 1 yes, 0 no, -1 when the broker cannot say (errbuf). Reads
 * the list of all topics: a request naming this one could make a broker with
 * auto.create.topics.enable create it with the wrong settings. */
int tly_kconf_topic_exists(rd_kafka_t *rk, const char *brokers, const char *topic, int timeout_ms,
                           char *errbuf, size_t errlen);

/* Queues one message on producer rk, waiting while librdkafka's local queue
 * is full (RD_KAFKA_RESP_ERR__QUEUE_FULL: the broker takes less than is
 * sent). Each wait serves rk's callbacks for up to 10 ms: the delivery
 * reports served are what free room in the queue, and rd_kafka_poll returns
 * as soon as it has served one, so the bound only sets how often a stop is
 * looked at while nothing arrives.
 *
 *   rkt, topic  the topic: the handle rkt when not NULL, else the topic named
 *               `topic` (librdkafka looks the name up on every call)
 *   partition   RD_KAFKA_PARTITION_UA: the topic's partitioner picks one by key
 *   key, value  copied (RD_KAFKA_MSG_F_COPY): the caller may reuse its buffers
 *               as soon as this returns
 *   headers     NULL, or a list that librdkafka owns once the message is
 *               queued; on any error the caller still owns it and destroys it
 *   msg_opaque  the delivery report's msg->_private
 *   stop        NULL, or a flag looked at before every attempt: once it is
 *               non-zero nothing more is tried
 *
 * Returns RD_KAFKA_RESP_ERR_NO_ERROR once queued, RD_KAFKA_RESP_ERR__INTR when
 * *stop was set first (not queued), or the error librdkafka gave (not queued;
 * RD_KAFKA_RESP_ERR__FATAL once an idempotent producer has failed fatally). */
rd_kafka_resp_err_t tly_kconf_produce(rd_kafka_t *rk, rd_kafka_topic_t *rkt, const char *topic,
                                      int32_t partition, const void *key, size_t key_len,
                                      const void *value, size_t value_len,
                                      rd_kafka_headers_t *headers, void *msg_opaque,
                                      const volatile sig_atomic_t *stop);

/* Connects to the cluster once with the user settings and fails fast when it
 * cannot: bad credentials, a TLS handshake that fails (untrusted CA, TLS
 * against a plaintext port) or a plaintext client against a TLS port end the
 * wait at once, with librdkafka's message and a hint; brokers that are
 * simply unreachable are waited for up to timeout_ms. Returns 0 when a
 * broker answered a metadata request, -1 with errbuf when the settings
 * cannot work, -2 with errbuf when no broker answered in time. */
int tly_kconf_check_cluster(const char *brokers, int timeout_ms, char *errbuf, size_t errlen);

/* A consumer that only reads by assign() (no group membership, no commits):
 * read_committed, partition EOF reported. group_id is only used for offset
 * lookups (rd_kafka_committed) and may be NULL. Returns the handle, or NULL
 * with errbuf. */
rd_kafka_t *tly_kconf_reader(const char *brokers, const char *group_id, char *errbuf,
                             size_t errlen);

/* The same with another isolation.level ("read_uncommitted" sees the high
 * watermark, not the last stable offset). */
rd_kafka_t *tly_kconf_reader_isolation(const char *brokers, const char *group_id,
                                       const char *isolation, char *errbuf, size_t errlen);

#endif
