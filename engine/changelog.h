/* engine/changelog.h - export the changelog, and replay an export.
 *
 * Export format (JSON Lines, one changelog row per line, in seq order):
 *
 *   {"seq":42,"entity":"order_window","key":"s1#p7#1700000040000","key_seq":3,
 *    "image":{"store_id":"s1","product_id":"p7","window_start_ms":1700000040000,
 *             "sum_micros":251130000,"count":3},
 *    "delta":{"sum_micros":83710000,"count":1},"changed_ms":1700000041234}
 *
 *   seq         global change number, strictly increasing, never reused
 *   entity      state table family: "order_window", "vehicle_sensor", "enrich_order",
 *               or "tally.counters" (below)
 *   key         the entity key as text (the Kafka key of the changelog topic)
 *   key_seq     per-key version; 1 is the key's first change
 *   image       the whole state row after the change (the only field replay needs)
 *   delta       the change against the previous image, or null
 *   changed_ms  wall-clock time of the change, epoch milliseconds
 *
 * Replay applies a row only if its key_seq is newer than the key's current one,
 * so replaying an export twice, or overlapping exports, changes nothing. It also
 * copies each row into the target's changelog under its original seq, so the
 * target can be exported again. A row whose seq skips ahead of what the target
 * already holds is a gap: rows are missing and the state may be stale.
 *
 * The daemon also writes one "tally.counters" row per batch and input partition
 * it read from: key "pipeline.<name>.p<N>", part N, key_seq = the sum of the
 * counters (it grows with every batch), image = the partition's event
 * counters in meta after the batch, the input offsets the batch consumed
 * (first, last + 1), the instance that processed it and the input topic
 * (older rows have no "topic"),
 *   {"pipeline.orders.p2.events_applied":1200,"pipeline.orders.p2.events_rejected":3,
 *    "pipeline.orders.p2.events_skipped":0,"pipeline.orders.p2.events_late":0,
 *    "input":[5000,5200],"instance":"tally-1","topic":"orders.enriched"}
 * Replay raises each meta counter to the image's value, and the recorded
 * input position of partition N to the end of "input" (see
 * tly_replayer_record_positions), so the counters and positions of a batch
 * that Kafka committed but the database did not (a crash in between) come
 * back with its state, and a partition taken over by another instance brings
 * its counters and position along. In changelog partition N, read_committed, the
 * "input" ranges follow each other without gap or overlap: each input record
 * was processed once, by one instance.
 *
 *   part        the input partition that made the row (also its changelog
 *               partition in Kafka); null in exports of older databases
 *
 * seq and key_seq are integers from 1 to TLY_CHANGELOG_MAX_SEQ: a line with
 * anything else is a bad line, so the seq after the last one replayed and the
 * next key_seq of a key can never overflow.
 */
#ifndef TLY_CHANGELOG_H
#define TLY_CHANGELOG_H

#include "store.h"

#include <stdint.h>
#include <stdio.h>

/* 2^62 - 1: far beyond any changelog written at any rate, and far enough
 * below INT64_MAX that seq + 1 and key_seq + 1 stay integers. */
#define TLY_CHANGELOG_MAX_SEQ INT64_C(4611686018427387903)

/* Writes every changelog row with seq > since_seq of the database at db_path to
 * out, one per line. Uses its own read-only connection and one read transaction:
 * a consistent cut even while another process writes. progress, if not NULL, is
 * called every 65536 rows with the count so far. Returns the number of rows
 * written, or -1 with errbuf. */
int64_t tly_changelog_export(const char *db_path, int64_t since_seq, FILE *out,
                             void (*progress)(void *ctx, int64_t rows), void *ctx, char *errbuf,
                             size_t errlen);

/* Receives one changelog row: its seq, key, part (-1 if none) and export line (NUL-terminated,
 * borrowed for the call). Returns 0 to go on. */
typedef int (*tly_changelog_row_fn)(void *ctx, int64_t seq, const char *key, size_t key_len,
                                    int part, const char *line, size_t line_len);

/* Passes every row with from_seq < seq <= to_seq, in seq order, to fn, reading
 * on the store's own connection (so inside its open transaction: the daemon
 * mirrors a batch's rows before it commits). Returns 0 or -1 with errbuf. */
int tly_changelog_scan(tly_store *store, int64_t from_seq, int64_t to_seq, tly_changelog_row_fn fn,
                       void *ctx, char *errbuf, size_t errlen);

#define TLY_CHANGELOG_COUNTERS_ENTITY "tally.counters"

/* Appends the "tally.counters" row of input partition `partition` of
 * pipeline `name` (see above) inside the caller's transaction; input_from and
 * input_to are the offsets the batch consumed from it, in `topic`. Returns 0
 * or -1 with errbuf. */
int tly_changelog_record_counters(tly_store *store, const char *name, int partition,
                                  const char *topic, int64_t input_from, int64_t input_to,
                                  const char *instance, char *errbuf, size_t errlen);

/* Sets the pipeline's totals ("pipeline.<name>.events_<x>") to the sum of its
 * per-partition counters, after partitions came or went. Returns 0 or -1. */
