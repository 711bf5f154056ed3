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
/* Records per SQLite transaction during replay. Each commit writes every page
 * the records dirtied, and records of random keys dirty most of the state:
 * on 1M new keys (tally replay), 10000 a commit took 7.35 s, 50000 5.85 s,
 * 200000 5.39 s. */
#define REPLAY_COMMIT_EVERY 200000

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
    /* partitions whose offset moved since it was last written to meta: the
     * offsets are written once per SQLite transaction, just before its
     * commit (recovery_replay_commit), not once per record */
    unsigned char moved[TLY_MAX_PARTITIONS];
};

/* Writes the changelog offsets the open transaction moved to meta, then
 * commits it, so offsets and rows commit together and a replay cut short
 * resumes where it stopped. Returns 0 or -1 with errbuf. */
int recovery_replay_commit(struct replay_ctx *c, char *errbuf, size_t errlen);

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
