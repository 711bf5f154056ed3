/* adapters/influx/ingest.h - the InfluxDB ingest: telemetry from InfluxDB into
 * Kafka, as the latest values per vehicle (`tally ingest influxdb`).
 *
 * A cycle reads one time range [from, to): for every chunk of it and every
 * pod, one InfluxQL statement (influxql.h has the data model); the readings
 * are folded into the latest value per (VIN, sensor) (latest.h), and one
 * record per VIN is produced, keyed by VIN, through an idempotent producer.
 * The cycle is done only when the broker has acknowledged every record; only
 * then does `from` move to `to`, and the checkpoint file (checkpoint.h)
 * records it. So nothing is skipped:
 *
 *   - a failed query or produce is retried with exponential backoff; after
 *     the last attempt the cycle is abandoned (event=ingest_error) and the
 *     next cycle reads the same range again, extended to the new now;
 *   - a restart resumes from the checkpoint; records of a cycle that was
 *     produced but not yet checkpointed are produced again (at least once:
 *     the output is keyed by VIN and compacted, and the telemetry pipeline
 *     keeps the newest reading, so a repeat changes nothing);
 *   - behind (after an outage, or a checkpoint from long ago), cycles of at
 *     most max_span_ms follow one another without waiting until the range
 *     reaches now again.
 *
 * Within one producer, idempotence keeps librdkafka's own resends from
 * duplicating or reordering a record; a producer that hits a fatal error
 * cannot promise that any more and is replaced, and what it had not
 * delivered is produced again by the next attempt. A stop (the config's
 * flag) abandons a cycle that is reading, but lets one that is producing
 * wait for every delivery report (delivery_timeout_ms at most): the
 * checkpoint never moves past what the broker acknowledged.
 *
 * A range ends settle_ms before now, so points that are still on their way
 * (stamped by the device a moment before InfluxDB stores them) are not
 * passed over.
 *
 * An ingest is used by one thread. The config's strings and arrays, and the
 * map, are borrowed until tly_influx_ingest_free; the stop flag may be set by
 * a signal handler at any time. */
#ifndef TLY_INGEST_H
#define TLY_INGEST_H

#include "influx.h"
#include "influxql.h"
#include "latest.h"
#include "resource_map.h"

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

/* tly_influx_ingest_open's results besides 0 and -1. */
#define TLY_INFLUX_INGEST_BAD_CONFIG (-3) /* a setting that cannot work: fix the config */
#define TLY_INFLUX_INGEST_NO_TOPIC (-4)   /* the broker says the topic does not exist */

typedef struct tly_influx_ingest tly_influx_ingest;

typedef struct tly_influx_ingest_config {
    /* The source: the client (influx.h), where the readings are (device_tag
     * required) and the pods to read, in this order in every chunk. With a
     * map the device tag holds a device id the map translates per pod;
     * without one (NULL) it holds the VIN. */
    tly_influx_options influx;
    tly_influx_model model;
    const char *const *pods;
    size_t pod_count;
    const tly_influx_map *map;
    /* The sink: bootstrap servers (the user settings are kconf.h's) and the
     * output topic, which must exist; delivery_timeout_ms is
     * message.timeout.ms, one record's whole delivery. */
    const char *brokers, *topic;
    int64_t delivery_timeout_ms;
    /* Time. */
    const char *checkpoint_path; /* NULL: none, every start begins lookback_ms ago */
    int64_t lookback_ms;         /* without a checkpoint, the first range starts then */
    int64_t interval_ms;         /* from one cycle's start to the next's, caught up */
    int64_t chunk_ms;            /* one query reads this much of one pod */
    int64_t settle_ms;           /* ranges end this long before now */
    int64_t max_span_ms;         /* the longest range of one cycle */
    int once;                    /* return when caught up (or when a cycle failed) */
    /* Retries of one query, and of a cycle's produce: retry_attempts (>= 1)
     * in all, waits as tly_influx_ingest_backoff_ms says. */
    int64_t retry_attempts, retry_initial_ms, retry_max_ms;
    volatile sig_atomic_t *stop; /* required: non-zero asks the ingest to stop */
} tly_influx_ingest_config;

