/* adapters/kafka/recovery_int.h - what recovery.c (a whole database at
 * start) and takeover.c (one partition at a time, while running) share:
 * reading a topic to its end (readback.c) and applying changelog records.
 * Not an interface: recovery.h is. */
#ifndef TLY_RECOVERY_INT_H
#define TLY_RECOVERY_INT_H

#include "recovery.h"

#include "changelog.h"

#include <librdkafka/rdkafka.h>
#include <stdbool.h>

#define KAFKA_TIMEOUT_MS 30000
#define REPLAY_COMMIT_EVERY 50000 /* records per SQLite transaction during replay */

typedef int (*message_fn)(void *ctx, const rd_kafka_message_t *m, char *errbuf, size_t errlen);

/* The replay of changelog records into a database (or a dry run). */
struct replay_ctx {
    const tly_recovery_config *cfg;
    const char *entity;
    tly_recovery_report *rep;
    tly_replayer *replayer; /* NULL in a dry run */
    int64_t *offsets;
    int64_t in_txn;             /* records in the open SQLite transaction */
    int64_t *partition_records; /* per partition, or NULL */
};

rd_kafka_resp_err_t recovery_query_watermarks(rd_kafka_t *rk, const char *topic, int partition,
                                              bool unknown_is_new, int64_t *low, int64_t *high);
void recovery_offsets_from_manifest(const tly_snapshot_manifest *m, const char *topic,
                                    int64_t *offsets);
int recovery_read_to_end(const tly_recovery_config *cfg, const char *topic, const int64_t *after,
                         const unsigned char *only, int64_t *end_out, int *partitions_out,
                         message_fn fn, void *ctx, char *errbuf, size_t errlen);
int recovery_on_changelog_record(void *ctx, const rd_kafka_message_t *m, char *errbuf,
                                 size_t errlen);
int recovery_open_replayer(const tly_recovery_config *cfg, const char *entity,
                           tly_replayer **replayer, char *errbuf, size_t errlen);
void recovery_locate_file(const tly_recovery_config *cfg, tly_snapshot_manifest *m);

#endif
