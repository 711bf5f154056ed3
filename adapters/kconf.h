/* adapters/kconf.h - librdkafka configuration with tally's error reporting. */
#ifndef TLY_KCONF_H
#define TLY_KCONF_H

#include <librdkafka/rdkafka.h>
#include <stddef.h>

/* Sets name=value on conf. Returns 0, or -1 with errbuf naming the setting. */
int tly_kconf_set(rd_kafka_conf_t *conf, const char *name, const char *value, char *errbuf,
                  size_t errlen);

/* A consumer that only reads by assign() (no group membership, no commits):
 * bootstrap.servers = brokers, read_committed, partition EOF reported.
 * group_id is only used for offset lookups (rd_kafka_committed) and may be
 * NULL. Returns the handle, or NULL with errbuf. */
rd_kafka_t *tly_kconf_reader(const char *brokers, const char *group_id, char *errbuf,
                             size_t errlen);

/* The same with another isolation.level ("read_uncommitted" sees the high
 * watermark, not the last stable offset). */
rd_kafka_t *tly_kconf_reader_isolation(const char *brokers, const char *group_id,
                                       const char *isolation, char *errbuf, size_t errlen);

#endif
