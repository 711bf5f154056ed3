/* engine/partitions.c - see partitions.h. */
#include "partitions.h"
#include "error.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

/* The per-partition state tables: every table with a `part` column but the
 * changelog (replayed, never copied) and the partitions table itself. Each
 * row: the table, its columns quoted and comma-separated. */
#define PARTITIONED_TABLES                                                                         \
    "SELECT m.name, (SELECT group_concat('\"' || c.name || '\"', ', ') "                           \
    "                FROM pragma_table_info(m.name) AS c) "                                        \
    "FROM sqlite_schema AS m "                                                                     \
    "WHERE m.type = 'table' AND m.name NOT IN ('changelog', 'partitions') "                        \
    "  AND EXISTS (SELECT 1 FROM pragma_table_info(m.name) AS c WHERE c.name = 'part')"

/* Runs sql_template (%1$s: a per-partition table's name, %2$s and %3$s: its
 * columns) once per per-partition table, with ?1 bound to partition. */
static int each_partitioned_table(sqlite3 *db, const char *sql_template, int partition,
                                  char *errbuf, size_t errlen)
{
    sqlite3_stmt *tables = NULL;
    int rc = -1, step;

    if (sqlite3_prepare_v2(db, PARTITIONED_TABLES, -1, &tables, NULL) != SQLITE_OK) {
        tly_error(errbuf, errlen, "cannot list the state tables: %s", sqlite3_errmsg(db));
        goto done;
    }
    while ((step = sqlite3_step(tables)) == SQLITE_ROW) {
        char sql[4096];
        sqlite3_stmt *stmt = NULL;
        const char *name = (const char *)sqlite3_column_text(tables, 0);
        const char *columns = (const char *)sqlite3_column_text(tables, 1);
        snprintf(sql, sizeof(sql), sql_template, name, columns, columns);
        if (sqlite3_prepare_v2(db, sql, -1, &stmt, NULL) != SQLITE_OK) {
            tly_error(errbuf, errlen, "%s: %s", name, sqlite3_errmsg(db));
            goto done;
        }
        sqlite3_bind_int(stmt, 1, partition);
        step = sqlite3_step(stmt);
        sqlite3_finalize(stmt);
        if (step != SQLITE_DONE) {
            tly_error(errbuf, errlen, "%s: %s", name, sqlite3_errmsg(db));
            goto done;
        }
    }
    if (step != SQLITE_DONE) {
        tly_error(errbuf, errlen, "cannot list the state tables: %s", sqlite3_errmsg(db));
        goto done;
    }
    rc = 0;
done:
    sqlite3_finalize(tables);
    return rc;
}

/* Steps stmt, marking in present[] each partition its first column names;
 * returns how many were new. */
static int mark_partitions(sqlite3_stmt *stmt, unsigned char *present)
{
    int n = 0;
    while (sqlite3_step(stmt) == SQLITE_ROW) {
        int p = sqlite3_column_int(stmt, 0);
        if (p >= 0 && p < TLY_MAX_PARTITIONS && !present[p]) {
            present[p] = 1;
            n++;
        }
    }
    return n;
}

int tly_partitions_listed(sqlite3 *db, unsigned char *held)
{
    sqlite3_stmt *stmt = NULL;
    int n = 0;

    memset(held, 0, TLY_MAX_PARTITIONS);
    if (sqlite3_prepare_v2(db, "SELECT part FROM partitions", -1, &stmt, NULL) == SQLITE_OK)
        n = mark_partitions(stmt, held);
    sqlite3_finalize(stmt);
    return n;
}

int64_t tly_partitions_count(tly_store *store)
{
    return tly_store_query_int(tly_store_db(store), "SELECT count(*) FROM partitions", -1);
}

int tly_partitions_reset(tly_store *store, char *errbuf, size_t errlen)
{
    sqlite3 *db = tly_store_db(store);
    if (sqlite3_exec(db, "DELETE FROM partitions", NULL, NULL, NULL) != SQLITE_OK)
        return tly_error(errbuf, errlen, "cannot reset the partitions table: %s",
                         sqlite3_errmsg(db));
    return 0;
}

