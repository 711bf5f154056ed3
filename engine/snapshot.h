/* engine/snapshot.h - consistent copies of the state database.
 *
 * A snapshot is written from its own connection inside one read transaction,
 * with SQLite's online backup API, so the writer is never blocked; the
 * changelog offsets recorded in the manifest are read in that same transaction,
 * so snapshot and manifest always agree. See snapshot.c for the file and
 * manifest layout. Thread-safe as long as each call has its own arguments. */
#ifndef TLY_SNAPSHOT_H
#define TLY_SNAPSHOT_H

#include "store.h"

#include <stddef.h>
#include <stdint.h>

typedef struct tly_snapshot_manifest {
    char snapshot_id[64];
    char path[4096];
    int64_t last_seq;
    char changelog_offsets[2048]; /* JSON object {"<topic>.<partition>": offset} */
    int64_t created_ms;
    int64_t bytes;
    char checksum[17];  /* FNV-1a 64, 16 lowercase hex digits */
    char database[256]; /* file name of the source database, e.g. "orders.db"
                           (empty in manifests written before it existed) */
    char instance[128]; /* the daemon instance that wrote it (meta
                           "tally.instance"; empty offline and in older ones) */
} tly_snapshot_manifest;

/* Writes a snapshot of the database at db_path into dir (created if missing):
 * dir/snapshot-<id>.db and its manifest dir/snapshot-<id>.json, both written
 * under temporary names, fsynced and renamed, then records the manifest in the
 * database's snapshots table and deletes all but the newest `keep` snapshots
 * (keep <= 0: keep all). The copy must pass SQLite's quick_check before it is
 * renamed: a damaged database fails the snapshot and prunes nothing. Returns
 * 0 and fills *manifest, or -1 with errbuf (SQLite's own reason); no
 * temporary file (the copy, its journal, the manifest) is left behind. */
int tly_snapshot_write(const char *db_path, const char *dir, int keep,
                       tly_snapshot_manifest *manifest, char *errbuf, size_t errlen);

/* The two halves of tly_snapshot_write, for a writer that copies on one
 * thread and records on another: tly_snapshot_copy writes the files (only
 * reads the database); tly_snapshot_record inserts the manifest into the
 * snapshots table through `store` (the caller's connection: no second writer
 * to wait for the first) and keeps the newest `keep`. */
int tly_snapshot_copy(const char *db_path, const char *dir, tly_snapshot_manifest *manifest,
                      char *errbuf, size_t errlen);
int tly_snapshot_record(tly_store *store, int keep, const tly_snapshot_manifest *manifest,
                        char *errbuf, size_t errlen);

/* Writes the manifest as one line of JSON (the layout in snapshot.c) into buf.
 * Returns its length, or -1 if buflen is too small (8192 always suffices). */
int tly_snapshot_manifest_json(const tly_snapshot_manifest *manifest, char *buf, size_t buflen);

/* Reads the manifest file at json_path. Returns 0 or -1 with errbuf. */
int tly_snapshot_read_manifest(const char *json_path, tly_snapshot_manifest *manifest, char *errbuf,
                               size_t errlen);

/* qsort order of manifests, newest first: by createdAt, then lastSeq, then id. */
int tly_snapshot_newer_first(const tly_snapshot_manifest *a, const tly_snapshot_manifest *b);

/* Parses a manifest from len bytes of JSON (a <prefix>-snapshots record).
 * Returns 0 or -1 with errbuf. */
int tly_snapshot_parse_manifest(const char *json, size_t len, tly_snapshot_manifest *manifest,
                                char *errbuf, size_t errlen);

/* Reads every manifest file (snapshot-*.json) in dir into a malloc'ed array the
 * caller frees, in no particular order; unreadable manifests are left out. A
 * missing dir is an empty list. Returns 0 or -1 with errbuf. */
int tly_snapshot_list(const char *dir, tly_snapshot_manifest **out, int *count, char *errbuf,
                      size_t errlen);

/* The manifests the database at db_path recorded in its snapshots table
 * (tly_snapshot_record), into a malloc'ed array the caller frees; `database`
 * is set to the file name of db_path. A database that cannot be opened or has
 * no such table is an empty list. Returns 0 or -1 (out of memory, errbuf). */
int tly_snapshot_list_recorded(const char *db_path, tly_snapshot_manifest **out, int *count,
                               char *errbuf, size_t errlen);

/* last_seq of the newest snapshot recorded in the store's snapshots table,
 * 0 when none. */
int64_t tly_snapshot_newest_recorded(tly_store *store);

/* Checks the snapshot file against its manifest: size, checksum, and SQLite's
 * own integrity check. Returns 0 if it verifies, -1 with errbuf saying why not. */
int tly_snapshot_verify(const tly_snapshot_manifest *manifest, char *errbuf, size_t errlen);

/* Copies a verified snapshot to new_db_path (which must not exist), fsynced.
 * Returns 0 or -1 with errbuf. */
int tly_snapshot_restore(const tly_snapshot_manifest *manifest, const char *new_db_path,
                         char *errbuf, size_t errlen);

#endif
