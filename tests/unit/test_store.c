/* tests/unit/test_store.c - open, WAL, migrations, version guard, meta. */
#include "tly_test.h"

#include "store.h"

#include <unistd.h>

#include <sys/stat.h>

#include <sqlite3.h>
#include <stdint.h>

static char *path_in(const char *dir, const char *name)
{
    static char buf[8][256];
    static int next;
    char *p = buf[next++ % 8];
    snprintf(p, 256, "%s/%s", dir, name);
    return p;
}

static int raw_exec(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    int rc = sqlite3_open(path, &db) == SQLITE_OK &&
             sqlite3_exec(db, sql, NULL, NULL, NULL) == SQLITE_OK;
    sqlite3_close(db);
    return rc ? 0 : -1;
}

static void test_open_creates_wal_database(void)
{
    const char *dir = tly_test_dir();
    char *path = path_in(dir, "state.db"), err[256], mode[32] = "";
    tly_store *store = NULL;
    sqlite3_stmt *stmt = NULL;

    CHECK_MSG(tly_store_open(path, NULL, &store, err, sizeof(err)) == 0, "%s", err);
    CHECK_INT(tly_store_schema_version(store), tly_store_latest_schema_version());
    CHECK(tly_store_latest_schema_version() >= 3);
    CHECK(sqlite3_prepare_v2(tly_store_db(store), "PRAGMA journal_mode", -1, &stmt, NULL) ==
          SQLITE_OK);
    CHECK(sqlite3_step(stmt) == SQLITE_ROW);
    snprintf(mode, sizeof(mode), "%s", sqlite3_column_text(stmt, 0));
    CHECK_STR(mode, "wal");
    sqlite3_finalize(stmt);
    stmt = NULL;
    CHECK(sqlite3_prepare_v2(tly_store_db(store), "PRAGMA synchronous", -1, &stmt, NULL) ==
          SQLITE_OK);
    CHECK(sqlite3_step(stmt) == SQLITE_ROW);
    CHECK_INT(sqlite3_column_int(stmt, 0), 1); /* NORMAL */
    CHECK_INT(tly_store_last_seq(store), 0);
    /* The stable views exist. */
    CHECK(tly_store_exec(store,
                         "SELECT store_id, product_id, window_start, sum, count FROM order_windows;"
                         "SELECT vin, received_at, record FROM vehicle_latest;",
                         err, sizeof(err)) == 0);
    /* Reopening an up-to-date database changes nothing. */
    sqlite3_finalize(stmt);
    stmt = NULL;
    tly_store_close(store);
    store = NULL;
    CHECK_MSG(tly_store_open(path, NULL, &store, err, sizeof(err)) == 0, "%s", err);
    CHECK_INT(tly_store_schema_version(store), tly_store_latest_schema_version());
end:
    sqlite3_finalize(stmt);
    tly_store_close(store);
}

static void test_synchronous_option(void)
{
    const char *dir = tly_test_dir();
    char *path = path_in(dir, "sync.db"), err[256] = "";
    tly_store_options opts;
    tly_store *store = NULL;

    tly_store_options_init(&opts);
    opts.synchronous = "SOMETIMES";
    CHECK(tly_store_open(path, &opts, &store, err, sizeof(err)) < 0);
    CHECK(store == NULL);
    CHECK(strstr(err, "OFF, NORMAL or FULL") != NULL);
    opts.synchronous = "FULL";
    CHECK_MSG(tly_store_open(path, &opts, &store, err, sizeof(err)) == 0, "%s", err);
end:
    tly_store_close(store);
}

static void test_refuses_newer_schema(void)
{
    const char *dir = tly_test_dir();
    char *path = path_in(dir, "newer.db"), err[256] = "";
    tly_store *store = NULL;

    CHECK(raw_exec(path, "PRAGMA user_version = 999") == 0);
    CHECK(tly_store_open(path, NULL, &store, err, sizeof(err)) < 0);
    CHECK(store == NULL);
    CHECK_MSG(strstr(err, "newer") && strstr(err, "999"), "%s", err);
    /* and it did not touch the file */
    CHECK_INT(tly_test_scalar(path, NULL, "PRAGMA user_version"), 999);
end:
    tly_store_close(store);
}