int tly_partitions_record(tly_store *store, const tly_partition_row *rows, int count, char *errbuf,
                          size_t errlen)
{
    sqlite3 *db = tly_store_db(store);
    sqlite3_stmt *stmt = NULL;
    int rc = -1;

    if (sqlite3_prepare_v2(
            db,
            "INSERT OR REPLACE INTO partitions (part, since_ms, source, recovery_ms, "
            "records) VALUES (?1, ?2, ?3, ?4, ?5)",
            -1, &stmt, NULL) != SQLITE_OK) {
        tly_error(errbuf, errlen, "cannot record the partitions: %s", sqlite3_errmsg(db));
        goto done;
    }
    for (int i = 0; i < count; i++) {
        sqlite3_bind_int(stmt, 1, rows[i].partition);
        sqlite3_bind_int64(stmt, 2, rows[i].since_ms);
        sqlite3_bind_text(stmt, 3, rows[i].source, -1, SQLITE_STATIC);
        sqlite3_bind_int64(stmt, 4, rows[i].recovery_ms);
        sqlite3_bind_int64(stmt, 5, rows[i].records);
        if (sqlite3_step(stmt) != SQLITE_DONE) {
            tly_error(errbuf, errlen, "cannot record partition %d: %s", rows[i].partition,
                      sqlite3_errmsg(db));
            goto done;
        }
        sqlite3_reset(stmt);
    }
    rc = 0;
done:
    sqlite3_finalize(stmt);
    return rc;
}

int tly_partitions_present(tly_store *store, const char *changelog_topic, unsigned char *present,
                           char *errbuf, size_t errlen)
{
    sqlite3 *db = tly_store_db(store);
    sqlite3_stmt *tables = NULL, *stmt = NULL;
    int64_t offsets[TLY_MAX_PARTITIONS];
    int rc = -1;

    memset(present, 0, TLY_MAX_PARTITIONS);
    /* positions, partitions rows, counters; then the rows themselves */
    for (int p = 0; p < TLY_MAX_PARTITIONS; p++)
        offsets[p] = -1;
    if (tly_meta_read_positions(db, TLY_META_CHANGELOG, changelog_topic, offsets) < 0)
        goto failed;
    for (int p = 0; p < TLY_MAX_PARTITIONS; p++)
        if (offsets[p] != -1)
            present[p] = 1;
    if (sqlite3_prepare_v2(db, "SELECT part FROM partitions", -1, &stmt, NULL) != SQLITE_OK)
        goto failed;
    mark_partitions(stmt, present);
    sqlite3_finalize(stmt);
    stmt = NULL;
    if (sqlite3_prepare_v2(db, PARTITIONED_TABLES, -1, &tables, NULL) != SQLITE_OK)
        goto failed;
    while (sqlite3_step(tables) == SQLITE_ROW) {
        char sql[512];
        /* an index on part makes this a skip over its distinct values */
        snprintf(sql, sizeof(sql), "SELECT DISTINCT part FROM \"%s\"",
                 sqlite3_column_text(tables, 0));
        if (sqlite3_prepare_v2(db, sql, -1, &stmt, NULL) != SQLITE_OK)
            goto failed;
        mark_partitions(stmt, present);
        sqlite3_finalize(stmt);
        stmt = NULL;
    }
    rc = 0;
    goto done;
failed:
    tly_error(errbuf, errlen, "cannot list the partitions held: %s", sqlite3_errmsg(db));
done:
    sqlite3_finalize(stmt);
    sqlite3_finalize(tables);
    return rc;
}

/* Runs sql with ?1..?3 bound to the given texts (NULL: unbound). */
static int run_bound(sqlite3 *db, const char *sql, const char *a, const char *b, const char *c,
                     char *errbuf, size_t errlen)
{
    sqlite3_stmt *stmt = NULL;
    const char *args[] = {a, b, c};
    int step;

    if (sqlite3_prepare_v2(db, sql, -1, &stmt, NULL) != SQLITE_OK)
        return tly_error(errbuf, errlen, "%s", sqlite3_errmsg(db));
    for (int i = 0; i < 3; i++)
        if (args[i])
            sqlite3_bind_text(stmt, i + 1, args[i], -1, SQLITE_STATIC);
    step = sqlite3_step(stmt);
    sqlite3_finalize(stmt);
    if (step != SQLITE_DONE)
        return tly_error(errbuf, errlen, "%s", sqlite3_errmsg(db));
    return 0;
}

