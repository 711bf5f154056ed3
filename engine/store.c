/* engine/store.c - the state database: open, configure, migrate, meta.
 *
 * Migrations are the files migrations/NNN_name.sql, embedded at build time.
 * Version N is the N-th file; each runs in its own transaction together with
 * "PRAGMA user_version = N", so a crash mid-migration leaves the previous
 * version intact and the next open simply runs it again. */
#include "store.h"

#include "embedded_sql.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The background checkpointer (options.background_checkpoint): the writer's
 * WAL hook wakes the thread once the WAL holds wal_autocheckpoint pages; the
 * thread runs a PASSIVE checkpoint on its own connection, which copies what
 * is committed into the database without blocking the writer (the WAL is
 * reused from its start by the next write after a complete one). Measured
 * draining 2 M orders: the checkpoint was 6% of the daemon's thread. */
struct checkpointer {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    bool started, requested, stopping;
    sqlite3 *db;
    int pages; /* wake it at this many WAL pages */
};

struct tly_store {
    sqlite3 *db;
    char *path;
    sqlite3_stmt *meta_get;
    sqlite3_stmt *meta_set;
    sqlite3_stmt *meta_add;
    struct checkpointer ckpt;
};

static int set_error(char *errbuf, size_t errlen, const char *fmt, const char *a, const char *b)
{
    if (errbuf && errlen)
        snprintf(errbuf, errlen, fmt, a, b);
    return -1;
}

static void *checkpoint_main(void *arg)
{
    struct checkpointer *c = arg;
    pthread_mutex_lock(&c->lock);
    for (;;) {
        while (!c->requested && !c->stopping)
            pthread_cond_wait(&c->wake, &c->lock);
        if (c->stopping)
            break;
        c->requested = false;
        pthread_mutex_unlock(&c->lock);
        /* SQLITE_BUSY (a snapshot's backup or another checkpoint holds the
         * lock) is harmless: the next wake-up tries again. */
        sqlite3_wal_checkpoint_v2(c->db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
        pthread_mutex_lock(&c->lock);
    }
    pthread_mutex_unlock(&c->lock);
    return NULL;
}

/* The writer's WAL hook: runs inside its commit, so it only signals. */
static int on_wal_commit(void *arg, sqlite3 *db, const char *name, int pages)
{
    struct checkpointer *c = arg;
    (void)db, (void)name;
    if (pages >= c->pages) {
        pthread_mutex_lock(&c->lock);
        c->requested = true;
        pthread_cond_signal(&c->wake);
        pthread_mutex_unlock(&c->lock);
    }
    return SQLITE_OK;
}

static int start_checkpointer(tly_store *store, int pages, char *errbuf, size_t errlen)
{
    struct checkpointer *c = &store->ckpt;
    if (sqlite3_open_v2(store->path, &c->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK)
        return set_error(errbuf, errlen, "cannot open %s for checkpoints: %s", store->path,
                         c->db ? sqlite3_errmsg(c->db) : "out of memory");
    sqlite3_busy_timeout(c->db, 1000);
    /* Reading the file makes the connection see WAL mode: until it has, a
     * checkpoint through it does nothing. */
    if (sqlite3_exec(c->db, "PRAGMA journal_mode", NULL, NULL, NULL) != SQLITE_OK)
        return set_error(errbuf, errlen, "cannot open %s for checkpoints: %s", store->path,
                         sqlite3_errmsg(c->db));
    c->pages = pages > 0 ? pages : 1000;
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->wake, NULL);
    if (pthread_create(&c->thread, NULL, checkpoint_main, c) != 0) {
        pthread_mutex_destroy(&c->lock);
        pthread_cond_destroy(&c->wake);
        return set_error(errbuf, errlen, "cannot start the checkpoint thread for %s%s", store->path,
                         "");
    }
    c->started = true;
    /* replaces the automatic checkpoint (the same hook slot) */
    sqlite3_wal_hook(store->db, on_wal_commit, c);
    return 0;
}

static void stop_checkpointer(tly_store *store)
{
    struct checkpointer *c = &store->ckpt;
    if (c->started) {
        sqlite3_wal_hook(store->db, NULL, NULL);
        pthread_mutex_lock(&c->lock);
        c->stopping = true;
        pthread_cond_signal(&c->wake);
        pthread_mutex_unlock(&c->lock);
        pthread_join(c->thread, NULL);
        pthread_mutex_destroy(&c->lock);
        pthread_cond_destroy(&c->wake);
        c->started = false;
    }
    sqlite3_close_v2(c->db);
    c->db = NULL;
}

void tly_store_options_init(tly_store_options *opts)
{
    memset(opts, 0, sizeof(*opts));
    opts->synchronous = "NORMAL";
    opts->busy_timeout_ms = 5000;
    opts->cache_kib = 65536;
    /* 16 KiB pages: measured on the telemetry apply (100k vehicles x 30
     * sensors, `tally ingest`), 4 KiB 8,638 events/s, 8 KiB 9,552, 16 KiB
     * 9,927: fewer b-tree levels and page headers per row, and a vehicle's 30
     * state rows share one page. */
    opts->page_size = 16384;
    opts->wal_autocheckpoint = 2500;
}

int tly_store_latest_schema_version(void)
{
    int n = 0;
    while (tly_embedded_migrations[n].name)
        n++;
    return n;
}

static int user_version(sqlite3 *db)
{
    sqlite3_stmt *stmt = NULL;
    int version = -1;
    if (sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &stmt, NULL) == SQLITE_OK &&
        sqlite3_step(stmt) == SQLITE_ROW)
        version = sqlite3_column_int(stmt, 0);
    sqlite3_finalize(stmt);
    return version;
}