static void test_refuses_non_database(void)
{
    const char *dir = tly_test_dir();
    char *path = path_in(dir, "junk.db"), err[256] = "";
    tly_store *store = NULL;
    FILE *f = fopen(path, "wb");

    CHECK(f != NULL);
    for (int i = 0; i < 200; i++)
        fputs("this is not a database file. ", f);
    fclose(f);
    CHECK(tly_store_open(path, NULL, &store, err, sizeof(err)) < 0);
    CHECK_MSG(strstr(err, "not a database") != NULL, "%s", err);
end:
    tly_store_close(store);
}

static void test_migrates_older_schema(void)
{
    const char *dir = tly_test_dir();
    char *path = path_in(dir, "old.db"), err[256];
    tly_store_options opts;
    tly_store *store = NULL;
    int64_t value = 0;

    /* A database left at version 1 (only the core tables) with data in it. */
    tly_store_options_init(&opts);
    opts.migrate_to = 1;
    CHECK_MSG(tly_store_open(path, &opts, &store, err, sizeof(err)) == 0, "%s", err);
    CHECK_INT(tly_store_schema_version(store), 1);
    CHECK(tly_store_exec(store, "SELECT 1 FROM order_window_state", err, sizeof(err)) < 0);
    CHECK(tly_store_meta_set_int(store, "kept.across.migration", 42) == 0);
    tly_store_close(store);
    store = NULL;

    CHECK_MSG(tly_store_open(path, NULL, &store, err, sizeof(err)) == 0, "%s", err);
    CHECK_INT(tly_store_schema_version(store), tly_store_latest_schema_version());
    CHECK(tly_store_exec(store,
                         "SELECT 1 FROM order_window_state; SELECT 1 FROM vehicle_sensor_state",
                         err, sizeof(err)) == 0);
    CHECK_INT(tly_store_meta_get_int(store, "kept.across.migration", &value), 1);
    CHECK_INT(value, 42);
end:
    tly_store_close(store);
}

/* 009 rebuilds order_window_state window first: rows, their changelog
 * triggers, the partition index and the view survive it. */
static void test_migrates_order_windows(void)
{
    const char *dir = tly_test_dir();
    char *path = path_in(dir, "windows.db"), err[256];
    tly_store_options opts;
    tly_store *store = NULL;
    sqlite3 *db;

    tly_store_options_init(&opts);
    opts.migrate_to = 8;
    CHECK_MSG(tly_store_open(path, &opts, &store, err, sizeof(err)) == 0, "%s", err);
    CHECK_MSG(tly_store_exec(store,
                             "INSERT INTO order_window_state VALUES "
                             "('s2', 'p1', 60000, 1250000, 1, 1, 2), "
                             "('s1', 'p9', 120000, 2500000, 2, 3, 1)",
                             err, sizeof(err)) == 0,
              "%s", err);
    tly_store_close(store);
    store = NULL;

    CHECK_MSG(tly_store_open(path, NULL, &store, err, sizeof(err)) == 0, "%s", err);
    db = tly_store_db(store);
    CHECK_INT(tly_store_schema_version(store), tly_store_latest_schema_version());
    CHECK_INT(tly_test_query_int(db, "SELECT count(*) FROM changelog"), 2);
    CHECK_STR(tly_test_query_text(db, "SELECT group_concat(store_id || '/' || sum || '/' || count "
                                      "|| '/' || window_start, ' ') FROM order_windows"),
              "s2/1.25/1/60000 s1/2.50/2/120000");
    CHECK_INT(tly_test_query_int(db, "SELECT sum(part) FROM order_window_state"), 3);
    CHECK_INT(tly_test_query_int(db, "SELECT count(*) FROM pragma_index_list('order_window_state') "
                                     "WHERE name = 'order_window_state_by_part'"),
              1);
    /* the triggers: an update appends its changelog row, a moved row is counted */
    CHECK_MSG(tly_store_exec(store,
                             "UPDATE order_window_state SET count = 5, key_seq = 4, part = 0 "
                             "WHERE store_id = 's1'",
                             err, sizeof(err)) == 0,
              "%s", err);
    CHECK_STR(tly_test_query_text(db, "SELECT key || ' ' || key_seq || ' ' || delta FROM changelog "
                                      "ORDER BY seq DESC LIMIT 1"),
              "s1#p9#120000 4 {\"sum_micros\":0,\"count\":3}");
    CHECK_INT(tly_test_query_int(db, "SELECT value FROM meta WHERE key = 'state.rows_moved'"), 1);
end:
    tly_store_close(store);
}

