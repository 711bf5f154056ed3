/* engine/partitions.h - which input partitions a database holds, and moving
 * one partition's state in or out.
 *
 * A per-partition state table is any table with a `part` column other than
 * changelog and partitions (migrations/008_partitions.sql): its rows belong to
 * the input partition whose events made them. A database holds partition p
 * when it has any of: p's rows, p's changelog offset in meta, p's row in the
 * partitions table. The partitions table lists what the daemon took over
 * (columns documented in 008_partitions.sql).
 *
 * Functions that change rows run inside the caller's transaction unless they
 * say otherwise; they take a tly_store, or a plain connection where a caller
 * only reads a database it opened read-only. */
#ifndef TLY_PARTITIONS_H
#define TLY_PARTITIONS_H

#include "meta.h"
#include "store.h"

#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>

/* The partitions table, as the daemon writes it when it has taken one over. */
typedef struct tly_partition_row {
    int partition;
    int64_t since_ms;    /* wall clock, epoch ms */
    const char *source;  /* "local", "snapshot", "changelog" or "new" */
    int64_t recovery_ms; /* how long bringing it up to date took */
    int64_t records;     /* changelog records replayed for it */
} tly_partition_row;

/* Marks held[p] = 1 for each partition the partitions table lists (held has
 * TLY_MAX_PARTITIONS entries, cleared first). Returns how many; 0 also when
 * db has no partitions table. */
int tly_partitions_listed(sqlite3 *db, unsigned char *held);

/* Rows of the partitions table (-1 on an error). */
int64_t tly_partitions_count(tly_store *store);

/* Empties the partitions table (its own statement; autocommit outside a
 * transaction). Returns 0 or -1 with errbuf. */
int tly_partitions_reset(tly_store *store, char *errbuf, size_t errlen);

/* Inserts or replaces rows[0..count). Returns 0 or -1 with errbuf. */
int tly_partitions_record(tly_store *store, const tly_partition_row *rows, int count, char *errbuf,
                          size_t errlen);

/* present[p] = 1 for each partition the database holds anything of (its rows,
 * its changelog offset for changelog_topic, its partitions row). Returns 0 or
 * -1 with errbuf. */
int tly_partitions_present(tly_store *store, const char *changelog_topic, unsigned char *present,
                           char *errbuf, size_t errlen);

/* Deletes everything of partition p: its rows in every per-partition table,
 * its input position (input_topic) and changelog offset (changelog_topic),
 * its counters and its partitions row. Inside the caller's transaction.
 * Returns 0 or -1 with errbuf. */
int tly_partitions_forget(tly_store *store, int partition, const char *input_topic,
                          const char *changelog_topic, char *errbuf, size_t errlen);

/* Replaces partition p's state with the snapshot file's (snapshot_path, a
 * database of the same schema version): its rows of every per-partition
 * table, its counters and its input position (input_topic), and records that
 * the partition now stands at changelog offset `offset`. Attaches the file, runs its own
 * transaction, detaches. Rows are copied as they are: a store whose triggers are on would record
 * them as new changes, so the caller passes a replayer's store (its triggers are off). Returns 0,
 * or -1 with errbuf (nothing changed). */
int tly_partitions_adopt(tly_store *store, const char *snapshot_path, int partition,
                         const char *input_topic, const char *changelog_topic, int64_t offset,
                         char *errbuf, size_t errlen);

#endif