int tly_partitions_forget(tly_store *store, int partition, const char *input_topic,
                          const char *changelog_topic, char *errbuf, size_t errlen)
{
    sqlite3 *db = tly_store_db(store);
    char changelog_key[512], input_key[512], counters[200], number[32];

    if (each_partitioned_table(db, "DELETE FROM \"%s\" WHERE part = ?1", partition, errbuf,
                               errlen) < 0)
        return -1;
    tly_meta_key_position(TLY_META_CHANGELOG, changelog_topic, partition, changelog_key,
                          sizeof(changelog_key));
    tly_meta_key_position(TLY_META_INPUT, input_topic, partition, input_key, sizeof(input_key));
    tly_meta_glob_partition_counters(partition, counters, sizeof(counters));
    snprintf(number, sizeof(number), "%d", partition);
    if (run_bound(db, "DELETE FROM meta WHERE key IN (?1, ?2) OR key GLOB ?3", changelog_key,
                  input_key, counters, errbuf, errlen) < 0 ||
        run_bound(db, "DELETE FROM partitions WHERE part = CAST(?1 AS INTEGER)", number, NULL, NULL,
                  errbuf, errlen) < 0)
        return -1;
    return 0;
}

/* PRAGMA <schema>.user_version, or -1. */
static int user_version(sqlite3 *db, const char *schema)
{
    sqlite3_stmt *stmt = NULL;
    char sql[64];
    int v = -1;
    snprintf(sql, sizeof(sql), "PRAGMA %s.user_version", schema);
    if (sqlite3_prepare_v2(db, sql, -1, &stmt, NULL) == SQLITE_OK &&
        sqlite3_step(stmt) == SQLITE_ROW)
        v = sqlite3_column_int(stmt, 0);
    sqlite3_finalize(stmt);
    return v;
}

int tly_partitions_adopt(tly_store *store, const char *snapshot_path, int partition,
                         const char *input_topic, const char *changelog_topic, int64_t offset,
                         char *errbuf, size_t errlen)
{
    sqlite3 *db = tly_store_db(store);
    char key[512], counters[200];
    bool attached = false, in_txn = false;
    int rc = -1, ours, theirs;

    if (run_bound(db, "ATTACH ?1 AS snap", snapshot_path, NULL, NULL, errbuf, errlen) < 0)
        goto done;
    attached = true;
    /* The same migrations, or the columns would not line up. */
    ours = user_version(db, "main");
    theirs = user_version(db, "snap");
    if (ours < 0 || theirs < 0) {
        tly_error(errbuf, errlen, "%s", sqlite3_errmsg(db));
        goto done;
    }
    if (ours != theirs) {
        tly_error(errbuf, errlen, "schema version %d, this database has %d", theirs, ours);
        goto done;
    }
    if (tly_store_begin(store, errbuf, errlen) < 0)
        goto done;
    in_txn = true;
    tly_meta_glob_partition_counters(partition, counters, sizeof(counters));
    if (tly_partitions_forget(store, partition, input_topic, changelog_topic, errbuf, errlen) < 0 ||
        each_partitioned_table(db,
                               "INSERT INTO main.\"%1$s\" (%2$s) SELECT %3$s FROM snap.\"%1$s\" "
                               "WHERE part = ?1",
                               partition, errbuf, errlen) < 0 ||
        run_bound(db,
                  "INSERT INTO main.meta (key, value) SELECT key, value FROM snap.meta "
                  "WHERE key GLOB ?1",
                  counters, NULL, NULL, errbuf, errlen) < 0)
        goto done;
    /* The snapshot's input position comes with its rows: when no changelog
     * follows the snapshot, nothing else would bring it back. */
    tly_meta_key_position(TLY_META_INPUT, input_topic, partition, key, sizeof(key));
    if (run_bound(db,
                  "INSERT OR REPLACE INTO main.meta (key, value) SELECT key, value FROM snap.meta "
                  "WHERE key = ?1",
                  key, NULL, NULL, errbuf, errlen) < 0)
        goto done;
    tly_meta_key_position(TLY_META_CHANGELOG, changelog_topic, partition, key, sizeof(key));
    if (tly_store_meta_set_int(store, key, offset) < 0) {
        tly_error(errbuf, errlen, "%s", sqlite3_errmsg(db));
        goto done;
    }
    if (tly_store_commit(store, errbuf, errlen) < 0)
        goto done;
    in_txn = false;
    rc = 0;
done:
    if (in_txn)
        tly_store_rollback(store);
    if (attached)
        sqlite3_exec(db, "DETACH snap", NULL, NULL, NULL);
    return rc;
}
