/* engine/meta.c - see meta.h. */
#include "meta.h"

#include <stdio.h>
#include <string.h>

static const char *kind_name(tly_meta_position kind)
{
    return kind == TLY_META_INPUT ? "input" : "changelog";
}

void tly_meta_key_position(tly_meta_position kind, const char *topic, int partition, char *buf,
                           size_t len)
{
    snprintf(buf, len, "kafka.%s.%s.%d", kind_name(kind), topic, partition);
}

void tly_meta_key_position_prefix(tly_meta_position kind, const char *topic, char *buf, size_t len)
{
    snprintf(buf, len, "kafka.%s.%s.", kind_name(kind), topic);
}

void tly_meta_key_events(const char *pipeline, const char *kind, char *buf, size_t len)
{
    snprintf(buf, len, "pipeline.%s.events_%s", pipeline, kind);
}

void tly_meta_key_state(const char *pipeline, char *buf, size_t len)
{
    snprintf(buf, len, "pipeline.%s.@state", pipeline);
}

void tly_meta_key_ingest(const char *pipeline, const char *path, char *buf, size_t len)
{
    snprintf(buf, len, "ingest.%s.%s", pipeline, path);
}

void tly_meta_glob_partition_counters(int partition, char *buf, size_t len)
{
    snprintf(buf, len, "pipeline.*.p%d.events_*", partition);
}

int tly_meta_read_positions(sqlite3 *db, tly_meta_position kind, const char *topic,
                            int64_t *offsets)
{
    sqlite3_stmt *stmt = NULL;
    char prefix[512];
    int found = 0;

    tly_meta_key_position_prefix(kind, topic, prefix, sizeof(prefix));
    /* A topic name may hold '_' and '%', so a prefix compare, not LIKE. The
     * rest of the key must be all digits: "kafka.input.a." must not read the
     * keys of a topic "a.b". */
    if (sqlite3_prepare_v2(db,
                           "SELECT CAST(substr(key, length(?1) + 1) AS INTEGER), value FROM meta "
                           "WHERE substr(key, 1, length(?1)) = ?1 "
                           "  AND substr(key, length(?1) + 1) NOT GLOB '*[^0-9]*' "
                           "  AND length(key) > length(?1)",
                           -1, &stmt, NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_text(stmt, 1, prefix, -1, SQLITE_STATIC);
    while (sqlite3_step(stmt) == SQLITE_ROW) {
        int64_t p = sqlite3_column_int64(stmt, 0);
        if (p >= 0 && p < TLY_MAX_PARTITIONS) {
            offsets[p] = sqlite3_column_int64(stmt, 1);
            found++;
        }
    }
    sqlite3_finalize(stmt);
    return found;
}

int tly_meta_has_positions(sqlite3 *db)
{
    sqlite3_stmt *stmt = NULL;
    int rc = -1;
    if (sqlite3_prepare_v2(db, "SELECT EXISTS (SELECT 1 FROM meta WHERE key LIKE 'kafka.input.%')",
                           -1, &stmt, NULL) == SQLITE_OK &&
        sqlite3_step(stmt) == SQLITE_ROW)
        rc = sqlite3_column_int(stmt, 0) ? 1 : 0;
    sqlite3_finalize(stmt);
    return rc;
}

int tly_meta_has_history(sqlite3 *db, char *errbuf, size_t errlen)
{
    sqlite3_stmt *stmt = NULL;
    int rc = -1;
    if (sqlite3_prepare_v2(db,
                           "SELECT EXISTS (SELECT 1 FROM meta WHERE key LIKE 'kafka.input.%')"
                           "    OR coalesce((SELECT seq FROM sqlite_sequence"
                           "                 WHERE name = 'changelog'), 0) > 0",
                           -1, &stmt, NULL) != SQLITE_OK ||
        sqlite3_step(stmt) != SQLITE_ROW)
        snprintf(errbuf, errlen, "not a tally database: %s", sqlite3_errmsg(db));
    else
        rc = sqlite3_column_int(stmt, 0) ? 1 : 0;
    sqlite3_finalize(stmt);
    return rc;
}

int tly_meta_get_int(sqlite3 *db, const char *key, int64_t *value)
{
    sqlite3_stmt *stmt = NULL;
    int rc = -1, step;
    if (sqlite3_prepare_v2(db, "SELECT value FROM meta WHERE key = ?1", -1, &stmt, NULL) !=
        SQLITE_OK)
        return -1;
    sqlite3_bind_text(stmt, 1, key, -1, SQLITE_STATIC);
    step = sqlite3_step(stmt);
    if (step == SQLITE_ROW) {
        *value = sqlite3_column_int64(stmt, 0);
        rc = 1;
    } else if (step == SQLITE_DONE) {
        rc = 0;
    }
    sqlite3_finalize(stmt);
    return rc;
}