static long long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long long)st.st_size : -1;
}

/* background_checkpoint: the commits only wake the thread, which copies the
 * WAL into the database file; the file grows without a checkpoint by the
 * writer (its automatic one is off) and without the store being closed. */
static void test_background_checkpoint(void)
{
    const char *dir = tly_test_dir();
    char *path = path_in(dir, "ckpt.db"), err[256];
    tly_store_options opts;
    tly_store *store = NULL;
    long long before;
    int waited_ms = 0;

    tly_store_options_init(&opts);
    opts.background_checkpoint = 1;
    opts.wal_autocheckpoint = 8;
    CHECK_MSG(tly_store_open(path, &opts, &store, err, sizeof(err)) == 0, "%s", err);
    CHECK_MSG(tly_store_exec(store, "PRAGMA wal_checkpoint(TRUNCATE)", err, sizeof(err)) == 0, "%s",
              err);
    before = file_size(path);
    for (int i = 0; i < 20; i++) {
        char sql[160];
        snprintf(sql, sizeof(sql),
                 "WITH RECURSIVE n(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM n WHERE v < 100) "
                 "INSERT INTO meta (key, value) SELECT 'filler.%d.' || v, zeroblob(1000) FROM n",
                 i);
        CHECK_MSG(tly_store_exec(store, sql, err, sizeof(err)) == 0, "%s", err);
    }
    while (file_size(path) <= before && waited_ms < 10000) {
        usleep(10000);
        waited_ms += 10;
    }
    CHECK_MSG(file_size(path) > before, "the database file stayed at %lld bytes", before);
    CHECK_INT(tly_test_query_int(tly_store_db(store),
                                 "SELECT count(*) FROM meta WHERE key LIKE 'filler.%'"),
              2000);
end:
    tly_store_close(store);
}

static void test_meta(void)
{
    const char *dir = tly_test_dir();
    char *path = path_in(dir, "meta.db"), err[256], text[64];
    tly_store *store = NULL;
    int64_t value = -1;

    CHECK_MSG(tly_store_open(path, NULL, &store, err, sizeof(err)) == 0, "%s", err);
    CHECK_INT(tly_store_meta_get_int(store, "absent", &value), 0);
    CHECK(tly_store_meta_set_int(store, "n", 5) == 0);
    CHECK(tly_store_meta_add_int(store, "n", 7) == 0);
    CHECK(tly_store_meta_add_int(store, "fresh", 3) == 0);
    CHECK_INT(tly_store_meta_get_int(store, "n", &value), 1);
    CHECK_INT(value, 12);
    CHECK_INT(tly_store_meta_get_int(store, "fresh", &value), 1);
    CHECK_INT(value, 3);
    CHECK(tly_store_meta_set_text(store, "name", "vehicle-7") == 0);
    CHECK_INT(tly_store_meta_get_text(store, "name", text, sizeof(text)), 1);
    CHECK_STR(text, "vehicle-7");
    /* A rolled-back write is not visible. */
    CHECK(tly_store_begin(store, err, sizeof(err)) == 0);
    CHECK(tly_store_meta_set_int(store, "n", 1000) == 0);
    tly_store_rollback(store);
    CHECK_INT(tly_store_meta_get_int(store, "n", &value), 1);
    CHECK_INT(value, 12);
end:
    tly_store_close(store);
}

static int64_t raw_int(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    int64_t v = -1;
    if (sqlite3_open(path, &db) == SQLITE_OK)
        v = tly_store_query_int(db, sql, -1);
    sqlite3_close(db);
    return v;
}