static int migrate(sqlite3 *db, int target, char *errbuf, size_t errlen)
{
    int latest = tly_store_latest_schema_version();
    int current = user_version(db);
    char sql[64];
    char *msg = NULL;

    if (current < 0)
        return set_error(errbuf, errlen, "cannot read schema version: %s%s", sqlite3_errmsg(db),
                         "");
    if (current > latest) {
        char detail[160];
        snprintf(detail, sizeof(detail), "schema version %d, newer than this tally's %d", current,
                 latest);
        return set_error(errbuf, errlen,
                         "database has %s; upgrade tally (or open a copy with the tally "
                         "that wrote it)%s",
                         detail, "");
    }
    for (int v = current + 1; v <= target; v++) {
        const struct tly_embedded_sql *m = &tly_embedded_migrations[v - 1];
        if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, &msg) != SQLITE_OK)
            goto fail;
        if (sqlite3_exec(db, m->text, NULL, NULL, &msg) != SQLITE_OK) {
            sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
            goto fail;
        }
        snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", v);
        if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK ||
            sqlite3_exec(db, "COMMIT", NULL, NULL, &msg) != SQLITE_OK) {
            sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
            goto fail;
        }
        continue;
    fail:
        set_error(errbuf, errlen, "migration %s failed: %s", m->name, msg ? msg : "?");
        sqlite3_free(msg);
        return -1;
    }
    return 0;
}

/* SQLite keeps memory statistics by default, which takes a global mutex on
 * every allocation: measured at about 5% of the telemetry apply. tally reads
 * none of them. Must run before SQLite initializes; if something initialized
 * it first, the call fails harmlessly and the default stays. */
static void configure_sqlite(void)
{
    sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
}

/* Builds again, in one transaction, the indexes a rebuild dropped
 * (tly_store_defer_indexes) and forgets them. Runs on every open, before the
 * migrations (which may expect them), so a rebuild that stopped half way -
 * killed, say - leaves no database without its indexes. */
static int restore_indexes(sqlite3 *db, char *errbuf, size_t errlen)
{
    sqlite3_stmt *stmt = NULL;
    char *msg = NULL;
    int rc;

    /* a new database has no meta table yet, and nothing to restore */
    if (user_version(db) == 0 ||
        tly_store_query_int(
            db, "SELECT count(*) FROM meta WHERE key GLOB '" TLY_DEFERRED_INDEX "*'", 0) == 0)
        return 0;
    if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, &msg) != SQLITE_OK)
        goto fail;
    rc = sqlite3_prepare_v2(db, "SELECT value FROM meta WHERE key GLOB '" TLY_DEFERRED_INDEX "*'",
                            -1, &stmt, NULL);
    while (rc == SQLITE_OK && sqlite3_step(stmt) == SQLITE_ROW)
        rc = sqlite3_exec(db, (const char *)sqlite3_column_text(stmt, 0), NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        if (!msg)
            msg = sqlite3_mprintf("%s", sqlite3_errmsg(db));
        sqlite3_finalize(stmt);
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        goto fail;
    }
    sqlite3_finalize(stmt);
    if (sqlite3_exec(db, "DELETE FROM meta WHERE key GLOB '" TLY_DEFERRED_INDEX "*'", NULL, NULL,
                     &msg) != SQLITE_OK) {
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        goto fail;
    }
    if (sqlite3_exec(db, "COMMIT", NULL, NULL, &msg) != SQLITE_OK)
        goto fail;
    return 0;