int tly_changelog_sum_counters(tly_store *store, const char *name, char *errbuf, size_t errlen);

typedef struct tly_replayer tly_replayer;

typedef struct tly_replay_outcome {
    int changed;      /* 1 if the state moved */
    int64_t seq;      /* the row's seq */
    int64_t gap_from; /* when the row's seq skipped ahead: first missing seq, */
    int64_t gap_to;   /* last missing seq; both 0 when there is no gap */
    int held;         /* 1: the row was not applied because it follows a gap and
                         the replayer stops at gaps */
    int foreign;      /* 1: the row belongs to another entity (see only_entity) */
    int bad_line;     /* on an error: 1 when the line itself was refused (not a
                         changelog row, a field out of range, an unknown entity,
                         an image the state table rejects) and nothing of it was
                         written, so what came before can be committed */
} tly_replay_outcome;

/* Opens the database at db_path for replay (its own connection, triggers off,
 * created and migrated if missing). pipeline_files is a NULL-terminated list of
 * extra pipeline files whose entities may appear, or NULL. Returns 0 and sets
 * *out, or -1 with errbuf. */
int tly_replayer_open(const char *db_path, const char *const *pipeline_files, tly_replayer **out,
                      char *errbuf, size_t errlen);
void tly_replayer_close(tly_replayer *replayer);

/* Replays only rows of `entity` (a copy is kept; NULL = all): other rows are
 * passed over with outcome.foreign = 1. For a changelog topic that several
 * pipelines share. */
int tly_replayer_only_entity(tly_replayer *replayer, const char *entity);

/* Makes a "tally.counters" row of `pipeline` that read `topic` (or does not
 * say which topic) also record where its batch left the input, as the batch
 * did: meta "<key_prefix><N>" (N = the row's input partition) rises to the
 * end of its "input" range. The daemon passes its input position key
 * ("kafka.input.<topic>."), so a state rebuilt from a snapshot and the
 * changelog knows the input positions of every batch it replayed. Copies the
 * strings. Returns 0, or -1 when out of memory. */
int tly_replayer_record_positions(tly_replayer *replayer, const char *pipeline, const char *topic,
                                  const char *key_prefix);

/* With on = 1, a row that follows a gap is not applied (outcome.held = 1), so
 * the caller can commit everything before the gap and stop there. Default 0. */
void tly_replayer_stop_at_gaps(tly_replayer *replayer, int on);

/* The input partition of rows that do not say (exports of older databases):
 * the changelog partition they were read from, say. Default 0. */
void tly_replayer_default_partition(tly_replayer *replayer, int partition);

/* For a rebuild of a target that holds no changelog (a new database): leaves
 * out the secondary indexes of the empty state tables until
 * tly_replayer_finish builds them, once (see tly_store_defer_indexes). Call
 * outside a transaction. Returns how many indexes wait, or -1 with errbuf. */
int tly_replayer_defer_indexes(tly_replayer *replayer, char *errbuf, size_t errlen);

/* Builds the indexes tly_replayer_defer_indexes left out; outside a
 * transaction. tly_replayer_close does too, ignoring errors (the next open of
 * the database retries). Returns 0 or -1 with errbuf. */
int tly_replayer_finish(tly_replayer *replayer, char *errbuf, size_t errlen);

/* The replayer's store, for transactions (borrowed). */
tly_store *tly_replayer_store(tly_replayer *replayer);

/* The highest seq the target held when the replayer opened, plus what it has
 * replayed since. */
int64_t tly_replayer_last_seq(tly_replayer *replayer);

/* Replays one export line. Returns 0 and fills *outcome, or -1 with errbuf for a
 * line that is not a changelog row or names an unknown entity (outcome.bad_line
 * says whether the transaction holds nothing of the line). */
int tly_replayer_apply_line(tly_replayer *replayer, const char *line, size_t len,
                            tly_replay_outcome *outcome, char *errbuf, size_t errlen);

/* The changelog table's upkeep. Rows are appended in seq order, which is
 * also time order.
 *
 * tly_changelog_rows: rows in the table (-1 on an error).
 * tly_changelog_prune_bound: the seq below which rows may go when rows up to
 *   upto_seq are no longer needed but rows changed at or after cutoff_ms are
 *   kept: upto_seq + 1, or the seq of the first row young enough to keep.
 * tly_changelog_prune: deletes at most max_rows of the oldest rows with seq
 *   below `below`, in the caller's transaction or its own statement. Returns
 *   how many, or -1 with errbuf.
 * tly_changelog_max_seq: the highest seq in the table through a plain
 *   connection (0 when empty or on an error). */
int64_t tly_changelog_rows(tly_store *store);
int64_t tly_changelog_prune_bound(tly_store *store, int64_t upto_seq, int64_t cutoff_ms);
int tly_changelog_prune(tly_store *store, int64_t below, int max_rows, char *errbuf, size_t errlen);
int64_t tly_changelog_max_seq(sqlite3 *db);

#endif