#define INDEX_EXISTS(name)                                                                         \
    "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = '" name "'"

/* A rebuild leaves out the non-unique indexes of empty tables only, and they
 * come back - with tly_store_restore_indexes, or at the next open when the
 * rebuild stopped before (a kill: the store is closed without restoring). */
static void test_deferred_indexes(void)
{
    const char *dir = tly_test_dir();
    char *path = path_in(dir, "defer.db"), err[256];
    tly_store *store = NULL;

    CHECK_MSG(tly_store_open(path, NULL, &store, err, sizeof(err)) == 0, "%s", err);
    CHECK(tly_store_exec(store,
                         "CREATE TABLE full_t (k TEXT PRIMARY KEY, v INTEGER);"
                         "CREATE INDEX full_t_by_v ON full_t (v);"
                         "INSERT INTO full_t VALUES ('a', 1);"
                         "CREATE TABLE empty_t (k TEXT PRIMARY KEY, v INTEGER, w INTEGER);"
                         "CREATE INDEX empty_t_by_v ON empty_t (v);"
                         "CREATE UNIQUE INDEX empty_t_by_w ON empty_t (w);",
                         err, sizeof(err)) == 0);
    /* empty_t_by_v and the 4 of the built-in state tables */
    CHECK_INT(tly_store_defer_indexes(store, err, sizeof(err)), 5);
    tly_store_close(store);
    store = NULL;
    CHECK_INT(raw_int(path, INDEX_EXISTS("empty_t_by_v")), 0);
    CHECK_INT(raw_int(path, INDEX_EXISTS("order_window_state_by_part")), 0);
    CHECK_INT(raw_int(path, INDEX_EXISTS("empty_t_by_w")), 1);
    CHECK_INT(raw_int(path, INDEX_EXISTS("full_t_by_v")), 1);
    CHECK_INT(raw_int(path, "SELECT count(*) FROM meta WHERE key GLOB 'replay.deferred_index.*'"),
              5);
    /* the next open builds them */
    CHECK_MSG(tly_store_open(path, NULL, &store, err, sizeof(err)) == 0, "%s", err);
    CHECK_INT(tly_store_query_int(tly_store_db(store), INDEX_EXISTS("empty_t_by_v"), -1), 1);
    CHECK_INT(
        tly_store_query_int(tly_store_db(store), INDEX_EXISTS("order_window_state_by_part"), -1),
        1);
    CHECK_INT(tly_store_query_int(tly_store_db(store),
                                  "SELECT count(*) FROM meta WHERE key GLOB 'replay.*'", -1),
              0);
    /* and an explicit restore does the same */
    CHECK_INT(tly_store_defer_indexes(store, err, sizeof(err)), 5);
    CHECK_INT(tly_store_query_int(tly_store_db(store), INDEX_EXISTS("empty_t_by_v"), -1), 0);
    CHECK_MSG(tly_store_restore_indexes(store, err, sizeof(err)) == 0, "%s", err);
    CHECK_INT(tly_store_query_int(tly_store_db(store), INDEX_EXISTS("empty_t_by_v"), -1), 1);
    CHECK_INT(tly_store_query_int(tly_store_db(store),
                                  "SELECT count(*) FROM meta WHERE key GLOB 'replay.*'", -1),
              0);
    CHECK_MSG(tly_store_restore_indexes(store, err, sizeof(err)) == 0, "%s", err);
end:
    tly_store_close(store);
}

static const tly_testcase cases[] = {{"open_creates_wal_database", test_open_creates_wal_database},
                                     {"synchronous_option", test_synchronous_option},
                                     {"refuses_newer_schema", test_refuses_newer_schema},
                                     {"refuses_non_database", test_refuses_non_database},
                                     {"migrates_older_schema", test_migrates_older_schema},
                                     {"migrates_order_windows", test_migrates_order_windows},
                                     {"background_checkpoint", test_background_checkpoint},
                                     {"meta", test_meta},
                                     {"deferred_indexes", test_deferred_indexes},
                                     {NULL, NULL}};

int main(int argc, char **argv)
{
    return tly_test_main(argc, argv, cases);
}