fail:
    set_error(errbuf, errlen, "cannot build the indexes a rebuild left out: %s%s",
              msg ? msg : sqlite3_errmsg(db), "");
    sqlite3_free(msg);
    return -1;
}

int tly_store_restore_indexes(tly_store *store, char *errbuf, size_t errlen)
{
    return restore_indexes(store->db, errbuf, errlen);
}

int tly_store_defer_indexes(tly_store *store, char *errbuf, size_t errlen)
{
    sqlite3 *db = store->db;
    sqlite3_stmt *next = NULL, *save = NULL;
    char *msg = NULL, *last = NULL;
    int rc, dropped = 0;

    if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, &msg) != SQLITE_OK)
        goto fail;
    /* One index at a time, the query reset before each drop (a DROP cannot
     * run while sqlite_master is being read). Non-unique indexes only: a
     * unique one decides conflicts; sqlite_master's own (sql NULL) are
     * primary keys and UNIQUE constraints. */
    rc = sqlite3_prepare_v2(db,
                            "SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'index' "
                            "AND sql IS NOT NULL AND sql NOT LIKE 'CREATE UNIQUE%' "
                            "AND tbl_name NOT IN ('changelog', 'meta') AND name > ?1 "
                            "ORDER BY name LIMIT 1",
                            -1, &next, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(db, "INSERT INTO meta (key, value) VALUES (?1, ?2)", -1, &save,
                                NULL);
    while (rc == SQLITE_OK) {
        char *name, *probe, *drop, *key, *create;
        sqlite3_bind_text(next, 1, last ? last : "", -1, SQLITE_TRANSIENT);
        if (sqlite3_step(next) != SQLITE_ROW)
            break;
        name = sqlite3_mprintf("%s", (const char *)sqlite3_column_text(next, 0));
        probe = sqlite3_mprintf("SELECT count(*) FROM (SELECT 1 FROM main.\"%w\" LIMIT 1)",
                                (const char *)sqlite3_column_text(next, 1));
        create = sqlite3_mprintf("%s", (const char *)sqlite3_column_text(next, 2));
        sqlite3_reset(next);
        drop = sqlite3_mprintf("DROP INDEX main.\"%w\"", name);
        key = sqlite3_mprintf(TLY_DEFERRED_INDEX "%s", name);
        /* only an empty table's: a full one's would cost more to build again
         * than it saves */
        if (!name || !probe || !create || !drop || !key) {
            rc = SQLITE_NOMEM;
        } else if (tly_store_query_int(db, probe, 1) == 0) {
            sqlite3_bind_text(save, 1, key, -1, SQLITE_STATIC);
            sqlite3_bind_text(save, 2, create, -1, SQLITE_STATIC);
            rc = sqlite3_step(save) == SQLITE_DONE ? SQLITE_OK : SQLITE_ERROR;
            sqlite3_reset(save);
            if (rc == SQLITE_OK)
                rc = sqlite3_exec(db, drop, NULL, NULL, &msg);
            dropped += rc == SQLITE_OK;
        }
        sqlite3_free(last);
        last = name;
        sqlite3_free(probe);
        sqlite3_free(create);
        sqlite3_free(drop);
        sqlite3_free(key);
    }
    sqlite3_free(last);
    sqlite3_finalize(next);
    sqlite3_finalize(save);
    if (rc != SQLITE_OK) {
        if (!msg)
            msg = sqlite3_mprintf("%s", sqlite3_errmsg(db));
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        goto fail;
    }
    if (sqlite3_exec(db, "COMMIT", NULL, NULL, &msg) != SQLITE_OK)
        goto fail;
    return dropped;
fail:
    set_error(errbuf, errlen, "cannot leave the indexes out: %s%s", msg ? msg : sqlite3_errmsg(db),
              "");
    sqlite3_free(msg);
    return -1;
}