/* Prepares an ingest without reading anything from InfluxDB. In this order:
 *
 *   - every pod's statement must fit and the client options must be valid:
 *     else TLY_INFLUX_INGEST_BAD_CONFIG with errbuf (nothing was read or
 *     written yet: a mistake in the settings);
 *   - the checkpoint is read: one that cannot be read is -1, never "none";
 *   - the Kafka settings must work: a cluster that refuses them is -1; one
 *     that does not answer is logged (event=kafka) and left to the cycles,
 *     which retry producing;
 *   - the output topic: TLY_INFLUX_INGEST_NO_TOPIC with "topic T does not
 *     exist on B" in errbuf when the broker says it does not exist; when the
 *     broker cannot say, that is logged and the ingest goes on.
 *
 * Any other failure (out of memory, the producer) is -1 with errbuf. On
 * success returns 0 and *ingest; the InfluxDB client watches config->stop
 * from now on. */
int tly_influx_ingest_open(const tly_influx_ingest_config *config, tly_influx_ingest **ingest,
                           char *errbuf, size_t errlen);

/* Runs cycles from the checkpoint (or lookback_ms before now) until the stop
 * flag is set, or with `once` until a range reaches now less settle_ms. Logs
 * event=started first and event=shutdown last, and in between ingest_cycle
 * for every delivered cycle, ingest_retry for every retry and ingest_error
 * for a given-up cycle or a checkpoint that could not be written (which
 * costs a repeat after a restart, not a gap, so the ingest goes on). Returns
 * 0, or -1 when with `once` a cycle was given up (ingest_error said why). */
int tly_influx_ingest_run(tly_influx_ingest *ingest);

/* Closes the producer and the client and frees the ingest. NULL is a no-op. */
void tly_influx_ingest_free(tly_influx_ingest *ingest);

/* ------------------------------------------------------------ the pieces ---
 *
 * Pure steps of the cycle, public so they can be tested without servers. */

/* The range of the next cycle from from_ms at wall time now_ms: *end_ms =
 * now_ms - settle_ms, and *to_ms = *end_ms, or from_ms + max_span_ms when
 * that is earlier (behind: another cycle follows at once). Returns 1 when
 * [from_ms, *to_ms) is not empty, 0 when there is nothing to read yet (the
 * settle time, or a clock that stepped back). */
int tly_influx_ingest_next_range(int64_t from_ms, int64_t now_ms, int64_t settle_ms,
                                 int64_t max_span_ms, int64_t *to_ms, int64_t *end_ms);

typedef struct tly_influx_fold_counts {
    int64_t readings; /* readings added to the latest set */
    int64_t skipped;  /* readings with no VIN: no device tag, or a device the map lacks */
} tly_influx_fold_counts;

/* Adds every reading of one /query answer about `pod` to `latest`, keyed by
 * the VIN: the device tag's value, or with a map the VIN it names for (pod,
 * device). Returns 0 with *counts; or -1 with errbuf for an answer
 * tly_influx_parse refuses, or out of memory, and *counts zero: a partial
 * answer is counted as nothing, but the readings it added stay in `latest`
 * (reading the range again adds them again, which changes nothing). */
int tly_influx_ingest_fold(tly_latest *latest, const tly_influx_map *map, const char *pod,
                           const char *device_tag, const char *body, size_t len,
                           tly_influx_fold_counts *counts, char *errbuf, size_t errlen);

/* The wait after failed attempt `attempt` (1 = the first): initial_ms doubled
 * for each attempt after the first, at most max_ms: 1 s, 2 s, 4 s, ... 30 s.
 * No jitter: a single poller per database has nobody to collide with, and a
 * predictable schedule is easier to read in the logs. */
int64_t tly_influx_ingest_backoff_ms(int attempt, int64_t initial_ms, int64_t max_ms);

#endif
