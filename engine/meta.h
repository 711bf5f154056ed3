/* engine/meta.h - the meta table's keys: the one place they are spelled.
 *
 * meta (migrations/001_core.sql) is a key/value table written in the same
 * transaction as the state it describes. Every key, its value and its writer:
 *
 *   kafka.input.<topic>.<p>        int   the next offset of input partition p that
 *                                        the state has not applied (the daemon's
 *                                        batch commit; a changelog replay raises it)
 *   kafka.changelog.<topic>.<p>    int   the last offset of changelog partition p
 *                                        the state holds (batch commit, replay, a
 *                                        partition taken over from a snapshot)
 *   pipeline.<name>.events_<kind>  int   events applied / skipped / rejected / late:
 *                                        the sum over the partitions held
 *                                        (engine/pipeline.c, engine/changelog.c)
 *   pipeline.<name>.p<p>.events_<kind>
 *                                  int   the same for input partition p
 *   pipeline.<name>.<param>        any   a @param setting in effect (pipeline.c)
 *   pipeline.<name>.@state         text  the @state schema the database was built
 *                                        with (engine/derive.c): another is refused
 *   recovery.source, .snapshot     text  the last recovery: where the state came
 *   recovery.ttr_ms, .records_replayed, .bytes_replayed, .at_ms, .count
 *                                  int   from, how long it took, how much it read
 *   tally.instance                 text  the instance that writes this database
 *                                        (snapshots name it)
 *   state.rows_moved               int   state rows whose events came from more
 *                                        than one input partition (the triggers)
 *   ingest.<name>.<path>           text  how far `tally ingest` of the file at the
 *                                        absolute path applied pipeline <name>:
 *                                        {"offset":BYTES,"line":N,"fingerprint":HEX}
 *                                        (adapters/cli/cli_ingest.c, in each
 *                                        batch's transaction)
 *
 * The builders below write a key into buf (truncated to len, always
 * terminated); the readers take a plain connection so that tools which open a
 * database read-only (recovery's checks, the demo) need no tly_store. */
#ifndef TLY_META_H
#define TLY_META_H

#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>

/* Input partitions a database can record: partition numbers 0..255. */
#define TLY_MAX_PARTITIONS 256

#define TLY_META_INSTANCE "tally.instance"
#define TLY_META_ROWS_MOVED "state.rows_moved"

/* What a position key counts: the input consumed, or the changelog held. */
typedef enum { TLY_META_INPUT, TLY_META_CHANGELOG } tly_meta_position;

/* kafka.input.<topic>.<p> or kafka.changelog.<topic>.<p>. */
void tly_meta_key_position(tly_meta_position kind, const char *topic, int partition, char *buf,
                           size_t len);
/* The same key without its partition number: "kafka.input.<topic>." */
void tly_meta_key_position_prefix(tly_meta_position kind, const char *topic, char *buf, size_t len);
/* pipeline.<name>.events_<kind> (kind: "applied", "skipped", "rejected", "late"). */
void tly_meta_key_events(const char *pipeline, const char *kind, char *buf, size_t len);
/* pipeline.<name>.@state */
void tly_meta_key_state(const char *pipeline, char *buf, size_t len);
/* ingest.<name>.<path> (path absolute). */
void tly_meta_key_ingest(const char *pipeline, const char *path, char *buf, size_t len);
/* A GLOB over every pipeline's per-partition counters of partition p:
 * "pipeline.*.p<p>.events_*". */
void tly_meta_glob_partition_counters(int partition, char *buf, size_t len);

/* Reads every kafka.<kind>.<topic>.<p> key: offsets[p] = its value for each
 * p < TLY_MAX_PARTITIONS found (others are left as they are). Returns how
 * many were found, or -1 when db has no meta table (not a tally database). */
int tly_meta_read_positions(sqlite3 *db, tly_meta_position kind, const char *topic,
                            int64_t *offsets);

/* Whether db has applied anything: an input position recorded for any topic
 * or a changelog seq ever assigned. 1 yes, 0 no, -1 not a tally database
 * (errbuf). */
int tly_meta_has_history(sqlite3 *db, char *errbuf, size_t errlen);

/* Whether any input position is recorded (any topic): 1, 0, or -1. */
int tly_meta_has_positions(sqlite3 *db);

/* An integer value by key through a plain connection: 1 and *value when the
 * key exists, 0 when it does not, -1 on an error. */
int tly_meta_get_int(sqlite3 *db, const char *key, int64_t *value);

#endif
