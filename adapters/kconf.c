/* adapters/kconf.c - librdkafka configuration with tally's error reporting. */
#include "kconf.h"

#include "error.h"

int tly_kconf_set(rd_kafka_conf_t *conf, const char *name, const char *value, char *errbuf,
                  size_t errlen)
{
    char err[256];
    if (rd_kafka_conf_set(conf, name, value, err, sizeof(err)) != RD_KAFKA_CONF_OK)
        return tly_error(errbuf, errlen, "kafka setting %s=%s: %s", name, value, err);
    return 0;
}

rd_kafka_t *tly_kconf_reader(const char *brokers, const char *group_id, char *errbuf,
                             size_t errlen)
{
    return tly_kconf_reader_isolation(brokers, group_id, "read_committed", errbuf, errlen);
}

rd_kafka_t *tly_kconf_reader_isolation(const char *brokers, const char *group_id,
                                       const char *isolation, char *errbuf, size_t errlen)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char err[512];
    rd_kafka_t *rk;

    /* librdkafka wants a group.id for any consumer handle; an unused one is
     * harmless as long as nothing subscribes or commits. */
    if (tly_kconf_set(conf, "bootstrap.servers", brokers, errbuf, errlen) < 0 ||
        tly_kconf_set(conf, "group.id", group_id ? group_id : "tally-reader", errbuf, errlen) < 0 ||
        tly_kconf_set(conf, "isolation.level", isolation, errbuf, errlen) < 0 ||
        tly_kconf_set(conf, "enable.auto.commit", "false", errbuf, errlen) < 0 ||
        tly_kconf_set(conf, "enable.partition.eof", "true", errbuf, errlen) < 0 ||
        /* A reader runs to the end and stops. A partition whose last record is
         * a transaction marker returns no data, and the end-of-partition
         * event waits for the next fetch: with the default 500 ms wait, every
         * recovery paid half a second for nothing. */
        tly_kconf_set(conf, "fetch.wait.max.ms", "10", errbuf, errlen) < 0) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    if (!(rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err)))) {
        rd_kafka_conf_destroy(conf);
        tly_error(errbuf, errlen, "cannot create a Kafka reader: %s", err);
        return NULL;
    }
    return rk;
}
