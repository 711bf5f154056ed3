/* adapters/kafka/topics.h - a pipeline's Kafka topics, and creating them.
 *
 * Every pipeline has an input and an output topic and three internal ones named
 * after --topic-prefix: <prefix>-changelog (compacted: the latest image per state
 * key), <prefix>-snapshots (compacted: the newest snapshot manifest) and
 * <prefix>-dlq (delete: every rejected event, once). Internal topics have the
 * input's partition count. */
#ifndef TLY_TOPICS_H
#define TLY_TOPICS_H

#include <stddef.h>

enum {
    TLY_TOPIC_INPUT = 1,
    TLY_TOPIC_OUTPUT = 2,
    TLY_TOPIC_CHANGELOG = 4,
    TLY_TOPIC_SNAPSHOTS = 8,
    TLY_TOPIC_DLQ = 16,
    TLY_TOPIC_INTERNAL = TLY_TOPIC_CHANGELOG | TLY_TOPIC_SNAPSHOTS | TLY_TOPIC_DLQ,
    TLY_TOPIC_ALL = 31,
};

typedef struct tly_topic_spec {
    char name[256];
    const char *cleanup_policy; /* "compact" or "delete" */
} tly_topic_spec;

typedef struct tly_topic_layout {
    tly_topic_spec input, output, changelog, snapshots, dlq;
} tly_topic_layout;

/* Fills layout for pipeline "orders", "telemetry" or "enrich", or the
 * pipeline file at that path (a name with a '/' or ending in ".sql"). input
 * and output may be NULL for the pipeline's defaults (orders: orders.enriched
 * -> orders.output; telemetry: sensor-service.dispatch.telemetry-aggregated ->
 * sensor-service.dispatch.telemetry-latest-compacted; enrich: orders ->
 * orders.enriched, whose output is a stream: cleanup.policy delete; a
 * pipeline file: its @input and @output, else <name>.input (delete) ->
 * <name>.output (compact: the latest record per key)). Returns 0, or -1 with
 * errbuf for an unknown pipeline, a pipeline file that cannot be read or a
 * name that is not a valid topic name. */
int tly_topics_layout(const char *pipeline, const char *prefix, const char *input,
                      const char *output, tly_topic_layout *layout, char *errbuf, size_t errlen);

/* Creates the topics of layout selected by `which` (TLY_TOPIC_* bits) that do
 * not exist, with their cleanup.policy, through the Admin API. The input gets
 * `partitions` partitions if it must be created (<= 0: 1); the others get the
 * input's partition count. A topic that exists with a compatible configuration
 * is left alone; one whose cleanup.policy or (internal topics) partition count
 * differs is an error that says what differs. *created (may be NULL) gets the
 * number of topics created. Returns 0, or -1 with errbuf. */
int tly_topics_ensure(const char *brokers, const tly_topic_layout *layout, unsigned which,
                      int partitions, int timeout_ms, int *created, char *errbuf, size_t errlen);

#endif