int tly_store_open(const char *path, const tly_store_options *opts, tly_store **out, char *errbuf,
                   size_t errlen)
{
    static pthread_once_t configured = PTHREAD_ONCE_INIT;
    tly_store_options defaults;
    tly_store *store = NULL;
    char pragmas[512];
    char *msg = NULL;
    int target;

    *out = NULL;
    if (!opts) {
        tly_store_options_init(&defaults);
        opts = &defaults;
    }
    if (strcmp(opts->synchronous, "OFF") && strcmp(opts->synchronous, "NORMAL") &&
        strcmp(opts->synchronous, "FULL"))
        return set_error(errbuf, errlen, "synchronous must be OFF, NORMAL or FULL, not \"%s\"%s",
                         opts->synchronous, "");
    pthread_once(&configured, configure_sqlite);
    store = calloc(1, sizeof(*store));
    if (!store || !(store->path = strdup(path))) {
        set_error(errbuf, errlen, "out of memory%s%s", "", "");
        goto err;
    }
    if (sqlite3_open_v2(path, &store->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK) {
        set_error(errbuf, errlen, "cannot open %s: %s", path,
                  store->db ? sqlite3_errmsg(store->db) : "out of memory");
        goto err;
    }
    sqlite3_extended_result_codes(store->db, 1);
    sqlite3_busy_timeout(store->db, opts->busy_timeout_ms);
    /* journal_mode is the first statement that reads the file, so "file is not a
     * database" surfaces here. page_size and auto_vacuum only take on a new
     * database (before its first table): INCREMENTAL lets the daemon give the pages of a pruned
     * changelog back (PRAGMA incremental_vacuum), so snapshots, which copy every
     * page, stay the size of the state. */
    snprintf(pragmas, sizeof(pragmas),
             "PRAGMA page_size = %d; PRAGMA auto_vacuum = INCREMENTAL; PRAGMA journal_mode = WAL; "
             "PRAGMA synchronous = %s; PRAGMA temp_store = MEMORY; PRAGMA cache_size = -%lld; "
             "PRAGMA foreign_keys = OFF; PRAGMA wal_autocheckpoint = %d;",
             opts->page_size, opts->synchronous, (long long)opts->cache_kib,
             opts->wal_autocheckpoint);
    if (sqlite3_exec(store->db, pragmas, NULL, NULL, &msg) != SQLITE_OK) {
        set_error(errbuf, errlen, "cannot open %s: %s", path, msg ? msg : "?");
        sqlite3_free(msg);
        goto err;
    }
    target = opts->migrate_to > 0 ? opts->migrate_to : tly_store_latest_schema_version();
    if (restore_indexes(store->db, errbuf, errlen) < 0 ||
        migrate(store->db, target, errbuf, errlen) < 0)
        goto err;
    /* Must come before any statement is prepared: triggers are compiled into
     * statements when they are prepared. */
    if (opts->disable_triggers &&
        sqlite3_db_config(store->db, SQLITE_DBCONFIG_ENABLE_TRIGGER, 0, NULL) != SQLITE_OK) {
        set_error(errbuf, errlen, "cannot disable triggers on %s: %s", path,
                  sqlite3_errmsg(store->db));
        goto err;
    }
    if (sqlite3_prepare_v3(store->db, "SELECT value FROM meta WHERE key = ?1", -1,
                           SQLITE_PREPARE_PERSISTENT, &store->meta_get, NULL) != SQLITE_OK ||
        sqlite3_prepare_v3(store->db,
                           "INSERT INTO meta (key, value) VALUES (?1, ?2) "
                           "ON CONFLICT DO UPDATE SET value = excluded.value",
                           -1, SQLITE_PREPARE_PERSISTENT, &store->meta_set, NULL) != SQLITE_OK ||
        sqlite3_prepare_v3(store->db,
                           "INSERT INTO meta (key, value) VALUES (?1, ?2) "
                           "ON CONFLICT DO UPDATE SET value = value + excluded.value",
                           -1, SQLITE_PREPARE_PERSISTENT, &store->meta_add, NULL) != SQLITE_OK) {
        set_error(errbuf, errlen, "cannot prepare meta statements in %s: %s", path,
                  sqlite3_errmsg(store->db));
        goto err;
    }
    if (opts->background_checkpoint &&
        start_checkpointer(store, opts->wal_autocheckpoint, errbuf, errlen) < 0)
        goto err;
    *out = store;
    return 0;
err:
    tly_store_close(store);
    return -1;
}

void tly_store_close(tly_store *store)
{
    if (!store)
        return;
    sqlite3_finalize(store->meta_get);
    sqlite3_finalize(store->meta_set);
    sqlite3_finalize(store->meta_add);
    stop_checkpointer(store);
    sqlite3_close_v2(store->db);
    free(store->path);
    free(store);
}

sqlite3 *tly_store_db(tly_store *store)
{
    return store->db;
}
const char *tly_store_path(tly_store *store)
{
    return store->path;
}
int tly_store_schema_version(tly_store *store)
{
    return user_version(store->db);
}

int tly_store_exec(tly_store *store, const char *sql, char *errbuf, size_t errlen)
{
    char *msg = NULL;
    if (sqlite3_exec(store->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        set_error(errbuf, errlen, "%s%s", msg ? msg : sqlite3_errmsg(store->db), "");
        sqlite3_free(msg);
        return -1;
    }
    return 0;
}

int tly_store_begin(tly_store *store, char *errbuf, size_t errlen)
{
    return tly_store_exec(store, "BEGIN IMMEDIATE", errbuf, errlen);
}

int tly_store_commit(tly_store *store, char *errbuf, size_t errlen)
{
    return tly_store_exec(store, "COMMIT", errbuf, errlen);
}

void tly_store_rollback(tly_store *store)
{
    if (!sqlite3_get_autocommit(store->db))
        sqlite3_exec(store->db, "ROLLBACK", NULL, NULL, NULL);
}

static int meta_get(tly_store *store, const char *key, sqlite3_stmt **row)
{
    int rc;
    sqlite3_reset(store->meta_get);
    sqlite3_bind_text(store->meta_get, 1, key, -1, SQLITE_STATIC);
    rc = sqlite3_step(store->meta_get);
    *row = store->meta_get;
    if (rc == SQLITE_ROW)
        return 1;
    sqlite3_reset(store->meta_get);
    return rc == SQLITE_DONE ? 0 : -1;
}

int tly_store_meta_get_int(tly_store *store, const char *key, int64_t *value)
{
    sqlite3_stmt *row;
    int rc = meta_get(store, key, &row);
    if (rc == 1) {
        *value = sqlite3_column_int64(row, 0);
        sqlite3_reset(row);
    }
    return rc;
}

int tly_store_meta_get_text(tly_store *store, const char *key, char *buf, size_t buflen)
{
    sqlite3_stmt *row;
    int rc = meta_get(store, key, &row);
    if (rc == 1) {
        const unsigned char *text = sqlite3_column_text(row, 0);
        snprintf(buf, buflen, "%s", text ? (const char *)text : "");
        sqlite3_reset(row);
    }
    return rc;
}

static int meta_write(tly_store *store, sqlite3_stmt *stmt, const char *key)
{
    int rc;
    sqlite3_bind_text(stmt, 1, key, -1, SQLITE_STATIC);
    rc = sqlite3_step(stmt);
    sqlite3_reset(stmt);
    (void)store;
    return rc == SQLITE_DONE ? 0 : -1;
}

int tly_store_meta_set_int(tly_store *store, const char *key, int64_t value)
{
    sqlite3_bind_int64(store->meta_set, 2, value);
    return meta_write(store, store->meta_set, key);
}

int tly_store_meta_set_text(tly_store *store, const char *key, const char *value)
{
    sqlite3_bind_text(store->meta_set, 2, value, -1, SQLITE_TRANSIENT);
    return meta_write(store, store->meta_set, key);
}

int tly_store_meta_add_int(tly_store *store, const char *key, int64_t delta)
{
    sqlite3_bind_int64(store->meta_add, 2, delta);
    return meta_write(store, store->meta_add, key);
}

int64_t tly_store_last_seq(tly_store *store)
{
    sqlite3_stmt *stmt = NULL;
    int64_t seq = 0;
    if (sqlite3_prepare_v2(store->db, "SELECT seq FROM sqlite_sequence WHERE name = 'changelog'",
                           -1, &stmt, NULL) == SQLITE_OK &&
        sqlite3_step(stmt) == SQLITE_ROW)
        seq = sqlite3_column_int64(stmt, 0);
    sqlite3_finalize(stmt);
    return seq;
}

int64_t tly_store_vacuum_step(tly_store *store, int pages, char *errbuf, size_t errlen)
{
    sqlite3_stmt *stmt = NULL;
    char sql[64];
    int64_t left = -1;

    snprintf(sql, sizeof(sql), "PRAGMA incremental_vacuum(%d)", pages);
    if (sqlite3_exec(store->db, sql, NULL, NULL, NULL) != SQLITE_OK)
        return set_error(errbuf, errlen, "%s%s", sqlite3_errmsg(store->db), "");
    if (sqlite3_prepare_v2(store->db, "PRAGMA freelist_count", -1, &stmt, NULL) == SQLITE_OK &&
        sqlite3_step(stmt) == SQLITE_ROW)
        left = sqlite3_column_int64(stmt, 0);
    else
        set_error(errbuf, errlen, "%s%s", sqlite3_errmsg(store->db), "");
    sqlite3_finalize(stmt);
    return left;
}

int64_t tly_store_query_int(sqlite3 *db, const char *sql, int64_t fallback)
{
    sqlite3_stmt *stmt = NULL;
    int64_t v = fallback;
    if (db && sqlite3_prepare_v2(db, sql, -1, &stmt, NULL) == SQLITE_OK &&
        sqlite3_step(stmt) == SQLITE_ROW)
        v = sqlite3_column_int64(stmt, 0);
    sqlite3_finalize(stmt);
    return v;
}
