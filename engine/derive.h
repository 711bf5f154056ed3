/* engine/derive.h - what a pipeline file with @state and @fold does not spell:
 * the changelog, the batch merge, the replay and the default emit.
 *
 * A user pipeline declares its state table (@state, a CREATE TABLE with a
 * PRIMARY KEY) and the statement that folds one valid event into it (@fold).
 * The engine derives the rest from the table's columns and primary key:
 *
 *   install  the first open on a database runs @state, adds two columns the
 *            engine keeps on every state row (key_seq: the row's version;
 *            part: the input partition whose event changed it last, see
 *            migrations/008_partitions.sql), and a trigger that appends a
 *            changelog row whenever key_seq moves. The @state text is
 *            recorded in meta (pipeline.<name>.@state); a later open whose
 *            @state differs is refused, never migrated.
 *   marks    while @fold runs, SQLite's preupdate hook marks each key it
 *            inserts or updates, with the event's input partition; a row
 *            INSERT OR REPLACE deletes keeps its version (its key_seq is
 *            carried over to the new row)
 *   merge    per batch: each changed key's key_seq goes up by one, so the
 *            trigger writes one changelog row per changed key per batch (an
 *            after-image of the whole row, keyed by the primary key columns
 *            joined with '#'), however many events touched it
 *   replay   applies one after-image when its key_seq is newer than the row's
 *   emit     each changed row's after-image, keyed as in the changelog
 *
 * @fold is checked when it is prepared: it may write the state table only
 * (insert or update; a delete would never reach the changelog), never its
 * primary key columns (the old key would stay in the changelog), the
 * engine's tables, key_seq or part. */
#ifndef TLY_DERIVE_H
#define TLY_DERIVE_H

#include "store.h"

#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>

typedef struct tly_marks tly_marks;

typedef struct tly_derived {
    char *table; /* the state table's name */
    char **keys; /* its primary key columns, nkeys of them */
    int nkeys;
    int *key_cids;    /* their column indexes in the table */
    int key_seq_cid;  /* key_seq's */
    int part;         /* the partition of the event @fold runs for */
    tly_marks *marks; /* the keys @fold changed since the last merge */
    sqlite3_stmt *mark_stmt;
    char *setup_sql;  /* per connection (temporary objects) */
    char *mark_sql;   /* one marked key into the temporary table */
    char *merge_sql;  /* per batch, after tly_derive_stage_marks */
    char *replay_sql; /* :image, :key_seq, :partition */
    char *emit_sql;   /* :from_seq, :to_seq */
} tly_derived;

/* Installs (first open) or checks (later opens) the @state schema of
 * pipeline `pipeline` on store, and fills *out. entity names the changelog
 * rows. source and state_line (the line @state starts on) name the place in
 * errors: "FILE:LINE: what is wrong". Returns 0, or -1 with errbuf. */
int tly_derive(tly_store *store, const char *pipeline, const char *entity, const char *source,
               int state_line, const char *state_sql, tly_derived *out, char *errbuf,
               size_t errlen);

/* The one table @state creates (*table, malloc'd), found by running it on a
 * scratch database; checks @state as tly_derive does. Returns 0, or -1 with
 * errbuf. */
int tly_derive_state_table(const char *source, int state_line, const char *state_sql, char **table,
                           char *errbuf, size_t errlen);

/* Frees what tly_derive filled; a zeroed struct is fine. */
void tly_derived_free(tly_derived *d);

/* Runs d->setup_sql on db and prepares what tly_derive_stage_marks needs
 * (tly_derived_free frees it). Returns 0, or -1 with errbuf. */
int tly_derive_register(sqlite3 *db, tly_derived *d, char *errbuf, size_t errlen);

/* Around one event's @fold statements: while they run, each key of the state
 * table they insert, update or replace is marked, with `part`. */
void tly_derive_fold_begin(sqlite3 *db, tly_derived *d, int part);
void tly_derive_fold_end(sqlite3 *db);

/* Writes the marked keys into the temporary table merge_sql reads and
 * forgets them. Returns SQLITE_DONE or the SQLite error code. */
int tly_derive_stage_marks(tly_derived *d);

/* Forgets the marks (their changes were rolled back). */
void tly_derive_forget_marks(tly_derived *d);

/* Prepares one @fold statement (from *tail, which it advances like
 * sqlite3_prepare_v3) and refuses a write outside d->table, or to key_seq or
 * part. *stmt is NULL when only comments were left. Returns 0, or -1 with
 * errbuf ("what is wrong" only: the caller adds file and line). */
int tly_derive_prepare_fold(sqlite3 *db, const tly_derived *d, const char **tail,
                            sqlite3_stmt **stmt, char *errbuf, size_t errlen);

#endif
